-- +goose Up
-- Claims no longer store the data of their RUNNING event in runs.running_event (migration
-- 12): it is {"state": "RUNNING", "worker", "attempt", "epoch"} of the claim, and those
-- stay on the run while the event is kept there, so readers make it from them
-- (store.runningEvent). A claimed run grew by ~100 bytes for the stored copy, which made
-- most of the new row versions of a burn-down's claims leave their page (not HOT) and was
-- written to the WAL again by every later update of the run. Runs claimed before keep
-- their copy; the column stays for them. No schema change.

-- +goose Down
-- Migration 12's down writes running_event out as rows: give the runs claimed since the
-- copy this migration stopped storing.
UPDATE runs SET running_event = jsonb_build_object('state', 'RUNNING', 'worker', worker_id,
    'attempt', attempt, 'epoch', epoch)
WHERE running_seq IS NOT NULL AND running_event IS NULL;
