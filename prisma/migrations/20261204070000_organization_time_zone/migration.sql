-- The organization's time zone (issue 18, point 4): day and month windows of caps, spend today,
-- alerts, export days and series follow it. A change runs the old zone's current window on to the
-- new zone's next boundary (src/accounting/windows.ts), so the zone it came from is kept until then.
ALTER TABLE "Organization" ADD COLUMN "timeZone" TEXT NOT NULL DEFAULT 'UTC';
ALTER TABLE "Organization" ADD COLUMN "previousTimeZone" TEXT;
ALTER TABLE "Organization" ADD COLUMN "timeZoneChangedAt" TIMESTAMP(3);
