-- A channel is priced only by snapshots of its current bucket (issue 14, point 6). Every snapshot
-- already records its bucket and currency (NOT NULL since the init migration, written by setPrice
-- from the channel's settlement at that time), so there is nothing to backfill; the lookup now
-- filters on the bucket, which this index serves.
CREATE INDEX "PriceSnapshot_channelId_bucket_validFrom_idx" ON "PriceSnapshot"("channelId", "bucket", "validFrom");
