package dev_test

import (
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/require"

	"github.com/agentserver/agentserver/pkg/pgtest"
)

// buildNoop builds the Go no-op executor (examples/noop, its own module).
func buildNoop(t *testing.T) string { return buildExample(t, "noop") }

// buildExample builds the Go executor of an example (its own module, outside go.work).
func buildExample(t *testing.T, dir ...string) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "executor")
	cmd := exec.Command("go", "build", "-o", bin, ".")
	cmd.Dir = filepath.Join(append([]string{repoRoot(t), "examples"}, dir...)...)
	cmd.Env = append(os.Environ(), "GOWORK=off")
	out, err := cmd.CombinedOutput()
	require.NoError(t, err, "building examples/%s: %s", filepath.Join(dir...), out)
	return bin
}

// 100,000 runs queued at once against 4 slots: none is rejected or lost, each ends
// SUCCEEDED exactly once, and the worker is never assigned more than its 4 slots.
func TestBackpressureHundredThousandRuns(t *testing.T) {
	if testing.Short() {
		t.Skip("-short: the 100,000-run backpressure test takes a minute or two")
	}
	db := pgtest.NewDatabase(t)
	s := startServerOn(t, db)
	noop := buildNoop(t)
	createAssistant(t, s, "noop", fmt.Sprintf("executors:\n  - name: noop\n    command: [%q]\n", noop), nil)

	const total, batch = 100_000, 1000
	for b := range total / batch {
		reqs := make([]map[string]any, batch)
		for i := range reqs {
			reqs[i] = map[string]any{"run": map[string]any{"assistant": "assistants/noop", "input": map[string]any{"i": b*batch + i}}}
		}
		var resp struct {
			Runs []run `json:"runs"`
		}
		require.Equal(t, http.StatusOK, s.call(t, "POST", "/v1/runs:batchCreate", map[string]any{"requests": reqs}, &resp))
		require.Len(t, resp.Runs, batch)
		for _, r := range resp.Runs {
			require.Equal(t, "QUEUED", r.State, "backpressure: a run waits, it is never rejected")
		}
	}

	pool, err := pgxpool.New(t.Context(), db)
	require.NoError(t, err)
	t.Cleanup(pool.Close)
	start := time.Now()
	require.Eventually(t, func() bool {
		var done int
		require.NoError(t, pool.QueryRow(t.Context(), `SELECT count(*) FROM runs WHERE state = 3`).Scan(&done))
		return done == total
	}, 10*time.Minute, 500*time.Millisecond)
	t.Logf("%d runs through 4 slots in %s (%.0f runs/s)", total, time.Since(start).Round(time.Second), total/time.Since(start).Seconds())

	var runs, terminalEvents int
	require.NoError(t, pool.QueryRow(t.Context(), `SELECT count(*) FROM runs`).Scan(&runs))
	// A terminal event is a row of run_events, or kept on its run (runs.end_seq: the
	// SUCCEEDED event of most runs, migration 21).
	require.NoError(t, pool.QueryRow(t.Context(),
		`SELECT (SELECT count(*) FROM run_events WHERE type = 'state' AND data->>'state' IN ('SUCCEEDED', 'FAILED', 'CANCELLED', 'TIMED_OUT'))
			+ (SELECT count(*) FROM runs WHERE end_seq IS NOT NULL)`).Scan(&terminalEvents))
	require.Equal(t, total, runs, "none lost, none duplicated")
	require.Equal(t, total, terminalEvents, "each run ended exactly once")

	// Never more runs assigned than the worker's 4 slots: a worker hands an assignment
	// without a free slot straight back, which requeues the run and claims it again under a
	// new epoch. (The runs' start and end times cannot show this: a slot is reused as soon
	// as the worker reports the result, before the result's end_time commits.)
	var reclaimed int
	require.NoError(t, pool.QueryRow(t.Context(), `SELECT count(*) FROM runs WHERE epoch <> 1`).Scan(&reclaimed))
	require.Zero(t, reclaimed, "every run was claimed exactly once: none handed back, none recovered")
}
