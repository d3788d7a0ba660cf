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

// hotPool are the hot pool's settings (hotSettings) for one transaction.
var hotPool = strings.ReplaceAll(hotSettings, "SET ", "SET LOCAL ")

// byKey matches a scan of runs that probes runs_pkey with an array of ids.
var byKey = regexp.MustCompile(`Index Scan (using runs_pkey on runs r|on runs_pkey) \(actual rows=(\d+) loops=1\)\n\s+Index Cond: \(id = ANY `)

// The one-statement finish reaches its runs by probing runs_pkey with its ids: with the
// generic plan it gets on the hot pool whether that plan was made while runs held 20 rows
// or 20,000 (migration 22), and with PostgreSQL's own plan — never a plan that reads a whole
// index of runs, nor one that joins the input arrays (read again for every run).
func TestFinishProbesRunsByKey(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	conn := migratedConn(t)
	for _, size := range []int{20, 20000} {
		_, err := conn.Exec(ctx, `INSERT INTO runs (id, tenant_id, assistant_id, assistant_version, seq, state, priority,
				slot_type, input, max_attempts, timeout_ms, create_time, epoch)
			SELECT gen_random_uuid(), 'default', 'a' || (g % 4), 1, g, 2, 0, 'cpu', '{}', 1, 1000, now(), 1
			FROM generate_series(1, $1::int - (SELECT count(*) FROM runs)::int) g`, size)
		require.NoError(t, err)
		_, err = conn.Exec(ctx, `ANALYZE runs`)
		require.NoError(t, err)
		// The hot pool's plan (generic) and PostgreSQL's own choice (a custom plan first;
		// a tiny runs it reads whole, and plans again at every call).
		modes := map[string]string{"hot pool": hotPool}
		if size > 1000 {
			modes["defaults"] = `SET LOCAL plan_cache_mode = auto`
		}
		for _, n := range []int{4, 16} {
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
			// The statements without events and with them (none here).
			variants := map[string][]any{
				"without events": {finishSuccess[0][0], idList, epochList, outputList, stepList},
				"with events":    {finishSuccess[0][1], idList, epochList, outputList, "{}", "{}", "{}", stepList},
			}
			for mode, settings := range modes {
				for variant, args := range variants {
					name := fmt.Sprintf("%d of %d runs (%s, %s)", n, size, mode, variant)
					lines := explainGeneric(t, conn, settings, `EXPLAIN (ANALYZE, COSTS OFF, TIMING OFF, SUMMARY OFF)`,
						args[0].(string), args[1:]...)
					plan := strings.Join(lines, "\n")

					if mode == "hot pool" {
						require.Containsf(t, plan, "(id = ANY ($1))", "%s: not a generic plan:\n%s", name, plan)
					}
					m := byKey.FindStringSubmatch(plan)
					require.NotNilf(t, m, "%s: runs are not reached by probing runs_pkey with the ids:\n%s", name, plan)
					require.Equalf(t, strconv.Itoa(n), m[2], "%s: runs found:\n%s", name, plan)
					require.NotContainsf(t, plan, "Seq Scan on runs", "%s:\n%s", name, plan)
					require.NotContainsf(t, plan, "runs_list", "%s: a list index read whole:\n%s", name, plan)
					require.NotContainsf(t, plan, "Function Scan on p", "%s: the input arrays are joined:\n%s", name, plan)
					require.Containsf(t, plan, fmt.Sprintf("Update on runs r (actual rows=%d loops=1)", n), "%s: every run finished:\n%s", name, plan)
				}
			}
		}
	}
}

// The claim reaches the runs it claims by probing runs_pkey, with the generic plan the hot
// pool makes while runs holds 20 rows (before migration 22 it read all of
// runs_list_assistant).
func TestClaimProbesRunsByKey(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	conn := migratedConn(t)
	_, err := conn.Exec(ctx, `
		INSERT INTO runs (id, tenant_id, assistant_id, assistant_version, seq, state, priority,
			slot_type, input, max_attempts, timeout_ms)
		SELECT gen_random_uuid(), 'default', 'a' || (g % 4), 1, nextval('run_seq'), 1, 0, 'cpu', '{}', 1, 3600000
		FROM generate_series(1, 20) g`)
	require.NoError(t, err)
	_, err = conn.Exec(ctx, `INSERT INTO run_queue (run_id, seq, tenant_id, assistant_id, slot_type, priority, limited)
		SELECT id, seq, tenant_id, assistant_id, slot_type, priority, false FROM runs`)
	require.NoError(t, err)
	_, err = conn.Exec(ctx, `ANALYZE runs, run_queue`)
	require.NoError(t, err)
	claim := claimStatement(`cand AS (
			SELECT c.run_id FROM agentserver_claim_candidates($1, $4, $5) AS c(run_id)
			WHERE `+noLimits+`
		),`, "ANY(ARRAY(SELECT run_id FROM cand))", "false")
	lines := explainGeneric(t, conn, hotPool, `EXPLAIN (ANALYZE, COSTS OFF, TIMING OFF, SUMMARY OFF)`,
		claim, "cpu", "w", 60000, 4, nil)
	plan := strings.Join(lines, "\n")
	m := byKey.FindStringSubmatch(plan)
	require.NotNilf(t, m, "runs are not reached by probing runs_pkey with the ids:\n%s", plan)
	require.Equalf(t, "4", m[2], "runs claimed:\n%s", plan)
	require.NotContainsf(t, plan, "runs_list", "a list index read whole:\n%s", plan)
}
