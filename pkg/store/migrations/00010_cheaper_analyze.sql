-- +goose Up
-- Autovacuum's ANALYZE of runs and run_events was 6 % of PostgreSQL's CPU under sustained
-- load (perf of benchall's sustained workload, most of it sorting the sampled payloads).
-- Statistics serve the planner, and no statement filters, joins or sorts on a run's or an
-- event's payload: those columns get none. runs was analyzed after 2 % of it changed so
-- that the claim's joins kept fresh estimates; claims now probe by key with plans that do
-- not depend on them (migrations 7 to 9, the scheduler's generic plans), so PostgreSQL's
-- default of 10 % serves. run_events is only ever read by its primary key.
ALTER TABLE runs
    ALTER COLUMN input SET STATISTICS 0,
    ALTER COLUMN output SET STATISTICS 0,
    ALTER COLUMN error SET STATISTICS 0,
    ALTER COLUMN checkpoint SET STATISTICS 0,
    ALTER COLUMN next_step SET STATISTICS 0,
    ALTER COLUMN resume SET STATISTICS 0,
    ALTER COLUMN prompt SET STATISTICS 0;
ALTER TABLE runs RESET (autovacuum_analyze_scale_factor);
ALTER TABLE run_events ALTER COLUMN data SET STATISTICS 0;
ALTER TABLE run_events SET (autovacuum_analyze_scale_factor = 0.5);

-- +goose Down
ALTER TABLE runs
    ALTER COLUMN input SET STATISTICS -1,
    ALTER COLUMN output SET STATISTICS -1,
    ALTER COLUMN error SET STATISTICS -1,
    ALTER COLUMN checkpoint SET STATISTICS -1,
    ALTER COLUMN next_step SET STATISTICS -1,
    ALTER COLUMN resume SET STATISTICS -1,
    ALTER COLUMN prompt SET STATISTICS -1;
ALTER TABLE runs SET (autovacuum_analyze_scale_factor = 0.02);
ALTER TABLE run_events ALTER COLUMN data SET STATISTICS -1;
ALTER TABLE run_events RESET (autovacuum_analyze_scale_factor);
