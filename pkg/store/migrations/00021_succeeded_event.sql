-- +goose Up
-- The SUCCEEDED event of a run that FinishRuns ends through its one-statement path (a plain
-- success of a run not on a thread, nearly every run) is kept on the run, like its QUEUED
-- (migration 11) and RUNNING (migration 12) events: runs.end_seq holds its place in the log
-- (a value of run_events' own sequence, taken by the finishing statement after the seqs of
-- the events the result carries), runs.end_time its time, and its data is always
-- {"state": "SUCCEEDED"}. A SUCCEEDED run never changes again, so nothing ever has to move
-- it; ListRunEvents merges it in. One row and one index entry fewer per run. Runs ended
-- otherwise, and before this migration, have the row (end_seq NULL).
ALTER TABLE runs ADD COLUMN end_seq bigint;
ALTER TABLE runs ALTER COLUMN end_seq SET STATISTICS 0;

-- +goose Down
INSERT INTO run_events (run_id, tenant_id, seq, type, data, create_time)
OVERRIDING SYSTEM VALUE
SELECT id, tenant_id, end_seq, 'state', '{"state": "SUCCEEDED"}', end_time
FROM runs WHERE end_seq IS NOT NULL;
ALTER TABLE runs DROP COLUMN end_seq;
