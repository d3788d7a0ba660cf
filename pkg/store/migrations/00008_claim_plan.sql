-- +goose Up
-- The claim's candidate scan, with its plan pinned: the ordered scan of run_queue_claim
-- that stops after p_limit rows. With statistics taken while the queue was small (a burst
-- arrives faster than autovacuum analyzes: up to a minute with default settings) the
-- planner chose to read every queued row and sort them, so each claim cost O(queue).
-- Sorting, bitmap and sequential scans are switched off for this query only (a function's
-- SET clause), leaving the index walk as the one plan.
-- +goose StatementBegin
CREATE FUNCTION agentserver_claim_candidates(p_slot_type text, p_limit integer, p_max_gpu_memory bigint)
RETURNS SETOF uuid LANGUAGE plpgsql
-- A small estimate, so the statement around it probes runs and run_queue by key rather
-- than hash-joining scans of them.
ROWS 10
SET enable_sort = off SET enable_bitmapscan = off SET enable_seqscan = off
AS $$
BEGIN
    RETURN QUERY
    SELECT q.run_id FROM run_queue q
    WHERE q.slot_type = p_slot_type AND q.available_time <= now()
        AND (p_max_gpu_memory IS NULL
            OR (SELECT r.gpu_memory_bytes FROM runs r WHERE r.id = q.run_id) <= p_max_gpu_memory)
    ORDER BY q.priority DESC, q.seq
    LIMIT p_limit
    FOR UPDATE OF q SKIP LOCKED;
END;
$$;
-- +goose StatementEnd

-- +goose Down
DROP FUNCTION agentserver_claim_candidates(text, integer, bigint);
