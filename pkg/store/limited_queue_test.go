package store_test

import (
	"fmt"
	"testing"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"
	"golang.org/x/sync/errgroup"

	"github.com/agentserver/agentserver/pkg/store"
)

// The queue rows of assistants with a concurrency limit are marked (run_queue.limited,
// migration 15) and claimed per assistant, so that a backlog held by a limit is not read
// by every claim.

func queueMarks(t *testing.T, st *store.Store, assistant string) (marked, unmarked int) {
	t.Helper()
	require.NoError(t, st.Pool().QueryRow(t.Context(), `
		SELECT count(*) FILTER (WHERE limited), count(*) FILTER (WHERE NOT limited)
		FROM run_queue WHERE assistant_id = $1`, assistant).Scan(&marked, &unmarked))
	return marked, unmarked
}

func assistantsOf(cs []*store.Claim) map[string]int {
	n := make(map[string]int)
	for _, c := range cs {
		n[c.Run.AssistantID]++
	}
	return n
}

// candidateBuffers is the number of shared buffers the limited claim's candidate scan
// touches. The scan runs twice and the second is counted: a connection's first call also
// reads the catalog to plan the function.
func candidateBuffers(t *testing.T, st *store.Store, limit int) int {
	t.Helper()
	return explainBuffers(t, st, 2, `SELECT * FROM agentserver_claim_candidates_limited('cpu', $1, NULL)`, limit)
}

// A claim reaches the runs queued behind a saturated assistant's backlog without reading
// the backlog: the pages its candidate scan touches do not grow with it.
func TestClaimPassesAHeldBacklog(t *testing.T) {
	t.Parallel()
	st := newStore(t)
	newAssistant(t, st, "held", func(a *store.Assistant) { a.ConcurrencyLimit = 2; a.Priority = 5 })
	newAssistant(t, st, "free", nil)
	enqueue(t, st, runsOf("held", 50)...)
	enqueue(t, st, runsOf("free", 3)...)
	marked, unmarked := queueMarks(t, st, "held")
	require.Equal(t, [2]int{50, 0}, [2]int{marked, unmarked}, "the limited assistant's rows are marked")

	got := claim(t, st, "w1", "cpu", 10)
	require.Equal(t, map[string]int{"held": 2, "free": 3}, assistantsOf(got),
		"the limit's allowance of the held runs (first: higher priority), then the others")
	require.Empty(t, claim(t, st, "w1", "cpu", 10), "held at its limit, nothing else queued")

	// The same claim with a backlog 100 times as long touches about as many pages.
	enqueue(t, st, runsOf("free", 3)...)
	small := candidateBuffers(t, st, 10)
	backlog := runsOf("held", 5000)
	for i := 0; i < len(backlog); i += 1000 {
		enqueue(t, st, backlog[i:i+1000]...)
	}
	large := candidateBuffers(t, st, 10)
	t.Logf("candidate scan: %d buffers behind 50 held runs, %d behind 5,050", small, large)
	require.Less(t, large, small+20,
		"candidate scan behind 5,050 held runs touched %d buffers, behind 50: %d", large, small)
	require.Equal(t, map[string]int{"free": 3}, assistantsOf(claim(t, st, "w1", "cpu", 10)))

	// A finished held run frees one place, taken in submission order.
	for _, c := range got {
		if c.Run.AssistantID == "held" {
			_, err := st.FinishRun(t.Context(), store.FinishParams{RunID: c.Run.ID, Epoch: c.Run.Epoch, Outcome: store.OutcomeSucceeded})
			require.NoError(t, err)
			break
		}
	}
	require.Equal(t, map[string]int{"held": 1}, assistantsOf(claim(t, st, "w2", "cpu", 10)))
}

