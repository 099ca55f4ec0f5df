-- The path of every request (issue 17, point 5): each Receipt and FailedRequest lists its upstream
-- attempts, in order, in a JSONB column of its own row ("attemptPath"; no row per attempt): an array
-- of {"channelId", "role" (PRIMARY | BACKUP), "status" (the upstream's HTTP status, null when no
-- response came), "cause" (ours: ANSWERED, CONNECT_ERROR, TIMEOUT, UPSTREAM_5XX, ...; never the
-- upstream's text), "latencyMs"}. Which attempt was charged is not stored: a request is charged once,
-- for its last attempt (src/requests/attempts.ts). Rows written before this migration get the
-- default, an empty path (adding a column with a constant default rewrites no row).
-- Bounded: a request makes at most 1 + retry ceiling (at most 10) attempts; the CHECK allows 16
-- (NOT VALID: the existing rows, all '[]', are not scanned).
--
-- tg_record_batch (prisma/functions.sql) is redefined (signature unchanged) from its latest definition
-- (20261202100000_token_classes), changed only in its two inserts: each also writes "attemptPath"
-- from the batch's JSON ('[]' when a row has none).

ALTER TABLE "Receipt" ADD COLUMN "attemptPath" JSONB NOT NULL DEFAULT '[]';
ALTER TABLE "FailedRequest" ADD COLUMN "attemptPath" JSONB NOT NULL DEFAULT '[]';
ALTER TABLE "Receipt" ADD CONSTRAINT "Receipt_attemptPath_bounded"
  CHECK (CASE WHEN jsonb_typeof("attemptPath") = 'array' THEN jsonb_array_length("attemptPath") <= 16 ELSE false END) NOT VALID;
ALTER TABLE "FailedRequest" ADD CONSTRAINT "FailedRequest_attemptPath_bounded"
  CHECK (CASE WHEN jsonb_typeof("attemptPath") = 'array' THEN jsonb_array_length("attemptPath") <= 16 ELSE false END) NOT VALID;

-- tg_record_batch: its current definition is in prisma/functions.sql (applied after the migrations).
