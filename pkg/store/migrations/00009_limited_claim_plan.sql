-- +goose Up
-- The candidate scan of claims made while some assistant has a concurrency limit, pinned
-- like agentserver_claim_candidates (migration 8): an ordered walk of run_queue_claim
-- that skips saturated assistants (one primary-key probe each) and stops after p_limit.
-- +goose StatementBegin
CREATE FUNCTION agentserver_claim_candidates_limited(p_slot_type text, p_limit integer, p_max_gpu_memory bigint)
RETURNS TABLE (run_id uuid, tenant_id text, assistant_id text, limited boolean) LANGUAGE plpgsql
ROWS 10
SET enable_sort = off SET enable_bitmapscan = off SET enable_seqscan = off
AS $$
BEGIN
    RETURN QUERY
    SELECT q.run_id, q.tenant_id, q.assistant_id,
        EXISTS (SELECT 1 FROM assistant_load l
            WHERE l.tenant_id = q.tenant_id AND l.assistant_id = q.assistant_id)
    FROM run_queue q
    WHERE q.slot_type = p_slot_type AND q.available_time <= now()
        AND NOT coalesce((SELECT l.running >= l.concurrency_limit FROM assistant_load l
            WHERE l.tenant_id = q.tenant_id AND l.assistant_id = q.assistant_id), false)
        AND (p_max_gpu_memory IS NULL
            OR (SELECT r.gpu_memory_bytes FROM runs r WHERE r.id = q.run_id) <= p_max_gpu_memory)
    ORDER BY q.priority DESC, q.seq
    LIMIT p_limit
    FOR UPDATE OF q SKIP LOCKED;
END;
$$;
-- +goose StatementEnd

-- +goose Down
DROP FUNCTION agentserver_claim_candidates_limited(text, integer, bigint);