// Lifting a limit moves the assistant's backlog back to the unmarked rows (the claim's
// one-statement path applies again); adding one marks the rows already queued.
func TestChangingALimitMarksTheQueuedRuns(t *testing.T) {
	t.Parallel()
	st := newStore(t)
	newAssistant(t, st, "a", nil)
	enqueue(t, st, runsOf("a", 20)...)
	marked, _ := queueMarks(t, st, "a")
	require.Zero(t, marked)

	_, err := st.UpdateAssistant(t.Context(), tenant, "a", func(a *store.Assistant) error {
		a.ConcurrencyLimit = 1
		return nil
	})
	require.NoError(t, err)
	marked, unmarked := queueMarks(t, st, "a")
	require.Equal(t, [2]int{20, 0}, [2]int{marked, unmarked})
	require.Len(t, claim(t, st, "w", "cpu", 64), 1, "the new limit holds")

	// Another change that keeps a limit leaves the marks alone.
	_, err = st.UpdateAssistant(t.Context(), tenant, "a", func(a *store.Assistant) error {
		a.ConcurrencyLimit = 3
		return nil
	})
	require.NoError(t, err)
	marked, _ = queueMarks(t, st, "a")
	require.Equal(t, 19, marked)

	before, err := st.GetAssistant(t.Context(), tenant, "a")
	require.NoError(t, err)
	lifted, err := st.UpdateAssistant(t.Context(), tenant, "a", func(a *store.Assistant) error {
		a.ConcurrencyLimit = 0
		return nil
	})
	require.NoError(t, err)
	require.True(t, lifted.UpdateTime.After(before.UpdateTime))
	marked, unmarked = queueMarks(t, st, "a")
	require.Equal(t, [2]int{0, 19}, [2]int{marked, unmarked})
	require.Len(t, claim(t, st, "w", "cpu", 64), 19)
}

// The mark only steers the plan: a row queued while a limit was being added or lifted can
// carry the old one, and such rows are still claimed, within the limit when there is one.
func TestClaimsIgnoreAStaleMark(t *testing.T) {
	t.Parallel()

	t.Run("marked, no limit", func(t *testing.T) {
		t.Parallel()
		st := newStore(t)
		newAssistant(t, st, "a", nil)
		runs := enqueue(t, st, runsOf("a", 4)...)
		// As if queued just before the limit was lifted: no assistant has a limit now,
		// yet these rows are outside run_queue_claim.
		_, err := st.Pool().Exec(t.Context(), `UPDATE run_queue SET limited = true WHERE run_id = ANY($1)`,
			[]uuid.UUID{runs[0].ID, runs[2].ID})
		require.NoError(t, err)
		got := claim(t, st, "w", "cpu", 64)
		require.Len(t, got, 4)
		require.Equal(t, runs[0].ID, got[0].Run.ID, "claim order is kept across marked and unmarked rows")
		require.Equal(t, runs[2].ID, got[2].Run.ID)
	})

	t.Run("unmarked, limited", func(t *testing.T) {
		t.Parallel()
		st := newStore(t)
		newAssistant(t, st, "a", func(a *store.Assistant) { a.ConcurrencyLimit = 2 })
		newAssistant(t, st, "b", nil)
		enqueue(t, st, runsOf("a", 5)...)
		enqueue(t, st, runsOf("b", 1)...)
		// As if queued just before the limit was added.
		_, err := st.Pool().Exec(t.Context(), `UPDATE run_queue SET limited = false WHERE assistant_id = 'a'`)
		require.NoError(t, err)
		require.Equal(t, map[string]int{"a": 2, "b": 1}, assistantsOf(claim(t, st, "w", "cpu", 64)))
		require.Empty(t, claim(t, st, "w", "cpu", 64), "the limit holds for unmarked rows")
	})
}

