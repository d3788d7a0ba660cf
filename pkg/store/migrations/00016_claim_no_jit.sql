-- +goose Up
-- No JIT compilation for the fast claim's candidate scan either (migration 15 turned it off
-- for the limited one). Its plan is an index walk that stops after p_limit rows, but the
-- claim runs on the store's hot pool, whose connections set plan_cache_mode =
-- force_generic_plan, and the function's query inherits that: its generic plan prices
-- LIMIT p_limit as a tenth of the queue, with the GPU-memory subplan for every row, which
-- is above jit_above_cost (100,000) from ~120,000 queued runs and above the inlining and
-- optimization thresholds (500,000) further on. BenchmarkClaimLatency/queued=1M: 185 ms per
-- claim, 0.41 ms without JIT. In a burn-down of 150,000 runs the claims compiled it until
-- the queue's estimate fell below the threshold (pg_stat_statements, track = all: 30.5 s of
-- JIT over 4,495 claims; 2,700 runs/s instead of ~6,000–8,000).
ALTER FUNCTION agentserver_claim_candidates(text, integer, bigint) SET jit = off;

-- +goose Down
ALTER FUNCTION agentserver_claim_candidates(text, integer, bigint) RESET jit;
