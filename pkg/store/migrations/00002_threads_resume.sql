-- +goose Up
-- Threads keep state across runs. At most one run is active on a thread (queued, running
-- or interrupted); runs that wait behind it are QUEUED without a run_queue row until a
-- trigger promotes them.
CREATE TABLE threads (
    tenant_id     text        NOT NULL REFERENCES tenants (id),
    id            text        NOT NULL,
    metadata      jsonb       NOT NULL DEFAULT '{}',
    state         jsonb       NOT NULL DEFAULT '{}',
    state_run_id  uuid,
    state_time    timestamptz,
    active_run_id uuid,
    create_time   timestamptz NOT NULL DEFAULT now(),
    update_time   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, id)
);
CREATE INDEX threads_list ON threads (tenant_id, create_time DESC, id DESC);
CREATE INDEX runs_thread_waiting ON runs (tenant_id, thread_id, seq) WHERE thread_id IS NOT NULL AND state = 1;

-- resume is the answer to an interrupted step (SQL NULL = none; JSON null is an answer);
-- prompt is what the interrupted step asked.
ALTER TABLE runs ADD COLUMN resume jsonb;
ALTER TABLE runs ADD COLUMN prompt jsonb;

-- +goose StatementBegin
CREATE FUNCTION runs_thread_settle() RETURNS trigger LANGUAGE plpgsql AS $$
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

CREATE TRIGGER runs_thread_settle AFTER UPDATE OF state ON runs
    FOR EACH ROW WHEN (NEW.thread_id IS NOT NULL AND NEW.state IN (3, 4, 5, 6) AND OLD.state NOT IN (3, 4, 5, 6))
    EXECUTE FUNCTION runs_thread_settle();

-- +goose Down
DROP TRIGGER runs_thread_settle ON runs;
DROP FUNCTION runs_thread_settle();
ALTER TABLE runs DROP COLUMN resume, DROP COLUMN prompt;
DROP INDEX runs_thread_waiting;
DROP TABLE threads;
