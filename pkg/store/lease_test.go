package store_test

import (
	"fmt"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/agentserver/agentserver/pkg/store"
)

// The schedulers' periodic looks at the runs in flight read what they look for, not every
// run in flight.

// claimUntil claims queued runs for worker w1 until running (of them held now) reaches n,
// and returns the runs this call claimed.
func claimUntil(t *testing.T, st *store.Store, n, running int) []*store.Claim {
	t.Helper()
	var out []*store.Claim
	for running < n {
		c := claim(t, st, "w1", "cpu", n-running)
		require.NotEmpty(t, c, "claimed nothing with %d of %d running", running, n)
		running += len(c)
		out = append(out, c...)
	}
	return out
}

// The schedulers look for cancel requests every second, and every 50 ms while they claim
// back to back: the look reads the requests, not the runs in flight. With 10 and with 1,000
// runs running it touches as many pages, and it finds the one request either way. (Before
// migration 24 it joined every lease to its run: 2 pages with 10 running, 56 with 1,000.)
func TestCancelRequestsReadOnlyTheRequests(t *testing.T) {
	t.Parallel()
	st := benchStore(t)
	ctx := t.Context()
	fillQueue(t, st, 1)
	_, err := st.CancelRun(ctx, store.DefaultTenant, claimUntil(t, st, 1, 0)[0].Run.ID)
	require.NoError(t, err)
	pages := map[int]int{}
	running := 1
	for _, n := range []int{10, 1000} {
		fillQueue(t, st, n-running)
		claimUntil(t, st, n, running)
		running = n
		_, err := st.Pool().Exec(ctx, `ANALYZE run_leases`)
		require.NoError(t, err)
		reqs, err := st.CancelRequests(ctx, []string{"w1", "w2"})
		require.NoError(t, err)
		require.Len(t, reqs["w1"], 1, "the one request, with %d running", n)
		require.Empty(t, reqs["w2"])
		pages[n] = explainBuffers(t, st, 1, store.CancelRequestsStatement, []string{"w1"})
	}
	require.LessOrEqual(t, pages[1000], pages[10]+1, "pages touched with 10 and 1,000 running: %v", pages)
}

// Recovery, which every scheduler runs every second, finds the runs due on their leases
// alone and reads runs only for those: with 100 and with 1,000 runs running, beside 19,000
// queued, it touches a few dozen pages (3 and 26; a lease page holds dozens of leases).
// Joining every lease to its run to compute the run's deadline (before migration 25)
// touched 303 and 1,078.
func TestRecoverReadsTheRunsDueOnly(t *testing.T) {
	t.Parallel()
	st := benchStore(t)
	ctx := t.Context()
	fillQueue(t, st, 20000)
	pages := map[int]int{}
	running := 0
	for _, n := range []int{100, 1000} {
		claimUntil(t, st, n, running)
		running = n
		_, err := st.Pool().Exec(ctx, `ANALYZE run_leases, runs`)
		require.NoError(t, err)
		pages[n] = explainBuffers(t, st, 1, store.RecoverStatement, 1000, int64(1000))
	}
	require.Less(t, pages[1000], 100, "pages touched with 100 and 1,000 running: %v", pages)
	rec, err := st.RecoverRuns(ctx, store.RecoverParams{Batch: 1000, TimeoutGrace: time.Second})
	require.NoError(t, err)
	require.Equal(t, store.RecoverResult{}, rec, "nothing is due")
}

// ReconcileLoad (every 30 s in every scheduler) recounts the runs running of each limited
// assistant in one pass over the leases: 20 limited assistants with 50 runs running each,
// and one with none, touch about as many pages as the leases fill (86, for 28 of leases; a
// count per assistant read all of run_leases 21 times: 638). Counts that drifted are put
// right, to 0 where nothing runs.
func TestReconcileLoadCountsInOnePass(t *testing.T) {
	t.Parallel()
	st := benchStore(t)
	ctx := t.Context()
	newAssistant(t, st, "idle", func(a *store.Assistant) { a.ConcurrencyLimit = 100 })
	for i := range 20 {
		id := fmt.Sprintf("limited-%02d", i)
		newAssistant(t, st, id, func(a *store.Assistant) { a.ConcurrencyLimit = 100 })
		fillQueueOf(t, st, id, 50)
	}
	claimUntil(t, st, 1000, 0)
	_, err := st.Pool().Exec(ctx, `UPDATE assistant_load SET running = 7; ANALYZE run_leases, assistant_load`)
	require.NoError(t, err)
	pages := explainBuffers(t, st, 1, store.ReconcileLoadStatement)
	leasePages := explainBuffers(t, st, 1, `SELECT count(*) FROM run_leases`)
	require.Less(t, pages, 2*leasePages+100, "pages touched by the count: %d, by a scan of the leases: %d", pages, leasePages)

	require.NoError(t, st.ReconcileLoad(ctx))
	var counts map[string]int
	require.NoError(t, st.Pool().QueryRow(ctx, `SELECT jsonb_object_agg(assistant_id, running) FROM assistant_load`).Scan(&counts))
	require.Len(t, counts, 21)
	for id, n := range counts {
		want := 50
		if id == "idle" {
			want = 0
		}
		require.Equal(t, want, n, "running runs of %s", id)
	}
}
