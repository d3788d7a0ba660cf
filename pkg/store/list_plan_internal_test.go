package store

import (
	"context"
	"fmt"
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

// explainGeneric returns the plan of sql as a prepared statement with settings in force
// (a generic plan with plan_cache_mode = force_generic_plan), explained by explain
// ("EXPLAIN", "EXPLAIN (ANALYZE, …)") for the values args, in a transaction rolled back.
// EXPLAIN of the bare statement with bind values would plan it for those values, and
// EXPLAIN EXECUTE takes no bind values: args are written as literals.
func explainGeneric(t *testing.T, conn *pgx.Conn, settings, explain, sql string, args ...any) []string {
	t.Helper()
	ctx := t.Context()
	tx, err := conn.Begin(ctx)
	require.NoError(t, err)
	defer func() { _ = tx.Rollback(ctx) }()
	_, err = tx.Exec(ctx, settings)
	require.NoError(t, err)
	_, err = tx.Exec(ctx, `PREPARE explained AS `+sql)
	require.NoError(t, err)
	defer func() { _, _ = conn.Exec(context.Background(), `DEALLOCATE explained`) }()
	lits := make([]string, len(args))
	for i, a := range args {
		var text string
		switch v := a.(type) {
		case nil:
			lits[i] = "NULL"
			continue
		case time.Time:
			text = v.Format(time.RFC3339Nano)
		default:
			text = fmt.Sprint(v)
		}
		lits[i] = "'" + strings.ReplaceAll(text, "'", "''") + "'"
	}
	execute := `EXECUTE explained`
	if len(lits) > 0 {
		execute += "(" + strings.Join(lits, ", ") + ")"
	}
	rows, err := tx.Query(ctx, explain+" "+execute)
	require.NoError(t, err)
	lines, err := pgx.CollectRows(rows, pgx.RowTo[string])
	require.NoError(t, err)
	return lines
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
		for _, mode := range []string{"custom", "generic"} {
			var lines []string
			if mode == "custom" {
				// EXPLAIN of the statement with its values plans it for those values.
				rows, err := conn.Query(ctx, `EXPLAIN `+sql, args...)
				require.NoError(t, err)
				lines, err = pgx.CollectRows(rows, pgx.RowTo[string])
				require.NoError(t, err)
			} else {
				lines = explainGeneric(t, conn, `SET LOCAL plan_cache_mode = force_generic_plan`, `EXPLAIN`, sql, args...)
			}
			plan := strings.Join(lines, "\n")
			if mode == "generic" {
				require.Containsf(t, plan, "$1", "%s: not a generic plan:\n%s", tc.name, plan)
			}
			require.Containsf(t, plan, "Index Scan Backward using "+tc.index, "%s (%s):\n%s", tc.name, mode, plan)
			require.NotContainsf(t, plan, "Sort", "%s (%s):\n%s", tc.name, mode, plan)
		}
	}
}
