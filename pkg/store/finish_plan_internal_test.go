package store

import (
	"fmt"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"
)

// The one-statement finish reaches its runs by probing runs_pkey with its ids, with the
// generic plan it gets on the hot pool (hotSettings) and with PostgreSQL's defaults: never a
// plan that reads all of runs, nor one that joins the input arrays (read again for every
// run). (A generic plan made while runs holds a few dozen rows may read a whole index of
// runs instead, until autovacuum's first ANALYZE of runs replaces it: docs/architecture.md.)
func TestFinishProbesRunsByKey(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	conn := migratedConn(t)
	_, err := conn.Exec(ctx, `INSERT INTO runs (id, tenant_id, assistant_id, assistant_version, seq, state, priority,
			slot_type, input, max_attempts, timeout_ms, create_time, epoch)
		SELECT gen_random_uuid(), 'default', 'a' || (g % 4), 1, g, 2, 0, 'cpu', '{}', 1, 1000, now(), 1
		FROM generate_series(1, 20000) g`)
	require.NoError(t, err)
	_, err = conn.Exec(ctx, `ANALYZE runs`)
	require.NoError(t, err)

	byKey := regexp.MustCompile(`Index Scan (using runs_pkey on runs r|on runs_pkey) \(actual rows=(\d+) loops=1\)\n\s+Index Cond: \(id = ANY `)
	hot := strings.ReplaceAll(hotSettings, "SET ", "SET LOCAL ")
	// The hot pool's plan (generic) and PostgreSQL's own choice (a custom plan first).
	modes := map[string]string{"hot pool": hot, "defaults": `SET LOCAL plan_cache_mode = auto`}
	for _, n := range []int{4, 128} {
		rows, err := conn.Query(ctx, `SELECT id FROM runs ORDER BY id LIMIT $1`, n)
		require.NoError(t, err)
		ids, err := pgx.CollectRows(rows, pgx.RowTo[uuid.UUID])
		require.NoError(t, err)
		// The arguments as array literals (explainGeneric).
		idText := make([]string, n)
		for i, id := range ids {
			idText[i] = id.String()
		}
		idList := "{" + strings.Join(idText, ",") + "}"
		epochList := "{" + strings.Repeat("1,", n-1) + "1}"
		outputList := "{" + strings.Repeat(`"{}",`, n-1) + `"{}"}`
		stepList := "{" + strings.Repeat("noop,", n-1) + "noop}"
		for mode, settings := range modes {
			name := fmt.Sprintf("%d of 20,000 runs (%s)", n, mode)
			lines := explainGeneric(t, conn, settings, `EXPLAIN (ANALYZE, COSTS OFF, TIMING OFF, SUMMARY OFF)`,
				finishSuccessPlain, idList, epochList, outputList, "{}", "{}", "{}", stepList)
			plan := strings.Join(lines, "\n")

			if mode == "hot pool" {
				require.Containsf(t, plan, "(id = ANY ($1))", "%s: not a generic plan:\n%s", name, plan)
			}
			m := byKey.FindStringSubmatch(plan)
			require.NotNilf(t, m, "%s: runs are not reached by probing runs_pkey with the ids:\n%s", name, plan)
			require.Equalf(t, strconv.Itoa(n), m[2], "%s: runs found:\n%s", name, plan)
			require.NotContainsf(t, plan, "Seq Scan on runs", "%s:\n%s", name, plan)
			require.NotContainsf(t, plan, "Function Scan on p", "%s: the input arrays are joined:\n%s", name, plan)
			require.Containsf(t, plan, fmt.Sprintf("Update on runs r (actual rows=%d loops=1)", n), "%s: every run finished:\n%s", name, plan)
		}
	}
}
