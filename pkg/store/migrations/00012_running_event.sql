-- +goose Up
-- The RUNNING event of a run's current claim is kept on the run, like its QUEUED event
-- (migration 11): the claim takes its seq from run_events' sequence into
-- runs.running_seq and its data into runs.running_event; its time is runs.claim_time.
-- Unlike QUEUED it is replaced by the next claim of the run, so every statement that puts
-- a claimed run back in the queue (a released or retried result, an expired lease, a
-- resume) first writes it out as a row of run_events with its seq and time, and clears
-- it. ListRunEvents merges it in. One row and one index entry fewer per claim.
ALTER TABLE runs ADD COLUMN running_seq bigint, ADD COLUMN running_event jsonb;
ALTER TABLE runs ALTER COLUMN running_seq SET STATISTICS 0, ALTER COLUMN running_event SET STATISTICS 0;

-- +goose Down
INSERT INTO run_events (run_id, tenant_id, seq, type, data, create_time)
OVERRIDING SYSTEM VALUE
SELECT id, tenant_id, running_seq, 'state', running_event, claim_time
FROM runs WHERE running_seq IS NOT NULL;
ALTER TABLE runs DROP COLUMN running_seq, DROP COLUMN running_event;
