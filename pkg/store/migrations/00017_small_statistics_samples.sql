-- +goose Up
-- Statistics of runs and run_events from a sample of 3,000 rows (target 10) instead of
-- 30,000 (the default target, 100). Migration 10 dropped the payload columns; the rest
-- still made every ANALYZE sample 30,000 rows: 276 ms for runs and 123 ms for run_events
-- at 254,000 runs (after a burn-down of 250,000), and autovacuum analyzes runs about every
-- 25,000 changes (two updates and an insert per run), every few seconds under load. In a
-- burn-down of 250,000 (perf -a, 8 s) autovacuum's ANALYZE was 10.9 % of PostgreSQL's CPU.
-- With target 10: 31 ms and 22 ms. The statistics serve equality filters on few-valued
-- columns (tenant, assistant, state) and the planner's choice between the primary key and
-- the list indexes, which ten most-common values and ten histogram buckets still give;
-- the hot statements' plans do not depend on them (migrations 7 to 9, the generic plans).
-- Columns added later must say their target too (TestStatisticsSamplesStaySmall).
ALTER TABLE runs
    ALTER COLUMN id SET STATISTICS 10,
    ALTER COLUMN tenant_id SET STATISTICS 10,
    ALTER COLUMN assistant_id SET STATISTICS 10,
    ALTER COLUMN assistant_version SET STATISTICS 10,
    ALTER COLUMN thread_id SET STATISTICS 10,
    ALTER COLUMN seq SET STATISTICS 10,
    ALTER COLUMN state SET STATISTICS 10,
    ALTER COLUMN priority SET STATISTICS 10,
    ALTER COLUMN slot_type SET STATISTICS 10,
    ALTER COLUMN attempt SET STATISTICS 10,
    ALTER COLUMN max_attempts SET STATISTICS 10,
    ALTER COLUMN timeout_ms SET STATISTICS 10,
    ALTER COLUMN epoch SET STATISTICS 10,
    ALTER COLUMN worker_id SET STATISTICS 10,
    ALTER COLUMN claim_time SET STATISTICS 10,
    ALTER COLUMN cancel_requested SET STATISTICS 10,
    ALTER COLUMN request_id SET STATISTICS 10,
    ALTER COLUMN create_time SET STATISTICS 10,
    ALTER COLUMN start_time SET STATISTICS 10,
    ALTER COLUMN end_time SET STATISTICS 10,
    ALTER COLUMN next_attempt_time SET STATISTICS 10,
    ALTER COLUMN gpu_memory_bytes SET STATISTICS 10,
    ALTER COLUMN limited SET STATISTICS 10;
ALTER TABLE run_events
    ALTER COLUMN run_id SET STATISTICS 10,
    ALTER COLUMN seq SET STATISTICS 10,
    ALTER COLUMN tenant_id SET STATISTICS 10,
    ALTER COLUMN type SET STATISTICS 10,
    ALTER COLUMN create_time SET STATISTICS 10;

-- +goose Down
ALTER TABLE runs
    ALTER COLUMN id SET STATISTICS -1,
    ALTER COLUMN tenant_id SET STATISTICS -1,
    ALTER COLUMN assistant_id SET STATISTICS -1,
    ALTER COLUMN assistant_version SET STATISTICS -1,
    ALTER COLUMN thread_id SET STATISTICS -1,
    ALTER COLUMN seq SET STATISTICS -1,
    ALTER COLUMN state SET STATISTICS -1,
    ALTER COLUMN priority SET STATISTICS -1,
    ALTER COLUMN slot_type SET STATISTICS -1,
    ALTER COLUMN attempt SET STATISTICS -1,
    ALTER COLUMN max_attempts SET STATISTICS -1,
    ALTER COLUMN timeout_ms SET STATISTICS -1,
    ALTER COLUMN epoch SET STATISTICS -1,
    ALTER COLUMN worker_id SET STATISTICS -1,
    ALTER COLUMN claim_time SET STATISTICS -1,
    ALTER COLUMN cancel_requested SET STATISTICS -1,
    ALTER COLUMN request_id SET STATISTICS -1,
    ALTER COLUMN create_time SET STATISTICS -1,
    ALTER COLUMN start_time SET STATISTICS -1,
    ALTER COLUMN end_time SET STATISTICS -1,
    ALTER COLUMN next_attempt_time SET STATISTICS -1,
    ALTER COLUMN gpu_memory_bytes SET STATISTICS -1,
    ALTER COLUMN limited SET STATISTICS -1;
ALTER TABLE run_events
    ALTER COLUMN run_id SET STATISTICS -1,
    ALTER COLUMN seq SET STATISTICS -1,
    ALTER COLUMN tenant_id SET STATISTICS -1,
    ALTER COLUMN type SET STATISTICS -1,
    ALTER COLUMN create_time SET STATISTICS -1;
