package store

import (
	"fmt"
	"slices"
	"strings"
	"testing"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"
)

// The gateway's grouped reads (GetRuns, ListEventsOfRuns) keep a generic plan for batches
// of any size, where PostgreSQL planned them afresh at every call for fewer than ten runs
// (a custom plan sized to the array looked cheaper): after the five custom plans the plan
// cache always tries first, the next calls run the generic plan, and that plan probes
// runs_pkey. With the arrays passed to ANY and unnest directly this fails with no generic
// plan at all.
func TestGroupedReadsKeepTheirGenericPlans(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	conn := migratedConn(t)
	_, err := conn.Exec(ctx, `INSERT INTO runs (id, tenant_id, assistant_id, assistant_version, seq, state, priority,
			slot_type, input, max_attempts, timeout_ms, create_time, epoch)
		SELECT gen_random_uuid(), 'default', 'a', 1, g, 4, 0, 'cpu', '{}', 1, 1000, now(), 1
		FROM generate_series(1, 5000) g`)
	require.NoError(t, err)
	_, err = conn.Exec(ctx, `ANALYZE runs`)
	require.NoError(t, err)
	rows, err := conn.Query(ctx, `SELECT id FROM runs ORDER BY seq LIMIT 3`)
	require.NoError(t, err)
	ids, err := pgx.CollectRows(rows, pgx.RowTo[uuid.UUID])
	require.NoError(t, err)

	statements := map[string]struct {
		sql  string
		args func(n int) []any
	}{
		"GetRuns": {getRunsStatement, func(n int) []any { return []any{ids[:n]} }},
		"ListEventsOfRuns": {eventsOfRunsStatement, func(n int) []any {
			return []any{ids[:n], slices.Repeat([]string{"default"}, n), make([]int64, n), 100}
		}},
	}
	for name, st := range statements {
		for _, n := range []int{1, 3} {
			prepared := fmt.Sprintf("%s_%d", strings.ToLower(name), n)
			_, err := conn.Prepare(ctx, prepared, st.sql)
			require.NoError(t, err)
			for range 8 {
				rows, err := conn.Query(ctx, prepared, st.args(n)...)
				require.NoError(t, err)
				rows.Close()
				require.NoError(t, rows.Err())
			}
			var generic, custom int64
			require.NoError(t, conn.QueryRow(ctx, `SELECT generic_plans, custom_plans FROM pg_prepared_statements
				WHERE name = $1`, prepared).Scan(&generic, &custom))
			require.Positivef(t, generic, "%s of %d runs: %d custom plans and no generic one: planned at every call", name, n, custom)
			require.LessOrEqualf(t, custom, int64(5), "%s of %d runs: planned at every call", name, n)
		}
	}
	// The generic plan (what those calls ran) probes runs_pkey with the ids (an index scan,
	// or a bitmap of it), never reads runs whole.
	plan := strings.Join(explainGeneric(t, conn, `SET LOCAL plan_cache_mode = force_generic_plan`,
		`EXPLAIN (COSTS OFF)`, getRunsStatement, "{"+ids[0].String()+"}"), "\n")
	require.Regexp(t, `Index Scan (using runs_pkey on runs|on runs_pkey)\n\s+Index Cond: \(id = ANY \(\$0\)\)`, plan)
	require.NotContains(t, plan, "Seq Scan", plan)
}
