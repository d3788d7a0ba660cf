-- +goose Up
-- The queue rows of assistants with a concurrency limit leave the claim index. Claims made
-- while some assistant has a limit walked run_queue_claim in order and skipped the rows of
-- saturated assistants one by one (migration 9), so a backlog held back by a limit made
-- every claim of its slot type read all of it: 17 ms per claim behind 10,000 held runs,
-- 188 ms behind 100,000 (BenchmarkClaimLatencyBehindLimit).
--
-- run_queue.limited marks the rows of assistants that had an assistant_load row when the
-- row was queued, and changes when an assistant's limit is added or lifted
-- (store.UpdateAssistant). run_queue_claim indexes only the others; run_queue_limited
-- indexes the limited rows by assistant, so that a claim takes from each assistant at most
-- what its limit still allows (nothing, without reading its rows, from a saturated one).
-- The mark is a hint for the plan, never for correctness: a row queued while a limit was
-- being added or lifted can carry the old mark, and the claims handle both cases (below).
ALTER TABLE run_queue ADD COLUMN limited boolean NOT NULL DEFAULT false;
UPDATE run_queue q SET limited = true
WHERE EXISTS (SELECT 1 FROM assistant_load l WHERE l.tenant_id = q.tenant_id AND l.assistant_id = q.assistant_id);
DROP INDEX run_queue_claim;
CREATE INDEX run_queue_claim ON run_queue (slot_type, priority DESC, seq) WHERE NOT limited;
CREATE INDEX run_queue_limited ON run_queue (tenant_id, assistant_id, slot_type, priority DESC, seq) WHERE limited;

-- The fast path's candidates (no assistant has a limit and no row is marked limited: the
-- claim checks both) are the unmarked rows, in the partial index's order.
-- +goose StatementBegin
CREATE OR REPLACE FUNCTION agentserver_claim_candidates(p_slot_type text, p_limit integer, p_max_gpu_memory bigint)
RETURNS SETOF uuid LANGUAGE plpgsql
ROWS 10
SET enable_sort = off SET enable_bitmapscan = off SET enable_seqscan = off
AS $$
BEGIN
    RETURN QUERY
    SELECT q.run_id FROM run_queue q
    WHERE q.slot_type = p_slot_type AND NOT q.limited AND q.available_time <= now()
        AND (p_max_gpu_memory IS NULL
            OR (SELECT r.gpu_memory_bytes FROM runs r WHERE r.id = q.run_id) <= p_max_gpu_memory)
    ORDER BY q.priority DESC, q.seq
    LIMIT p_limit
    FOR UPDATE OF q SKIP LOCKED;
END;
$$;
-- +goose StatementEnd

-- The candidates of a claim while limits exist, in claim order, at most p_limit, locked:
-- - unmarked rows, from run_queue_claim as before; a row of a limited assistant among them
--   (queued as its limit was being added) is skipped while the assistant is saturated and
--   reported limited, so that admit checks it;
-- - for every assistant with marked rows (found by a loose scan of run_queue_limited: one
--   probe per assistant), as many of its rows as its limit still allows, none read when it
--   is saturated; an assistant without a load row any more (its limit lifted as the row
--   was queued) gives up to p_limit, reported not limited.
-- The allowance is read from this statement's snapshot; admit then locks the load rows
-- and trims to the exact allowance.
-- +goose StatementBegin
CREATE OR REPLACE FUNCTION agentserver_claim_candidates_limited(p_slot_type text, p_limit integer, p_max_gpu_memory bigint)
RETURNS TABLE (run_id uuid, tenant_id text, assistant_id text, limited boolean) LANGUAGE plpgsql
ROWS 10
-- Sorting is off as in migration 9: the walks are ordered index scans; the one sort left is
-- the merge of the two kinds of candidates (at most p_limit + p_limit per assistant rows).
-- That sort carries the planner's penalty for a disabled node, which put the plan's cost
-- above jit_above_cost: JIT compilation then took ~0.6 s of every call. No JIT here, and
-- the generic plan always (the same ordered walks whatever the arguments): with custom
-- plans every call was planned anew, ~1 ms for ~0.15 ms of execution.
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

-- Runs promoted on their thread are queued with their assistant's mark.
-- +goose StatementBegin
CREATE OR REPLACE FUNCTION runs_thread_settle() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    nxt_id uuid;
    nxt    record;
