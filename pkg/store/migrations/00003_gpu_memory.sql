-- +goose Up
-- GPU memory a run needs free on its GPU (0 = any GPU). Kept on runs, not run_queue: only
-- gpu claims read it, through a primary-key probe.
ALTER TABLE assistants ADD COLUMN gpu_memory_bytes bigint NOT NULL DEFAULT 0;
ALTER TABLE runs ADD COLUMN gpu_memory_bytes bigint NOT NULL DEFAULT 0;

-- +goose Down
ALTER TABLE runs DROP COLUMN gpu_memory_bytes;
ALTER TABLE assistants DROP COLUMN gpu_memory_bytes;