// Successes of limited runs end in the one-statement path too, which locks the load rows
// of their assistants in key order first: batches that end runs of two limited assistants
// in opposite orders, at once and again and again, all succeed, leave the counts exact and
// never deadlock (without the ordered locks they did, each deadlock costing
// deadlock_timeout, 1 s, before the retry).
func TestFinishRunsOfLimitedAssistantsConcurrently(t *testing.T) {
	t.Parallel()
	st := newStore(t)
	newAssistant(t, st, "a", func(a *store.Assistant) { a.ConcurrencyLimit = 100 })
	newAssistant(t, st, "b", func(a *store.Assistant) { a.ConcurrencyLimit = 100 })
	load := func() (a, b int) {
		require.NoError(t, st.Pool().QueryRow(t.Context(), `SELECT
			(SELECT running FROM assistant_load WHERE assistant_id = 'a'),
			(SELECT running FROM assistant_load WHERE assistant_id = 'b')`).Scan(&a, &b))
		return a, b
	}
	for round := range 20 {
		// Queued (and claimed, and ordered by id) a a b b b b a a: the first batch ends
		// runs 1, 2, 5, 6 (a's before b's), the second 3, 4, 7, 8 (b's before a's). A
		// batch updates its runs in id order, each update locking its assistant's row.
		enqueue(t, st, runsOf("a", 2)...)
		enqueue(t, st, runsOf("b", 4)...)
		enqueue(t, st, runsOf("a", 2)...)
		cs := claim(t, st, "w", "cpu", 8)
		require.Len(t, cs, 8)
		a, b := load()
		require.Equal(t, [2]int{4, 4}, [2]int{a, b}, "round %d: claimed", round)
		batch := func(cs ...*store.Claim) []store.FinishParams {
			var ps []store.FinishParams
			for _, c := range cs {
				ps = append(ps, store.FinishParams{RunID: c.Run.ID, Epoch: c.Run.Epoch, Outcome: store.OutcomeSucceeded})
			}
			return ps
		}
		batches := [][]store.FinishParams{
			batch(cs[0], cs[1], cs[4], cs[5]),
			batch(cs[2], cs[3], cs[6], cs[7]),
		}
		var g errgroup.Group
		for _, ps := range batches {
			g.Go(func() error {
				res, errs, err := st.FinishRuns(t.Context(), ps)
				if err != nil {
					return err
				}
				for i := range ps {
					if errs[i] != nil || res[i].State != store.StateSucceeded {
						return fmt.Errorf("run %s: %v, state %v", ps[i].RunID, errs[i], res[i].State)
					}
				}
				return nil
			})
		}
		require.NoError(t, g.Wait())
		a, b = load()
		require.Equal(t, [2]int{0, 0}, [2]int{a, b}, "round %d: finished", round)
	}
	require.Zero(t, st.DeadlocksRetried(), "transactions rolled back by a deadlock and retried")
}

// The limited claim's candidate scan locks only the rows it returns, and passes over the
// rows another claim holds: while one claim's transaction holds its candidates (3 runs of
// the limited assistant at the head, then 7 of a free one), a second claim gets the 3 free
// runs left, not the limited assistant's next 3. Migration 15's scan also locked the 3
// free runs its merge cut, so the second claim got none of them (the cause of
// TestConcurrencyLimitAcrossClaimers's flakes).
func TestLimitedClaimLocksOnlyWhatItReturns(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	st := newStore(t)
	newAssistant(t, st, "limited", func(a *store.Assistant) { a.ConcurrencyLimit = 3; a.Priority = 10 })
	newAssistant(t, st, "free", nil)
	enqueue(t, st, runsOf("limited", 40)...)
	enqueue(t, st, runsOf("free", 10)...)

	candidates := func(tx pgx.Tx) map[string]int {
		rows, err := tx.Query(ctx, `SELECT assistant_id FROM agentserver_claim_candidates_limited('cpu', 10, NULL)`)
		require.NoError(t, err)
		got, err := pgx.CollectRows(rows, pgx.RowTo[string])
		require.NoError(t, err)
		n := map[string]int{}
		for _, a := range got {
			n[a]++
		}
		return n
	}
	first, err := st.Pool().Begin(ctx)
	require.NoError(t, err)
	defer func() { _ = first.Rollback(ctx) }()
	require.Equal(t, map[string]int{"limited": 3, "free": 7}, candidates(first))
	var locked int
	require.NoError(t, st.Pool().QueryRow(ctx, `SELECT count(*) FROM run_queue WHERE run_id NOT IN
		(SELECT run_id FROM run_queue FOR UPDATE SKIP LOCKED)`).Scan(&locked))
	require.Equal(t, 10, locked, "the rows returned are locked, and no others")

	second, err := st.Pool().Begin(ctx)
	require.NoError(t, err)
	defer func() { _ = second.Rollback(ctx) }()
	require.Equal(t, map[string]int{"free": 3}, candidates(second),
		"the free runs the first claim did not take; the limited assistant's allowance is the first claim's")
}
