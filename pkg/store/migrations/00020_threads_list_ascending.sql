-- +goose Up
-- threads_list ascending, as migration 19 did for the list indexes of runs: threads are
-- created in time order, and a descending index takes each new entry at its left end,
-- where a page split leaves half of each page empty for good. ListThreads scans it
-- backwards.
DROP INDEX threads_list;
CREATE INDEX threads_list ON threads (tenant_id, create_time, id);

-- +goose Down
DROP INDEX threads_list;
CREATE INDEX threads_list ON threads (tenant_id, create_time DESC, id DESC);
