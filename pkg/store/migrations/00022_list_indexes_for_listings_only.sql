-- +goose Up
-- The list indexes of runs end with id, so PostgreSQL can serve `id = ANY(…)` from either by
-- reading all of it. The claim and the finish reach their runs that way on the hot pool,
-- whose generic plans are made once per connection: made while runs held a few dozen rows,
-- such a plan read all of runs_list_assistant at every call until the next ANALYZE of runs
-- replaced it. Rebuilt partial on a condition every listing states (tenant_id = $1 implies
-- tenant_id IS NOT NULL, which every row satisfies) and no statement that reaches runs by
-- id does, the list indexes serve listings only and those statements only runs_pkey
-- (TestFinishProbesRunsByKey). Both indexes are rebuilt, which holds off writes to runs
-- while it runs (seconds per million runs).
DROP INDEX runs_list;
DROP INDEX runs_list_assistant;
CREATE INDEX runs_list ON runs (tenant_id, create_time, id) WHERE tenant_id IS NOT NULL;
CREATE INDEX runs_list_assistant ON runs (tenant_id, assistant_id, create_time, id) WHERE tenant_id IS NOT NULL;

-- +goose Down
DROP INDEX runs_list;
DROP INDEX runs_list_assistant;
CREATE INDEX runs_list ON runs (tenant_id, create_time, id);
CREATE INDEX runs_list_assistant ON runs (tenant_id, assistant_id, create_time, id);
