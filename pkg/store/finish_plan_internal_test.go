package store

import (
	"context"
	"fmt"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"

	"github.com/agentserver/agentserver/pkg/pgtest"
)

// The one-statement finish joins its runs to its input arrays: its plan reads the arrays
// once and probes runs_pkey once per run, with the plan PostgreSQL makes for the given
// values and with a generic one — never a loop that reads the arrays again for every run
// (n² rows per statement), nor a scan of runs.
func TestFinishReadsItsInputOnce(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	url := pgtest.NewDatabase(t)
	require.NoError(t, Migrate(ctx, url))
	conn, err := pgx.Connect(ctx, url)
	require.NoError(t, err)
	t.Cleanup(func() { _ = conn.Close(context.Background()) })
	_, err = conn.Exec(ctx, `INSERT INTO runs (id, tenant_id, assistant_id, assistant_version, seq, state, priority,
			slot_type, input, max_attempts, timeout_ms, create_time, epoch)
		SELECT gen_random_uuid(), 'default', 'a' || (g % 4), 1, g, 2, 0, 'cpu', '{}', 1, 1000, now(), 1
		FROM generate_series(1, 20000) g`)
	require.NoError(t, err)
	_, err = conn.Exec(ctx, `ANALYZE runs`)
	require.NoError(t, err)

	inputScan := regexp.MustCompile(`Function Scan on p \(actual rows=(\d+) loops=(\d+)\)`)
	probes := regexp.MustCompile(`Index Scan using runs_pkey on runs r \(actual rows=1 loops=(\d+)\)`)
	for _, n := range []int{4, 128} {
		rows, err := conn.Query(ctx, `SELECT id FROM runs ORDER BY id LIMIT $1`, n)
		require.NoError(t, err)
		ids, err := pgx.CollectRows(rows, pgx.RowTo[uuid.UUID])
		require.NoError(t, err)
		epochs, outputs, steps := make([]int64, n), make([][]byte, n), make([]string, n)
		for i := range n {
			epochs[i], outputs[i], steps[i] = 1, []byte(`{}`), "noop"
		}
		for _, mode := range []string{"auto", "force_generic_plan"} {
			name := fmt.Sprintf("%d runs (%s)", n, mode)
			tx, err := conn.Begin(ctx)
			require.NoError(t, err)
			_, err = tx.Exec(ctx, `SET LOCAL plan_cache_mode = `+mode)
			require.NoError(t, err)
			rows, err := tx.Query(ctx, `EXPLAIN (ANALYZE, COSTS OFF, TIMING OFF, SUMMARY OFF) `+finishSuccessPlain,
				ids, epochs, outputs, []uuid.UUID{}, []string{}, [][]byte{}, steps)
			require.NoError(t, err)
			lines, err := pgx.CollectRows(rows, pgx.RowTo[string])
			require.NoError(t, err)
			require.NoError(t, tx.Rollback(ctx))
			plan := strings.Join(lines, "\n")

			m := inputScan.FindStringSubmatch(plan)
			require.NotNilf(t, m, "%s: the arrays are not read by a function scan:\n%s", name, plan)
			require.Equalf(t, []string{strconv.Itoa(n), "1"}, m[1:], "%s: rows and loops of the arrays' scan:\n%s", name, plan)
			m = probes.FindStringSubmatch(plan)
			require.NotNilf(t, m, "%s: runs are not probed by runs_pkey one row at a time:\n%s", name, plan)
			require.Equalf(t, strconv.Itoa(n), m[1], "%s: probes of runs_pkey:\n%s", name, plan)
			require.NotContainsf(t, plan, "Seq Scan on runs", "%s:\n%s", name, plan)
			require.Containsf(t, plan, fmt.Sprintf("Update on runs r (actual rows=%d loops=1)", n), "%s: every run finished:\n%s", name, plan)
		}
	}
}
