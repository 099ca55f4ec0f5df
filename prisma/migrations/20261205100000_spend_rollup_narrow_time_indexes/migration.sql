-- Reports read the narrow rollups by organization and time range, as they read the wide ones
-- (20261204090000_spend_rollup_time_indexes): a 30-day chart by key otherwise scans every day the
-- rollup by key holds (a sequential scan of 90 days in bench/series.ts) rather than the 30 in range.
CREATE INDEX "SpendRollupDailyByKey_organizationId_day_idx" ON "SpendRollupDailyByKey" ("organizationId", "day");
CREATE INDEX "SpendRollupHourlyByModel_organizationId_hour_idx" ON "SpendRollupHourlyByModel" ("organizationId", "hour");
