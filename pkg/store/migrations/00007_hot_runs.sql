-- +goose Up
-- Every run is updated at least twice (claimed, finished). runs had indexes on columns
-- those updates change (worker_id, lease_expire_time) and partial indexes on state, so
-- every update wrote a new entry into every index of runs. Now no index of runs covers a
-- column that a claim, a completion or a renewal changes, and pages keep room for the new
-- row version: PostgreSQL updates runs in place (HOT) without touching its indexes.
--
-- run_leases holds the lease of every RUNNING run (one row exactly while runs.state = 2,
-- written by the same statements that move runs in and out of RUNNING). Renewals update
-- only this small table; recovery and cancel delivery scan it instead of indexes on runs.
CREATE TABLE run_leases (
    run_id       uuid        PRIMARY KEY,
    epoch        bigint      NOT NULL,
    worker_id    text        NOT NULL,
    tenant_id    text        NOT NULL,
    assistant_id text        NOT NULL,
    slot_type    text        NOT NULL,
    expire_time  timestamptz NOT NULL
) WITH (fillfactor = 50,
    autovacuum_vacuum_scale_factor = 0, autovacuum_vacuum_threshold = 1000,
    autovacuum_analyze_scale_factor = 0, autovacuum_analyze_threshold = 1000,
    autovacuum_vacuum_cost_delay = 0);
INSERT INTO run_leases (run_id, epoch, worker_id, tenant_id, assistant_id, slot_type, expire_time)
SELECT id, epoch, coalesce(worker_id, ''), tenant_id, assistant_id, slot_type, coalesce(lease_expire_time, now())
FROM runs WHERE state = 2;

-- thread_queue holds the runs waiting on a thread behind its active run (QUEUED without a
-- run_queue row), in submission order; it replaces the partial index on runs.state.
CREATE TABLE thread_queue (
    run_id    uuid   PRIMARY KEY,
    tenant_id text   NOT NULL,
    thread_id text   NOT NULL,
    seq       bigint NOT NULL
);
CREATE INDEX thread_queue_next ON thread_queue (tenant_id, thread_id, seq);
INSERT INTO thread_queue (run_id, tenant_id, thread_id, seq)
SELECT r.id, r.tenant_id, r.thread_id, r.seq
FROM runs r JOIN threads t ON t.tenant_id = r.tenant_id AND t.id = r.thread_id
WHERE r.state = 1 AND r.thread_id IS NOT NULL AND t.active_run_id IS DISTINCT FROM r.id;

DROP INDEX runs_running_worker;
DROP INDEX runs_running_lease;
DROP INDEX runs_thread_waiting;
ALTER TABLE runs DROP COLUMN lease_expire_time;
-- A run's tenant is its assistant's (the create statement joins assistants, which
-- reference tenants): the per-row key check and its row lock on tenants were redundant.
ALTER TABLE runs DROP CONSTRAINT runs_tenant_id_fkey;
-- 65% full pages: in a claim-and-finish loop 80% of runs updates were HOT (54% at 80%
-- full, 94% at 50% full). The price is space: a page whose runs have all finished keeps
-- its unused third (the table is about 1.5x the size it would be packed full).
ALTER TABLE runs SET (fillfactor = 65);

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
    INSERT INTO run_queue (run_id, seq, tenant_id, assistant_id, slot_type, priority)
    VALUES (nxt.id, nxt.seq, NEW.tenant_id, nxt.assistant_id, nxt.slot_type, nxt.priority)
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
    nxt record;
BEGIN
    UPDATE threads SET active_run_id = NULL, update_time = now(),
        state = CASE WHEN NEW.state = 3 AND NEW.output IS NOT NULL THEN NEW.output ELSE state END,
        state_run_id = CASE WHEN NEW.state = 3 THEN NEW.id ELSE state_run_id END,
        state_time = CASE WHEN NEW.state = 3 THEN now() ELSE state_time END
    WHERE tenant_id = NEW.tenant_id AND id = NEW.thread_id AND active_run_id = NEW.id;
    IF NOT FOUND THEN
        RETURN NULL;
    END IF;
    SELECT id, seq, assistant_id, slot_type, priority INTO nxt FROM runs
    WHERE tenant_id = NEW.tenant_id AND thread_id = NEW.thread_id AND state = 1 AND id <> NEW.id
    ORDER BY seq LIMIT 1;
    IF FOUND THEN
        UPDATE threads SET active_run_id = nxt.id WHERE tenant_id = NEW.tenant_id AND id = NEW.thread_id;
        INSERT INTO run_queue (run_id, seq, tenant_id, assistant_id, slot_type, priority)
        VALUES (nxt.id, nxt.seq, NEW.tenant_id, nxt.assistant_id, nxt.slot_type, nxt.priority)
        ON CONFLICT (run_id) DO NOTHING;
        PERFORM pg_notify('agentserver_queue', nxt.slot_type);
    END IF;
    RETURN NULL;
END;
$$;
-- +goose StatementEnd
ALTER TABLE runs RESET (fillfactor);
ALTER TABLE runs ADD CONSTRAINT runs_tenant_id_fkey FOREIGN KEY (tenant_id) REFERENCES tenants (id);
ALTER TABLE runs ADD COLUMN lease_expire_time timestamptz;
UPDATE runs r SET lease_expire_time = l.expire_time FROM run_leases l WHERE l.run_id = r.id;
CREATE INDEX runs_thread_waiting ON runs (tenant_id, thread_id, seq) WHERE thread_id IS NOT NULL AND state = 1;
CREATE INDEX runs_running_lease ON runs (lease_expire_time) WHERE state = 2;
CREATE INDEX runs_running_worker ON runs (worker_id) WHERE state = 2;
DROP TABLE thread_queue, run_leases;
