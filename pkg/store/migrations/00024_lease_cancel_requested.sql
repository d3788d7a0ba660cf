-- +goose Up
-- The cancel requests of running runs are kept on their leases too, under a partial
-- index, so that the schedulers' look for them (every second, and every 50 ms while a
-- scheduler claims back to back) reads the requests only. It joined every lease to its
-- run to test runs.cancel_requested: a cost that grew with the runs in flight (~1 ms with
-- 500 running, ~4 % of PostgreSQL's time under the sustained benchmark) and was planned
-- again at every call. A request is only ever made of a RUNNING run, whose lease row
-- exists (CancelRun sets both in one transaction, the run's row locked), and a run with a
-- request never runs again: it ends when its worker reports or its lease is recovered.
ALTER TABLE run_leases ADD COLUMN cancel_requested boolean NOT NULL DEFAULT false;
UPDATE run_leases l SET cancel_requested = true
FROM runs r WHERE r.id = l.run_id AND r.cancel_requested;
CREATE INDEX run_leases_cancel_requested ON run_leases (worker_id) WHERE cancel_requested;

-- +goose Down
DROP INDEX run_leases_cancel_requested;
ALTER TABLE run_leases DROP COLUMN cancel_requested;
