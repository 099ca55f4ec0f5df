-- Reports read the rollups by organization and time range. The group-key unique index starts with
-- the same two columns but carries nine more, so the planner prices a range scan of it above a
-- sequential scan of the whole table: with 90 days of 200 keys x 3 models (1.2M hourly rows), a
-- 7-day report scanned all of them (~150 ms) instead of the 95,000 in range (~35 ms through this
-- index, bench/series.ts). The narrow indexes make the range scan the cheap plan, and its cost
-- stays that of the range as history grows.
CREATE INDEX "SpendRollupHourly_organizationId_hour_idx" ON "SpendRollupHourly" ("organizationId", "hour");
CREATE INDEX "SpendRollupDaily_organizationId_day_idx" ON "SpendRollupDaily" ("organizationId", "day");
