-- +goose Up
-- Every tenant-owned row carries its tenant from the first migration on; until API keys
-- exist everything belongs to the tenant 'default'.
CREATE TABLE tenants (
    id          text PRIMARY KEY,
    create_time timestamptz NOT NULL DEFAULT now()
);
INSERT INTO tenants (id) VALUES ('default');

-- assistants holds the newest version of each assistant; assistant_versions keeps every
-- version so queued runs keep the flow they were created for.
CREATE TABLE assistants (
    tenant_id         text        NOT NULL REFERENCES tenants (id),
    id                text        NOT NULL,
    version           bigint      NOT NULL,
    display_name      text        NOT NULL DEFAULT '',
    flow              text        NOT NULL,
    slot_type         text        NOT NULL,
    priority          integer     NOT NULL DEFAULT 0,
    concurrency_limit integer     NOT NULL DEFAULT 0,
    timeout_ms        bigint      NOT NULL DEFAULT 0,
    max_attempts      integer     NOT NULL DEFAULT 0,
    config            jsonb       NOT NULL DEFAULT '{}',
    create_time       timestamptz NOT NULL DEFAULT now(),
    update_time       timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, id)
);

CREATE TABLE assistant_versions (
    tenant_id    text        NOT NULL,
    assistant_id text        NOT NULL,
    version      bigint      NOT NULL,
    flow         text        NOT NULL,
    config       jsonb       NOT NULL DEFAULT '{}',
    create_time  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, assistant_id, version)
);

-- assistant_load counts the RUNNING runs of assistants that have a concurrency limit.
-- A trigger on runs keeps running exact; the scheduler reconciles it periodically.
CREATE TABLE assistant_load (
    tenant_id         text    NOT NULL,
    assistant_id      text    NOT NULL,
    concurrency_limit integer NOT NULL,
    running           integer NOT NULL DEFAULT 0,
    PRIMARY KEY (tenant_id, assistant_id)
);

CREATE SEQUENCE run_seq;

-- runs is the record of every run. state numbers are agentserver.v1.Run.State:
-- 1 QUEUED, 2 RUNNING, 3 SUCCEEDED, 4 FAILED, 5 CANCELLED, 6 TIMED_OUT, 7 INTERRUPTED.
CREATE TABLE runs (
    id                uuid        PRIMARY KEY,
    tenant_id         text        NOT NULL REFERENCES tenants (id),
    assistant_id      text        NOT NULL,
    assistant_version bigint      NOT NULL,
    thread_id         text,
    seq               bigint      NOT NULL,
    state             smallint    NOT NULL,
    priority          integer     NOT NULL,
    slot_type         text        NOT NULL,
    input             jsonb       NOT NULL,
    output            jsonb,
    error             text        NOT NULL DEFAULT '',
    attempt           integer     NOT NULL DEFAULT 1,
    max_attempts      integer     NOT NULL,
    timeout_ms        bigint      NOT NULL,
    epoch             bigint      NOT NULL DEFAULT 0,
    worker_id         text,
    lease_expire_time timestamptz,
    claim_time        timestamptz,
    cancel_requested  boolean     NOT NULL DEFAULT false,
    checkpoint        jsonb,
    next_step         text,
    request_id        text,
    create_time       timestamptz NOT NULL DEFAULT now(),
    start_time        timestamptz,
    end_time          timestamptz,
    next_attempt_time timestamptz
);
CREATE UNIQUE INDEX runs_request_id ON runs (tenant_id, request_id) WHERE request_id IS NOT NULL;
CREATE INDEX runs_list ON runs (tenant_id, create_time DESC, id DESC);
CREATE INDEX runs_list_assistant ON runs (tenant_id, assistant_id, create_time DESC, id DESC);
CREATE INDEX runs_running_worker ON runs (worker_id) WHERE state = 2;
CREATE INDEX runs_running_lease ON runs (lease_expire_time) WHERE state = 2;

-- run_queue is the hot path: one small row per runnable run, deleted when claimed, so
-- finished runs never slow the claim scan. The claim index matches the claim's ORDER BY.
CREATE TABLE run_queue (
    run_id         uuid        PRIMARY KEY,
    seq            bigint      NOT NULL,
    tenant_id      text        NOT NULL,
    assistant_id   text        NOT NULL,
    slot_type      text        NOT NULL,
    priority       integer     NOT NULL,
    available_time timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX run_queue_claim ON run_queue (slot_type, priority DESC, seq);

-- run_events is the ordered, durable event log of each run.
CREATE TABLE run_events (
    run_id      uuid        NOT NULL,
    seq         bigint      GENERATED ALWAYS AS IDENTITY,
    tenant_id   text        NOT NULL,
    type        text        NOT NULL,
    data        jsonb       NOT NULL DEFAULT '{}',
    create_time timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (run_id, seq)
);

-- workers is the registry the gateways read (ListWorkers); schedulers write it.
-- state numbers are agentserver.v1.Worker.State: 1 READY, 2 DRAINING, 3 LOST.
CREATE TABLE workers (
    id                 text        PRIMARY KEY,
    pool               text        NOT NULL DEFAULT '',
    hostname           text        NOT NULL DEFAULT '',
    labels             jsonb       NOT NULL DEFAULT '{}',
    slots              jsonb       NOT NULL DEFAULT '[]',
    gpus               jsonb       NOT NULL DEFAULT '[]',
    memory_total_bytes bigint      NOT NULL DEFAULT 0,
    memory_free_bytes  bigint      NOT NULL DEFAULT 0,
    state              smallint    NOT NULL,
    scheduler_id       text        NOT NULL DEFAULT '',
    connect_time       timestamptz NOT NULL DEFAULT now(),
    heartbeat_time     timestamptz NOT NULL DEFAULT now()
);

-- +goose StatementBegin
CREATE FUNCTION runs_track_load() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.state = 2 AND OLD.state <> 2 THEN
        UPDATE assistant_load SET running = running + 1
        WHERE tenant_id = NEW.tenant_id AND assistant_id = NEW.assistant_id;
    ELSIF OLD.state = 2 AND NEW.state <> 2 THEN
        UPDATE assistant_load SET running = greatest(running - 1, 0)
        WHERE tenant_id = NEW.tenant_id AND assistant_id = NEW.assistant_id;
    END IF;
    RETURN NULL;
END;
$$;
-- +goose StatementEnd

CREATE TRIGGER runs_track_load AFTER UPDATE OF state ON runs
    FOR EACH ROW WHEN ((OLD.state = 2) IS DISTINCT FROM (NEW.state = 2))
    EXECUTE FUNCTION runs_track_load();

-- +goose Down
DROP TABLE workers, run_events, run_queue, runs, assistant_load, assistant_versions, assistants, tenants;
DROP SEQUENCE run_seq;
DROP FUNCTION runs_track_load();
