-- +goose Up
-- Vacuum must not truncate the queue tables. Every run passes through run_queue and
-- run_leases, so their last pages empty and fill again all the time; truncating them needs
-- an ACCESS EXCLUSIVE lock, which VACUUM tries to take again every 50 ms while claims and
-- completions hold theirs, and which stops every claim and completion while it holds it.
-- Under load the scheduler's queue vacuum (store.VacuumQueue) took 85–128 ms of wall time
-- that way, against 4–20 ms without truncation (benchall --statements), and the pages it
-- gave back were extended again at once. The setting covers autovacuum as well.
ALTER TABLE run_queue SET (vacuum_truncate = false);
ALTER TABLE run_leases SET (vacuum_truncate = false);

-- +goose Down
ALTER TABLE run_queue RESET (vacuum_truncate);
ALTER TABLE run_leases RESET (vacuum_truncate);
