-- +goose Up
-- A run's first event, {"state": "QUEUED"} at its creation, is kept on the run itself
-- rather than as a row of run_events: runs.queued_seq holds its place in the log (a value
-- of run_events' own sequence, taken by the statement that creates the run, before any
-- other event of that run can exist), runs.create_time its time. It never changes, so
-- nothing ever has to move it; ListRunEvents merges it in. One row and one index entry
-- fewer per run. Runs created before this migration keep their row (queued_seq NULL).
ALTER TABLE runs ADD COLUMN queued_seq bigint;
ALTER TABLE runs ALTER COLUMN queued_seq SET STATISTICS 0;

-- +goose Down
INSERT INTO run_events (run_id, tenant_id, seq, type, data, create_time)
OVERRIDING SYSTEM VALUE
SELECT id, tenant_id, queued_seq, 'state', '{"state": "QUEUED"}', create_time
FROM runs WHERE queued_seq IS NOT NULL;
ALTER TABLE runs DROP COLUMN queued_seq;
