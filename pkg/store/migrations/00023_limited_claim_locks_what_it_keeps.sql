-- +goose Up
-- The limited claim's candidate scan (migration 15) locked rows it did not return. It
-- locked up to p_limit rows of assistants without a limit (free, FOR UPDATE SKIP LOCKED)
-- and each limited assistant's allowance (capped), then kept p_limit of the two merged:
-- the rows the merge cut stayed locked until the claim committed, and claims made
-- meanwhile by other schedulers skipped them, leaving them for a later claim
-- (TestConcurrencyLimitAcrossClaimers: 7 of 10 runs of a free assistant claimed by 6
-- concurrent claimers, ~1 time in 30).
--
-- Now the scan reads its candidates in claim order without locking, then, in the same
-- statement, locks those of them no other claim holds (SKIP LOCKED), all of which it
-- returns. Candidates another
-- claim holds are passed over: the next pass reads the candidates after the last one
-- read, for what is still wanted, until p_limit rows are locked or the queue has no more.
-- Concurrent claims thus do not collide on the head of the queue either: a claim that
-- finds it held walks on past it. Each limited assistant's allowance in a later pass is
-- what is left after the rows already locked of it; admit still trims to the exact
-- allowance under the load row's lock.
-- A candidate as the scan keeps it between its passes.
CREATE TYPE agentserver_claim_candidate AS (
    run_id uuid, tenant_id text, assistant_id text, limited boolean, priority integer, seq bigint);

-- +goose StatementBegin
CREATE OR REPLACE FUNCTION agentserver_claim_candidates_limited(p_slot_type text, p_limit integer, p_max_gpu_memory bigint)
RETURNS TABLE (run_id uuid, tenant_id text, assistant_id text, limited boolean) LANGUAGE plpgsql
ROWS 10
-- The settings of migration 15 (ordered index walks, no JIT, the generic plan always).
SET enable_sort = off SET enable_bitmapscan = off SET enable_seqscan = off SET jit = off
SET plan_cache_mode = force_generic_plan
AS $$
DECLARE
    kept agentserver_claim_candidate[] := '{}'; -- the rows locked so far, in claim order
    locked agentserver_claim_candidate[];       -- those of one pass
    read integer;                               -- the number of candidates a pass read
    wanted integer;
    -- A later pass reads the candidates after this one in claim order.
    after_priority integer;
    after_seq bigint;
BEGIN
    LOOP
        wanted := p_limit - cardinality(kept);
        WITH RECURSIVE held(tenant_id, assistant_id) AS (
            (SELECT q.tenant_id, q.assistant_id FROM run_queue q WHERE q.limited
                ORDER BY q.tenant_id, q.assistant_id LIMIT 1)
            UNION ALL
            SELECT n.tenant_id, n.assistant_id FROM held h CROSS JOIN LATERAL (
                SELECT q.tenant_id, q.assistant_id FROM run_queue q
                WHERE q.limited AND (q.tenant_id, q.assistant_id) > (h.tenant_id, h.assistant_id)
                ORDER BY q.tenant_id, q.assistant_id LIMIT 1) n
        ), free AS (
            SELECT q.ctid, q.run_id, q.tenant_id, q.assistant_id, q.priority, q.seq,
                EXISTS (SELECT 1 FROM assistant_load l
                    WHERE l.tenant_id = q.tenant_id AND l.assistant_id = q.assistant_id) AS limited
            FROM run_queue q
            WHERE q.slot_type = p_slot_type AND NOT q.limited AND q.available_time <= now()
                AND q.priority <= coalesce(after_priority, 2147483647)
                AND (after_priority IS NULL OR q.priority < after_priority OR q.seq > after_seq)
                AND NOT coalesce((SELECT l.running >= l.concurrency_limit FROM assistant_load l
                    WHERE l.tenant_id = q.tenant_id AND l.assistant_id = q.assistant_id), false)
                AND (p_max_gpu_memory IS NULL
                    OR (SELECT r.gpu_memory_bytes FROM runs r WHERE r.id = q.run_id) <= p_max_gpu_memory)
            ORDER BY q.priority DESC, q.seq
            LIMIT wanted
        ), capped AS (
            SELECT x.* FROM held h
            LEFT JOIN assistant_load l ON l.tenant_id = h.tenant_id AND l.assistant_id = h.assistant_id
            CROSS JOIN LATERAL (
                SELECT q.ctid, q.run_id, q.tenant_id, q.assistant_id, q.priority, q.seq, l.tenant_id IS NOT NULL AS limited
                FROM run_queue q
                WHERE q.limited AND q.tenant_id = h.tenant_id AND q.assistant_id = h.assistant_id
                    AND q.slot_type = p_slot_type AND q.available_time <= now()
                    AND q.priority <= coalesce(after_priority, 2147483647)
                    AND (after_priority IS NULL OR q.priority < after_priority OR q.seq > after_seq)
                    AND (p_max_gpu_memory IS NULL
                        OR (SELECT r.gpu_memory_bytes FROM runs r WHERE r.id = q.run_id) <= p_max_gpu_memory)
                ORDER BY q.priority DESC, q.seq
                LIMIT CASE WHEN l.tenant_id IS NULL THEN wanted
                    ELSE least(greatest(l.concurrency_limit - l.running
                        - (SELECT count(*) FROM unnest(kept) g
                            WHERE g.tenant_id = h.tenant_id AND g.assistant_id = h.assistant_id), 0), wanted) END) x
        ), c AS (
            SELECT * FROM free UNION ALL SELECT * FROM capped
            ORDER BY priority DESC, seq
            LIMIT wanted
        ), k AS (
            -- By the rows' addresses (no index probe per row). A row updated since the
            -- snapshot (its mark changed) is skipped while that update is in progress and
            -- locked in its latest version once it committed: its mark then says whether
            -- its assistant has a limit now, and a newly marked one goes to admit.
            SELECT q.run_id, q.limited FROM run_queue q WHERE q.ctid = ANY(ARRAY(SELECT c.ctid FROM c))
            FOR UPDATE OF q SKIP LOCKED
        ), last AS (
            SELECT c.priority, c.seq FROM c ORDER BY c.priority, c.seq DESC LIMIT 1
        )
        SELECT coalesce(array_agg(ROW(c.run_id, c.tenant_id, c.assistant_id, c.limited OR k.limited, c.priority, c.seq)::agentserver_claim_candidate
                ORDER BY c.priority DESC, c.seq) FILTER (WHERE k.run_id IS NOT NULL), '{}'),
            count(*), (SELECT last.priority FROM last), (SELECT last.seq FROM last)
        INTO locked, read, after_priority, after_seq
        FROM c LEFT JOIN k ON k.run_id = c.run_id;
        kept := kept || locked;
        -- Done when enough are locked, or when this pass read all the queue had left.
        EXIT WHEN cardinality(kept) >= p_limit OR read < wanted;
    END LOOP;
    RETURN QUERY SELECT g.run_id, g.tenant_id, g.assistant_id, g.limited FROM unnest(kept) g;
