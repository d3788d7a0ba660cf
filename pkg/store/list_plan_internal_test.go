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

// migratedConn connects to a new, migrated database of its own, for tests that look at
// plans.
func migratedConn(t *testing.T) *pgx.Conn {
	t.Helper()
	url := pgtest.NewDatabase(t)
	require.NoError(t, Migrate(t.Context(), url))
	conn, err := pgx.Connect(t.Context(), url)
	require.NoError(t, err)
	t.Cleanup(func() { _ = conn.Close(context.Background()) })
	return conn
}

// Listings read runs and threads newest first by scanning runs_list, runs_list_assistant
// or threads_list backwards (ascending since migrations 19 and 20): never a sort of the
// tenant's rows, with the plan PostgreSQL makes for the given values and with a generic one.
func TestListingsScanTheListIndexesBackwards(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	conn := migratedConn(t)
	_, err := conn.Exec(ctx, `INSERT INTO runs (id, tenant_id, assistant_id, assistant_version, seq, state, priority,
			slot_type, input, max_attempts, timeout_ms, create_time)
		SELECT gen_random_uuid(), 'default', 'a' || (g % 4), 1, g, 3, 0, 'cpu', '{}', 1, 1000,
			now() - (20000 - g) * interval '1 second'
		FROM generate_series(1, 20000) g`)
	require.NoError(t, err)
	_, err = conn.Exec(ctx, `INSERT INTO threads (tenant_id, id, create_time)
		SELECT 'default', 't-' || g, now() - (20000 - g) * interval '1 second' FROM generate_series(1, 20000) g`)
	require.NoError(t, err)
	_, err = conn.Exec(ctx, `ANALYZE runs, threads`)
	require.NoError(t, err)

	cursor := &RunCursor{CreateTime: time.Now().Add(-time.Hour), ID: uuid.Max}
	for _, tc := range []struct {
		name  string
		query func() (string, []any)
		index string
	}{
		{"runs", func() (string, []any) { return listRunsQuery("default", RunFilter{}, 50, nil) }, "runs_list on runs"},
		{"runs, next page", func() (string, []any) { return listRunsQuery("default", RunFilter{}, 50, cursor) }, "runs_list on runs"},
		{"runs of an assistant", func() (string, []any) {
			return listRunsQuery("default", RunFilter{AssistantID: "a1"}, 50, nil)
		}, "runs_list_assistant on runs"},
		{"runs of an assistant, next page", func() (string, []any) {
			return listRunsQuery("default", RunFilter{AssistantID: "a1"}, 50, cursor)
		}, "runs_list_assistant on runs"},
		{"threads", func() (string, []any) { return listThreadsQuery("default", 50, nil) }, "threads_list on threads"},
		{"threads, next page", func() (string, []any) {
			return listThreadsQuery("default", 50, &ThreadCursor{CreateTime: cursor.CreateTime, ID: "t-~"})
		}, "threads_list on threads"},
	} {
		sql, args := tc.query()
		for _, mode := range []string{"auto", "force_generic_plan"} {
			_, err := conn.Exec(ctx, `SET plan_cache_mode = `+mode)
			require.NoError(t, err)
			rows, err := conn.Query(ctx, `EXPLAIN `+sql, args...)
			require.NoError(t, err)
			lines, err := pgx.CollectRows(rows, pgx.RowTo[string])
			require.NoError(t, err)
			plan := strings.Join(lines, "\n")
			require.Containsf(t, plan, "Index Scan Backward using "+tc.index, "%s (%s):\n%s", tc.name, mode, plan)
			require.NotContainsf(t, plan, "Sort", "%s (%s):\n%s", tc.name, mode, plan)
		}
	}
}
