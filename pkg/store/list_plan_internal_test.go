package store

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"

	"github.com/agentserver/agentserver/pkg/pgtest"
)

// Listings read runs newest first by scanning runs_list or runs_list_assistant backwards
// (both ascending since migration 19): never a sort of the tenant's runs, with the plan
// PostgreSQL makes for the given values and with a generic one.
func TestListRunsScansTheListIndexesBackwards(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	url := pgtest.NewDatabase(t)
	require.NoError(t, Migrate(ctx, url))
	conn, err := pgx.Connect(ctx, url)
	require.NoError(t, err)
	t.Cleanup(func() { _ = conn.Close(context.Background()) })
	_, err = conn.Exec(ctx, `INSERT INTO runs (id, tenant_id, assistant_id, assistant_version, seq, state, priority,
			slot_type, input, max_attempts, timeout_ms, create_time)
		SELECT gen_random_uuid(), 'default', 'a' || (g % 4), 1, g, 3, 0, 'cpu', '{}', 1, 1000,
			now() - (20000 - g) * interval '1 second'
		FROM generate_series(1, 20000) g`)
	require.NoError(t, err)
	_, err = conn.Exec(ctx, `ANALYZE runs`)
	require.NoError(t, err)

	cursor := &RunCursor{CreateTime: time.Now().Add(-time.Hour), ID: uuid.Max}
	for _, tc := range []struct {
		name  string
		f     RunFilter
		after *RunCursor
		index string
	}{
		{"all", RunFilter{}, nil, "runs_list"},
		{"all, next page", RunFilter{}, cursor, "runs_list"},
		{"assistant", RunFilter{AssistantID: "a1"}, nil, "runs_list_assistant"},
		{"assistant, next page", RunFilter{AssistantID: "a1"}, cursor, "runs_list_assistant"},
	} {
		sql, args := listRunsQuery("default", tc.f, 50, tc.after)
		for _, mode := range []string{"auto", "force_generic_plan"} {
			_, err := conn.Exec(ctx, `SET plan_cache_mode = `+mode)
			require.NoError(t, err)
			rows, err := conn.Query(ctx, `EXPLAIN `+sql, args...)
			require.NoError(t, err)
			lines, err := pgx.CollectRows(rows, pgx.RowTo[string])
			require.NoError(t, err)
			plan := strings.Join(lines, "\n")
			require.Containsf(t, plan, "Index Scan Backward using "+tc.index+" on runs", "%s (%s):\n%s", tc.name, mode, plan)
			require.NotContainsf(t, plan, "Sort", "%s (%s):\n%s", tc.name, mode, plan)
		}
	}
}
