-- +goose Up
-- run_queue churns (every run is inserted and deleted once): vacuum and analyze it after a
-- fixed number of changes rather than a fraction of its size, so dead entries never pile
-- up at the head of the claim index and the planner keeps current statistics.
ALTER TABLE run_queue SET (
    autovacuum_vacuum_scale_factor = 0, autovacuum_vacuum_threshold = 1000,
    autovacuum_analyze_scale_factor = 0, autovacuum_analyze_threshold = 1000,
    autovacuum_vacuum_cost_delay = 0);
ALTER TABLE runs SET (autovacuum_vacuum_scale_factor = 0.05, autovacuum_analyze_scale_factor = 0.02);

-- +goose Down
ALTER TABLE run_queue RESET (autovacuum_vacuum_scale_factor, autovacuum_vacuum_threshold,
    autovacuum_analyze_scale_factor, autovacuum_analyze_threshold, autovacuum_vacuum_cost_delay);
ALTER TABLE runs RESET (autovacuum_vacuum_scale_factor, autovacuum_analyze_scale_factor);
