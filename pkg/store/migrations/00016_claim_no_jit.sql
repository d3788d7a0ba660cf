-- +goose Up
-- No JIT compilation for the fast claim's candidate scan either (migration 15 turned it off
-- for the limited one). Its plan is an index walk that stops after p_limit rows, but a
-- generic plan prices LIMIT p_limit as a tenth of the queue, with the GPU-memory subplan
-- for every row: with ~150,000 queued runs that is above jit_above_cost (100,000). In a
-- burn-down of 150,000 runs about two claims in five took that plan and compiled it
-- (pg_stat_statements, track = all: 30.5 s of JIT over 4,495 claims, 6.3 ms per candidate
-- scan on average instead of ~0.15 ms; 2,700 runs/s instead of ~6,000–8,000).
ALTER FUNCTION agentserver_claim_candidates(text, integer, bigint) SET jit = off;

-- +goose Down
ALTER FUNCTION agentserver_claim_candidates(text, integer, bigint) RESET jit;
