package store

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/stretchr/testify/require"

	"github.com/agentserver/agentserver/pkg/pgtest"
)

func TestTmpPlan2(t *testing.T) {
	ctx := context.Background()
	url := pgtest.NewDatabase(t)
	require.NoError(t, Migrate(ctx, url))
	st, err := Open(ctx, url)
	require.NoError(t, err)
	defer st.Close()
	_, err = st.CreateAssistant(ctx, &Assistant{TenantID: DefaultTenant, ID: "a", SlotType: "cpu", Flow: "executors:\n  - name: noop\n    command: [\"true\"]\n"})
	require.NoError(t, err)
	for i := 0; i < 100; i++ {
		runs := make([]NewRun, 1000)
		for j := range runs {
			runs[j] = NewRun{AssistantID: "a", Input: map[string]any{"n": 1.0}}
		}
		_, err := st.CreateRuns(ctx, DefaultTenant, runs, RunDefaults{MaxAttempts: 1, Timeout: 3600e9, MaxTimeout: 3600e9})
		require.NoError(t, err)
	}
	for round := 0; round < 8; round++ {
		cs, err := st.ClaimRuns(ctx, ClaimParams{WorkerID: "w", SlotType: "cpu", Limit: 4, LeaseTTL: time.Minute})
		require.NoError(t, err)
		var ps []FinishParams
		for _, c := range cs {
			ps = append(ps, FinishParams{RunID: c.Run.ID, Epoch: c.Run.Epoch, Outcome: OutcomeSucceeded, State: map[string]any{}})
		}
		start := time.Now()
		_, _, err = st.FinishRuns(ctx, ps)
		require.NoError(t, err)
		t.Logf("finish of %d: %v", len(ps), time.Since(start))
	}
	_, err = st.pool.Exec(ctx, `UPDATE runs SET state = 3 WHERE id IN (SELECT run_id FROM run_queue LIMIT 90000)`)
	require.NoError(t, err)
	_, err = st.pool.Exec(ctx, `DELETE FROM run_queue WHERE run_id IN (SELECT id FROM runs WHERE state = 3)`)
	require.NoError(t, err)
	_, err = st.pool.Exec(ctx, `VACUUM ANALYZE runs, run_queue`)
	require.NoError(t, err)
	cs, err := st.ClaimRuns(ctx, ClaimParams{WorkerID: "w", SlotType: "cpu", Limit: 4, LeaseTTL: time.Minute})
	require.NoError(t, err)
	ids := []uuid.UUID{}
	ep := []int64{}
	outs := [][]byte{}
	for _, c := range cs {
		ids = append(ids, c.Run.ID)
		ep = append(ep, c.Run.Epoch)
		outs = append(outs, []byte("{}"))
	}
	rows, err := st.pool.Query(ctx, `EXPLAIN ANALYZE UPDATE runs r SET state = 3, output = i.output, error = '', end_time = now()
			FROM unnest($1::uuid[], $2::bigint[], $3::jsonb[]) AS i(id, epoch, output)
			WHERE r.id = i.id AND r.epoch = i.epoch AND r.state = 2 AND NOT r.limited AND r.thread_id IS NULL`, ids, ep, outs)
	require.NoError(t, err)
	var lines []string
	for rows.Next() {
		var l string
		require.NoError(t, rows.Scan(&l))
		lines = append(lines, l)
	}
	rows.Close()
	t.Log("\n" + strings.Join(lines, "\n"))
}
