-- +goose Up
-- The SUCCEEDED event of a run ended by the one-statement finish of plain successes is
-- kept on the run, like its QUEUED and RUNNING events (migrations 11 and 12): the finish
-- takes its seq from run_events' sequence, after the seqs of the worker's events it
-- writes in the same statement, into runs.end_seq; its time is runs.end_time. A SUCCEEDED
-- run never changes again, so nothing ever has to write it out. ListRunEvents merges it
-- in. Runs that end any other way keep their terminal event as a row.
ALTER TABLE runs ADD COLUMN end_seq bigint;
ALTER TABLE runs ALTER COLUMN end_seq SET STATISTICS 0;

-- +goose Down
INSERT INTO run_events (run_id, tenant_id, seq, type, data, create_time)
OVERRIDING SYSTEM VALUE
SELECT id, tenant_id, end_seq, 'state', '{"state": "SUCCEEDED"}', end_time
FROM runs WHERE end_seq IS NOT NULL;
ALTER TABLE runs DROP COLUMN end_seq;
