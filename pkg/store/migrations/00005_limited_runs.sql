-- +goose Up
-- limited marks a run claimed while its assistant had a concurrency limit: only such runs
-- fire the load trigger, so runs of unlimited assistants (the common case) pay nothing.
-- A limit added while runs are RUNNING counts them at the next reconcile (the scheduler
-- reconciles every 30 s and on every limit change), erring on the side of admitting less.
ALTER TABLE runs ADD COLUMN limited boolean NOT NULL DEFAULT false;
DROP TRIGGER runs_track_load ON runs;
CREATE TRIGGER runs_track_load AFTER UPDATE OF state ON runs
    FOR EACH ROW WHEN ((OLD.limited OR NEW.limited) AND (OLD.state = 2) IS DISTINCT FROM (NEW.state = 2))
    EXECUTE FUNCTION runs_track_load();

-- +goose Down
DROP TRIGGER runs_track_load ON runs;
CREATE TRIGGER runs_track_load AFTER UPDATE OF state ON runs
    FOR EACH ROW WHEN ((OLD.state = 2) IS DISTINCT FROM (NEW.state = 2))
    EXECUTE FUNCTION runs_track_load();
ALTER TABLE runs DROP COLUMN limited;
