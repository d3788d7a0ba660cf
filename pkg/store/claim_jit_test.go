package store_test

import (
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/agentserver/agentserver/pkg/pgtest"
	"github.com/agentserver/agentserver/pkg/store"
)

// A claim never JIT-compiles its candidate scan, however deep the queue. The claim runs
// on the hot pool, whose generic plans price the scan's LIMIT as a tenth of the queue:
// above jit_above_cost from ~120,000 queued runs, where the compilation cost 9–13 ms per
// claim (185 ms at 1,000,000) until migration 16. A backend that has compiled anything
// has LLVM's JIT provider mapped, which is what this test looks for; the control shows
// that such a backend is seen.
func TestClaimsOfADeepQueueAreNotCompiled(t *testing.T) {
	// The backends must be processes of this machine, whose memory maps can be read: the
	// test binary's own server (skipped with an external one).
	pgtest.Server(t)
	st := benchStore(t)
	ctx := t.Context()
	pool := st.Pool()
	var available bool
	require.NoError(t, pool.QueryRow(ctx, `SELECT pg_jit_available()`).Scan(&available))
	if !available {
		t.Skip("this PostgreSQL has no JIT provider (llvmjit): nothing can be compiled")
	}
	mapsOf := func(pid int) (string, error) {
		maps, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/maps")
		return string(maps), err
	}
	jitted := func(pid int) bool {
		t.Helper()
		maps, err := mapsOf(pid)
		require.NoError(t, err, "reading the memory map of backend %d", pid)
		return strings.Contains(maps, "llvmjit")
	}

	// Control: a backend made to compile a query has the provider mapped.
	conn, err := pool.Acquire(ctx)
	require.NoError(t, err)
	var control int
	_, err = conn.Exec(ctx, `SET jit_above_cost = 0`)
	require.NoError(t, err)
	var sum int64
	require.NoError(t, conn.QueryRow(ctx, `SELECT sum(g) FROM generate_series(1, 10) g`).Scan(&sum))
	require.NoError(t, conn.QueryRow(ctx, `SELECT pg_backend_pid()`).Scan(&control))
	_, err = conn.Exec(ctx, `RESET jit_above_cost`)
	require.NoError(t, err)
	conn.Release()
	if _, err := mapsOf(control); err != nil {
		t.Skipf("cannot read a backend's memory map here (%v): nothing to look at", err)
	}
	require.True(t, jitted(control), "control: a backend that compiled a query maps llvmjit")

	fillQueue(t, st, 200_000)
	for range 5 {
		claims, err := st.ClaimRuns(ctx, store.ClaimParams{WorkerID: "w1", SlotType: "cpu", Limit: 32, LeaseTTL: time.Minute})
		require.NoError(t, err)
		require.Len(t, claims, 32)
	}
	// The backends whose last statement was a claim (others, such as the one that filled
	// the queue, may compile what they like).
	rows, err := pool.Query(ctx, `SELECT pid FROM pg_stat_activity
		WHERE datname = current_database() AND pid <> pg_backend_pid()
			AND query LIKE '%agentserver_claim_candidates(%'`)
	require.NoError(t, err)
	var backends []int
	for rows.Next() {
		var pid int
		require.NoError(t, rows.Scan(&pid))
		backends = append(backends, pid)
	}
	require.NoError(t, rows.Err())
	require.NotEmpty(t, backends, "the claims' backends")
	for _, pid := range backends {
		require.False(t, jitted(pid), "backend %d compiled a statement", pid)
	}
}
