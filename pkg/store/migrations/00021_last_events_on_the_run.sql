-- +goose Up
-- A run that FinishRuns ends through its one-statement path (a plain success of a run not
-- on a thread, nearly every run) keeps two of its last events on the run, like its QUEUED
-- (migration 11) and RUNNING (migration 12) events:
-- - its SUCCEEDED event: runs.end_seq holds its place in the log (a value of run_events'
--   own sequence, taken by the finishing statement after the seqs of the events the
--   result carries), runs.end_time its time; its data is always {"state": "SUCCEEDED"};
-- - the step_started event of its step when that is the only event the result carries
--   ({"step": name}, as the worker sends it with the result of a short step): runs.step_seq
--   (taken before end_seq), runs.started_step the step's name, runs.end_time its time.
-- A SUCCEEDED run never changes again, so nothing ever has to move them; ListRunEvents
-- merges them in. Two rows and two index entries fewer per run. Runs ended otherwise, and
-- before this migration, have the rows (the columns NULL).
ALTER TABLE runs ADD COLUMN end_seq bigint, ADD COLUMN step_seq bigint, ADD COLUMN started_step text;
ALTER TABLE runs ALTER COLUMN end_seq SET STATISTICS 0, ALTER COLUMN step_seq SET STATISTICS 0,
    ALTER COLUMN started_step SET STATISTICS 0;

-- +goose Down
INSERT INTO run_events (run_id, tenant_id, seq, type, data, create_time)
OVERRIDING SYSTEM VALUE
SELECT id, tenant_id, step_seq, 'step_started', jsonb_build_object('step', started_step), end_time
FROM runs WHERE step_seq IS NOT NULL
UNION ALL
SELECT id, tenant_id, end_seq, 'state', '{"state": "SUCCEEDED"}', end_time
FROM runs WHERE end_seq IS NOT NULL;
ALTER TABLE runs DROP COLUMN end_seq, DROP COLUMN step_seq, DROP COLUMN started_step;