BEGIN
    UPDATE threads SET active_run_id = NULL, update_time = now(),
        state = CASE WHEN NEW.state = 3 AND NEW.output IS NOT NULL THEN NEW.output ELSE state END,
        state_run_id = CASE WHEN NEW.state = 3 THEN NEW.id ELSE state_run_id END,
        state_time = CASE WHEN NEW.state = 3 THEN now() ELSE state_time END
    WHERE tenant_id = NEW.tenant_id AND id = NEW.thread_id AND active_run_id = NEW.id;
    IF NOT FOUND THEN
        RETURN NULL;
    END IF;
    -- The thread row is locked: no other settle or join of this thread runs meanwhile.
    -- A waiting run is locked before its thread_queue row is taken, as CancelRun does, and
    -- one cancelled meanwhile is passed over.
    LOOP
        SELECT w.run_id INTO nxt_id FROM thread_queue w
        WHERE w.tenant_id = NEW.tenant_id AND w.thread_id = NEW.thread_id
        ORDER BY w.seq LIMIT 1;
        IF NOT FOUND THEN
            RETURN NULL;
        END IF;
        SELECT id, seq, assistant_id, slot_type, priority, state INTO nxt FROM runs
        WHERE id = nxt_id FOR UPDATE;
        DELETE FROM thread_queue WHERE run_id = nxt_id;
        EXIT WHEN nxt.state = 1;
    END LOOP;
    UPDATE threads SET active_run_id = nxt.id WHERE tenant_id = NEW.tenant_id AND id = NEW.thread_id;
    INSERT INTO run_queue (run_id, seq, tenant_id, assistant_id, slot_type, priority, limited)
    VALUES (nxt.id, nxt.seq, NEW.tenant_id, nxt.assistant_id, nxt.slot_type, nxt.priority,
        EXISTS (SELECT 1 FROM assistant_load l
            WHERE l.tenant_id = NEW.tenant_id AND l.assistant_id = nxt.assistant_id))
    ON CONFLICT (run_id) DO NOTHING;
    PERFORM pg_notify('agentserver_queue', nxt.slot_type);
    RETURN NULL;
END;
$$;
-- +goose StatementEnd

-- +goose Down
-- +goose StatementBegin
CREATE OR REPLACE FUNCTION runs_thread_settle() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    nxt_id uuid;
    nxt    record;
BEGIN
    UPDATE threads SET active_run_id = NULL, update_time = now(),
        state = CASE WHEN NEW.state = 3 AND NEW.output IS NOT NULL THEN NEW.output ELSE state END,
        state_run_id = CASE WHEN NEW.state = 3 THEN NEW.id ELSE state_run_id END,
        state_time = CASE WHEN NEW.state = 3 THEN now() ELSE state_time END
    WHERE tenant_id = NEW.tenant_id AND id = NEW.thread_id AND active_run_id = NEW.id;
    IF NOT FOUND THEN
        RETURN NULL;
    END IF;
    LOOP
        SELECT w.run_id INTO nxt_id FROM thread_queue w
        WHERE w.tenant_id = NEW.tenant_id AND w.thread_id = NEW.thread_id
        ORDER BY w.seq LIMIT 1;
        IF NOT FOUND THEN
            RETURN NULL;
        END IF;
        SELECT id, seq, assistant_id, slot_type, priority, state INTO nxt FROM runs
        WHERE id = nxt_id FOR UPDATE;
        DELETE FROM thread_queue WHERE run_id = nxt_id;
        EXIT WHEN nxt.state = 1;
    END LOOP;
    UPDATE threads SET active_run_id = nxt.id WHERE tenant_id = NEW.tenant_id AND id = NEW.thread_id;
    INSERT INTO run_queue (run_id, seq, tenant_id, assistant_id, slot_type, priority)
    VALUES (nxt.id, nxt.seq, NEW.tenant_id, nxt.assistant_id, nxt.slot_type, nxt.priority)
    ON CONFLICT (run_id) DO NOTHING;
    PERFORM pg_notify('agentserver_queue', nxt.slot_type);
    RETURN NULL;
END;
$$;
-- +goose StatementEnd
-- +goose StatementBegin
CREATE OR REPLACE FUNCTION agentserver_claim_candidates_limited(p_slot_type text, p_limit integer, p_max_gpu_memory bigint)
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
-- +goose StatementBegin
CREATE OR REPLACE FUNCTION agentserver_claim_candidates(p_slot_type text, p_limit integer, p_max_gpu_memory bigint)
RETURNS SETOF uuid LANGUAGE plpgsql
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
DROP INDEX run_queue_limited;
DROP INDEX run_queue_claim;
CREATE INDEX run_queue_claim ON run_queue (slot_type, priority DESC, seq);
ALTER TABLE run_queue DROP COLUMN limited;