END;
$$;
-- +goose StatementEnd

-- +goose Down
-- +goose StatementBegin
CREATE OR REPLACE FUNCTION agentserver_claim_candidates_limited(p_slot_type text, p_limit integer, p_max_gpu_memory bigint)
RETURNS TABLE (run_id uuid, tenant_id text, assistant_id text, limited boolean) LANGUAGE plpgsql
ROWS 10
SET enable_sort = off SET enable_bitmapscan = off SET enable_seqscan = off SET jit = off
SET plan_cache_mode = force_generic_plan
AS $$
BEGIN
    RETURN QUERY
    WITH RECURSIVE held(tenant_id, assistant_id) AS (
        (SELECT q.tenant_id, q.assistant_id FROM run_queue q WHERE q.limited
            ORDER BY q.tenant_id, q.assistant_id LIMIT 1)
        UNION ALL
        SELECT n.tenant_id, n.assistant_id FROM held h CROSS JOIN LATERAL (
            SELECT q.tenant_id, q.assistant_id FROM run_queue q
            WHERE q.limited AND (q.tenant_id, q.assistant_id) > (h.tenant_id, h.assistant_id)
            ORDER BY q.tenant_id, q.assistant_id LIMIT 1) n
    ), free AS (
        SELECT q.run_id, q.tenant_id, q.assistant_id, q.priority, q.seq,
            EXISTS (SELECT 1 FROM assistant_load l
                WHERE l.tenant_id = q.tenant_id AND l.assistant_id = q.assistant_id) AS limited
        FROM run_queue q
        WHERE q.slot_type = p_slot_type AND NOT q.limited AND q.available_time <= now()
            AND NOT coalesce((SELECT l.running >= l.concurrency_limit FROM assistant_load l
                WHERE l.tenant_id = q.tenant_id AND l.assistant_id = q.assistant_id), false)
            AND (p_max_gpu_memory IS NULL
                OR (SELECT r.gpu_memory_bytes FROM runs r WHERE r.id = q.run_id) <= p_max_gpu_memory)
        ORDER BY q.priority DESC, q.seq
        LIMIT p_limit
        FOR UPDATE OF q SKIP LOCKED
    ), capped AS (
        SELECT x.* FROM held h
        LEFT JOIN assistant_load l ON l.tenant_id = h.tenant_id AND l.assistant_id = h.assistant_id
        CROSS JOIN LATERAL (
            SELECT q.run_id, q.tenant_id, q.assistant_id, q.priority, q.seq, l.tenant_id IS NOT NULL AS limited
            FROM run_queue q
            WHERE q.limited AND q.tenant_id = h.tenant_id AND q.assistant_id = h.assistant_id
                AND q.slot_type = p_slot_type AND q.available_time <= now()
                AND (p_max_gpu_memory IS NULL
                    OR (SELECT r.gpu_memory_bytes FROM runs r WHERE r.id = q.run_id) <= p_max_gpu_memory)
            ORDER BY q.priority DESC, q.seq
            LIMIT CASE WHEN l.tenant_id IS NULL THEN p_limit
                ELSE least(greatest(l.concurrency_limit - l.running, 0), p_limit) END
            FOR UPDATE OF q SKIP LOCKED) x
    )
    SELECT c.run_id, c.tenant_id, c.assistant_id, c.limited
    FROM (SELECT * FROM free UNION ALL SELECT * FROM capped) c
    ORDER BY c.priority DESC, c.seq
    LIMIT p_limit;
END;
$$;
-- +goose StatementEnd
DROP TYPE agentserver_claim_candidate;
