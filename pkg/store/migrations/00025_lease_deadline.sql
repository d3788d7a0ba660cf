-- +goose Up
-- Each lease carries its run's execution deadline (claim time + timeout), written by the
-- claim, so that recovery finds the runs due (lease expired or past their deadline) by
-- reading run_leases alone and reads runs only for those. It joined every lease to its
-- run to compute the deadline: with 10,000 runs in flight ~10 ms per look, which every
-- scheduler makes every second.
ALTER TABLE run_leases ADD COLUMN deadline_time timestamptz NOT NULL DEFAULT 'infinity';
UPDATE run_leases l SET deadline_time = r.claim_time + r.timeout_ms * interval '1 millisecond'
FROM runs r WHERE r.id = l.run_id AND r.claim_time IS NOT NULL;
ALTER TABLE run_leases ALTER COLUMN deadline_time DROP DEFAULT;

-- +goose Down
ALTER TABLE run_leases DROP COLUMN deadline_time;
