package store_test

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"
	"golang.org/x/sync/errgroup"

	"github.com/agentserver/agentserver/pkg/pgtest"
	"github.com/agentserver/agentserver/pkg/store"
)

func TestMain(m *testing.M) { pgtest.Main(m) }

const tenant = store.DefaultTenant

var defaults = store.RunDefaults{MaxAttempts: 1, Timeout: time.Hour, MaxTimeout: 24 * time.Hour}

const echoFlow = "executors:\n  - name: echo\n    command: [\"true\"]\n"

func newStore(t *testing.T) *store.Store {
	t.Helper()
	st, _ := newStoreAt(t)
	return st
}

// newStoreAt is newStore, with its database's URL, opened with opts.
func newStoreAt(t *testing.T, opts ...store.OpenOption) (*store.Store, string) {
	t.Helper()
	url := pgtest.NewDatabase(t)
	require.NoError(t, store.Migrate(t.Context(), url))
	st, err := store.Open(t.Context(), url, opts...)
	require.NoError(t, err)
	t.Cleanup(st.Close)
	return st, url
}

func newAssistant(t *testing.T, st *store.Store, id string, mod func(*store.Assistant)) *store.Assistant {
	t.Helper()
	a := &store.Assistant{TenantID: tenant, ID: id, Flow: echoFlow, SlotType: "cpu"}
	if mod != nil {
		mod(a)
	}
	out, err := st.CreateAssistant(t.Context(), a)
	require.NoError(t, err)
	return out
}

func enqueue(t *testing.T, st *store.Store, runs ...store.NewRun) []*store.Run {
	t.Helper()
	out, err := st.CreateRuns(t.Context(), tenant, runs, defaults)
	require.NoError(t, err)
	return out
}

func claim(t *testing.T, st *store.Store, worker, slotType string, n int) []*store.Claim {
	t.Helper()
	c, err := st.ClaimRuns(t.Context(), store.ClaimParams{WorkerID: worker, SlotType: slotType, Limit: n, LeaseTTL: time.Minute})
	require.NoError(t, err)
	return c
}

func prio(p int32) *int32 { return &p }

func TestMigrateTwiceConcurrently(t *testing.T) {
	t.Parallel()
	url := pgtest.NewDatabase(t)
	var g errgroup.Group
	for range 4 {
		g.Go(func() error { return store.Migrate(t.Context(), url) })
	}
	require.NoError(t, g.Wait())
}

func TestClaimOrderPriorityThenSubmission(t *testing.T) {
	t.Parallel()
	st := newStore(t)
	newAssistant(t, st, "a", nil)
	var want []uuid.UUID
	low := enqueue(t, st, store.NewRun{AssistantID: "a", Priority: prio(0)}, store.NewRun{AssistantID: "a", Priority: prio(0)})
	high := enqueue(t, st, store.NewRun{AssistantID: "a", Priority: prio(5)})
	mid := enqueue(t, st, store.NewRun{AssistantID: "a", Priority: prio(1)}, store.NewRun{AssistantID: "a", Priority: prio(1)})
	want = append(want, high[0].ID, mid[0].ID, mid[1].ID, low[0].ID, low[1].ID)

	var got []uuid.UUID
	for _, n := range []int{2, 2, 2} {
		for _, c := range claim(t, st, "w1", "cpu", n) {
			got = append(got, c.Run.ID)
			require.Equal(t, store.StateRunning, c.Run.State)
			require.Equal(t, "w1", c.Run.WorkerID)
			require.Equal(t, echoFlow, c.Flow)
		}
	}
	require.Equal(t, want, got)
	require.Empty(t, claim(t, st, "w1", "cpu", 5), "queue is empty")
}

func TestClaimOnlyMatchingSlotType(t *testing.T) {
	t.Parallel()
	st := newStore(t)
	newAssistant(t, st, "cpu-agent", nil)
	newAssistant(t, st, "gpu-agent", func(a *store.Assistant) { a.SlotType = "gpu" })
	enqueue(t, st, store.NewRun{AssistantID: "gpu-agent"}, store.NewRun{AssistantID: "cpu-agent"})
	c := claim(t, st, "w", "cpu", 10)
	require.Len(t, c, 1)
	require.Equal(t, "cpu-agent", c[0].Run.AssistantID)
	c = claim(t, st, "w", "gpu", 10)
	require.Len(t, c, 1)
	require.Equal(t, "gpu", c[0].Run.SlotType)
}

// Many claimers at once never get the same run, and together they get them all.
func TestConcurrentClaimsNeverShareARun(t *testing.T) {
	t.Parallel()
	st := newStore(t)
	newAssistant(t, st, "a", nil)
	const total = 600
	batch := make([]store.NewRun, total)
	for i := range batch {
		batch[i] = store.NewRun{AssistantID: "a"}
	}
	enqueue(t, st, batch...)

	var mu sync.Mutex
	owner := make(map[uuid.UUID]string)
	var g errgroup.Group
	for w := range 8 {
		worker := fmt.Sprintf("w%d", w)
		g.Go(func() error {
			for {
				cs, err := st.ClaimRuns(t.Context(), store.ClaimParams{WorkerID: worker, SlotType: "cpu", Limit: 7, LeaseTTL: time.Minute})
				if err != nil {
					return err
				}
				if len(cs) == 0 {
					return nil
				}
				mu.Lock()
				for _, c := range cs {
					if prev, dup := owner[c.Run.ID]; dup {
						mu.Unlock()
						return fmt.Errorf("run %s claimed by %s and %s", c.Run.ID, prev, worker)
					}
					owner[c.Run.ID] = worker
				}
				mu.Unlock()
			}
		})
	}
	require.NoError(t, g.Wait())
	require.Len(t, owner, total)
}

// The concurrency limit holds with many concurrent claimers, and frees up as runs end.
func TestConcurrencyLimitAcrossClaimers(t *testing.T) {
	t.Parallel()
	st := newStore(t)
	newAssistant(t, st, "limited", func(a *store.Assistant) { a.ConcurrencyLimit = 3 })
	newAssistant(t, st, "free", nil)
	var batch []store.NewRun
	for range 40 {
		batch = append(batch, store.NewRun{AssistantID: "limited", Priority: prio(10)})
	}
	for range 10 {
		batch = append(batch, store.NewRun{AssistantID: "free"})
	}
	enqueue(t, st, batch...)

	var mu sync.Mutex
	var claimed []*store.Claim
	var g errgroup.Group
	for w := range 6 {
		g.Go(func() error {
			cs, err := st.ClaimRuns(t.Context(), store.ClaimParams{WorkerID: fmt.Sprintf("w%d", w), SlotType: "cpu", Limit: 10, LeaseTTL: time.Minute})
			mu.Lock()
			claimed = append(claimed, cs...)
			mu.Unlock()
			return err
		})
	}
	require.NoError(t, g.Wait())
	byAssistant := map[string]int{}
	for _, c := range claimed {
		byAssistant[c.Run.AssistantID]++
	}
	require.Equal(t, 3, byAssistant["limited"], "never more than the limit running")
	// A saturated assistant at the head of the queue does not starve the others.
	require.Equal(t, 10, byAssistant["free"])

	// Finishing one limited run admits exactly one more.
	var first *store.Claim
	for _, c := range claimed {
		if c.Run.AssistantID == "limited" {
			first = c
			break
		}
	}
	_, err := st.FinishRun(t.Context(), store.FinishParams{RunID: first.Run.ID, Epoch: first.Run.Epoch, Outcome: store.OutcomeSucceeded, State: map[string]any{}})
	require.NoError(t, err)
	more := claim(t, st, "w9", "cpu", 10)
	require.Len(t, more, 1)
	require.Equal(t, "limited", more[0].Run.AssistantID)
}

// A claim while limits exist is one statement after the fast path's two (which find that
// limits exist): candidates, the admission — the load rows of all their limited
// assistants locked at once — and the claim. It was a transaction with a lock statement
// per limited assistant: claiming the runs of four took three statements more than one's.
// Each assistant's limit still holds.
func TestClaimAmongLimitedAssistantsIsOneStatement(t *testing.T) {
	t.Parallel()
	statements := &countQueries{}
	st, _ := newStoreAt(t, store.WithQueryTracer(statements))
	claimOf := func(assistants ...string) (int64, []*store.Claim) {
		t.Helper()
		var batch []store.NewRun
		for _, a := range assistants {
			newAssistant(t, st, a, func(a *store.Assistant) { a.ConcurrencyLimit = 2 })
			for range 3 {
				batch = append(batch, store.NewRun{AssistantID: a})
			}
		}
		enqueue(t, st, batch...)
		before := statements.n.Load()
		cs := claim(t, st, "w", "cpu", 100)
		return statements.n.Load() - before, cs
	}
	require.Empty(t, claim(t, st, "w", "cpu", 1), "nothing queued yet (opens the claim's connection)")
	one, cs := claimOf("x")
	require.Len(t, cs, 2, "the limit")
	require.Equal(t, int64(3), one, "the fast path's claim and its look for limits, then the limited claim")
	four, cs := claimOf("y1", "y2", "y3", "y4")
	require.Equal(t, one, four, "statements of a claim among one limited assistant and among four")
	byAssistant := map[string]int{}
	for _, c := range cs {
		byAssistant[c.Run.AssistantID]++
	}
	require.Equal(t, map[string]int{"y1": 2, "y2": 2, "y3": 2, "y4": 2}, byAssistant, "each at its limit")
}

// A worker whose lease was taken over cannot write: results, checkpoints and events
// carrying the old epoch are refused.
func TestFencingRefusesStaleEpoch(t *testing.T) {
	t.Parallel()
	st := newStore(t)
	newAssistant(t, st, "a", nil)
	run := enqueue(t, st, store.NewRun{AssistantID: "a", Input: map[string]any{"n": 1.0}})[0]
	first := claim(t, st, "old", "cpu", 1)[0]
	require.NoError(t, st.Checkpoint(t.Context(), run.ID, first.Run.Epoch, "b", map[string]any{"step": "a"}))

	// The old worker's lease expires; the run is requeued and claimed again.
	_, err := st.Pool().Exec(t.Context(), `UPDATE run_leases SET expire_time = now() - interval '1 second' WHERE run_id = $1`, run.ID)
	require.NoError(t, err)
	rec, err := st.RecoverRuns(t.Context(), store.RecoverParams{Batch: 100, TimeoutGrace: time.Minute})
	require.NoError(t, err)
	require.Equal(t, 1, rec.Requeued)
	second := claim(t, st, "new", "cpu", 1)[0]
	require.Greater(t, second.Run.Epoch, first.Run.Epoch)
	require.Equal(t, map[string]any{"step": "a"}, second.State, "resumes from the checkpoint")
	require.Equal(t, "b", second.Step)
	require.EqualValues(t, 1, second.Run.Attempt, "a lost worker does not use an attempt")

	_, err = st.FinishRun(t.Context(), store.FinishParams{RunID: run.ID, Epoch: first.Run.Epoch, Outcome: store.OutcomeSucceeded, State: map[string]any{"by": "old"}})
	require.ErrorIs(t, err, store.ErrStaleEpoch)
	require.ErrorIs(t, st.Checkpoint(t.Context(), run.ID, first.Run.Epoch, "", map[string]any{"by": "old"}), store.ErrStaleEpoch)
	require.ErrorIs(t, st.AppendRunEvent(t.Context(), run.ID, first.Run.Epoch, "x", nil), store.ErrStaleEpoch)

	_, err = st.FinishRun(t.Context(), store.FinishParams{RunID: run.ID, Epoch: second.Run.Epoch, Outcome: store.OutcomeSucceeded, State: map[string]any{"by": "new"}})
	require.NoError(t, err)
	got, err := st.GetRun(t.Context(), tenant, run.ID)
	require.NoError(t, err)
	require.Equal(t, store.StateSucceeded, got.State)
	require.Equal(t, map[string]any{"by": "new"}, got.Output)
	// A second result for the same claim is refused too: a run completes once.
	_, err = st.FinishRun(t.Context(), store.FinishParams{RunID: run.ID, Epoch: second.Run.Epoch, Outcome: store.OutcomeFailed})
	require.ErrorIs(t, err, store.ErrStaleEpoch)
}

func TestRetryWithBackoffThenFail(t *testing.T) {
	t.Parallel()
	st := newStore(t)
	newAssistant(t, st, "a", func(a *store.Assistant) { a.MaxAttempts = 2 })
	run := enqueue(t, st, store.NewRun{AssistantID: "a"})[0]
	require.EqualValues(t, 2, run.MaxAttempts)
	c := claim(t, st, "w", "cpu", 1)[0]
	res, err := st.FinishRun(t.Context(), store.FinishParams{RunID: run.ID, Epoch: c.Run.Epoch, Outcome: store.OutcomeFailed, Error: "boom", Retryable: true, RetryDelay: time.Hour})
	require.NoError(t, err)
	require.True(t, res.Retried)
	got, err := st.GetRun(t.Context(), tenant, run.ID)
	require.NoError(t, err)
	require.Equal(t, store.StateQueued, got.State)
	require.EqualValues(t, 2, got.Attempt)
	require.NotNil(t, got.NextAttemptTime)
	require.WithinDuration(t, time.Now().Add(time.Hour), *got.NextAttemptTime, time.Minute)
	require.Empty(t, claim(t, st, "w", "cpu", 1), "not before its backoff")

	_, err = st.Pool().Exec(t.Context(), `UPDATE run_queue SET available_time = now() WHERE run_id = $1`, run.ID)
	require.NoError(t, err)
	c = claim(t, st, "w", "cpu", 1)[0]
	require.EqualValues(t, 2, c.Run.Attempt)
	res, err = st.FinishRun(t.Context(), store.FinishParams{RunID: run.ID, Epoch: c.Run.Epoch, Outcome: store.OutcomeFailed, Error: "boom again", Retryable: true})
	require.NoError(t, err)
	require.False(t, res.Retried, "attempts exhausted")
	got, err = st.GetRun(t.Context(), tenant, run.ID)
	require.NoError(t, err)
	require.Equal(t, store.StateFailed, got.State)
	require.Equal(t, "boom again", got.Error)
}

func TestNonRetryableFailureEndsAtOnce(t *testing.T) {
	t.Parallel()
	st := newStore(t)
	newAssistant(t, st, "a", func(a *store.Assistant) { a.MaxAttempts = 5 })
	run := enqueue(t, st, store.NewRun{AssistantID: "a"})[0]
	c := claim(t, st, "w", "cpu", 1)[0]
	res, err := st.FinishRun(t.Context(), store.FinishParams{RunID: run.ID, Epoch: c.Run.Epoch, Outcome: store.OutcomeFailed, Error: "bad input"})
	require.NoError(t, err)
	require.Equal(t, store.StateFailed, res.State)
}

func TestIdempotentCreate(t *testing.T) {
	t.Parallel()
	st := newStore(t)
	newAssistant(t, st, "a", nil)
	first := enqueue(t, st, store.NewRun{AssistantID: "a", RequestID: "req-1"})[0]
	again := enqueue(t, st, store.NewRun{AssistantID: "a", RequestID: "req-1"}, store.NewRun{AssistantID: "a", RequestID: "req-2"})
	require.Equal(t, first.ID, again[0].ID)
	require.NotEqual(t, first.ID, again[1].ID)
	require.Len(t, claim(t, st, "w", "cpu", 10), 2, "the repeated request was not enqueued twice")
}

func TestCreateWithUnknownAssistantWritesNothing(t *testing.T) {
	t.Parallel()
	st := newStore(t)
	newAssistant(t, st, "a", nil)
	_, err := st.CreateRuns(t.Context(), tenant, []store.NewRun{{AssistantID: "a"}, {AssistantID: "ghost"}}, defaults)
	var nf *store.AssistantNotFoundError
	require.ErrorAs(t, err, &nf)
	require.Equal(t, "ghost", nf.ID)
	runs, err := st.ListRuns(t.Context(), tenant, store.RunFilter{}, 10, nil)
	require.NoError(t, err)
	require.Empty(t, runs)
}

// GetRuns reads every run asked for in one call, as GetRun reads one: the same values,
// keyed by tenant and id; an unknown id, or a run asked for under another tenant, is
// absent; a run asked for twice is read once.
func TestGetRunsReadsTheRunsAskedFor(t *testing.T) {
	t.Parallel()
	st := newStore(t)
	newAssistant(t, st, "a", nil)
	runs := enqueue(t, st, store.NewRun{AssistantID: "a", Input: map[string]any{"n": 1.0}},
		store.NewRun{AssistantID: "a", Input: map[string]any{"n": 2.0}}, store.NewRun{AssistantID: "a"})
	_, err := st.CancelRun(t.Context(), tenant, runs[1].ID)
	require.NoError(t, err)
	ghost := uuid.New()
	keys := []store.RunKey{{Tenant: tenant, ID: runs[0].ID}, {Tenant: tenant, ID: runs[1].ID},
		{Tenant: tenant, ID: runs[0].ID}, {Tenant: tenant, ID: ghost}, {Tenant: "other", ID: runs[2].ID}}
	got, err := st.GetRuns(t.Context(), keys)
	require.NoError(t, err)
	require.Len(t, got, 2)
	for _, r := range runs[:2] {
		one, err := st.GetRun(t.Context(), tenant, r.ID)
		require.NoError(t, err)
		require.Equal(t, one, got[store.RunKey{Tenant: tenant, ID: r.ID}])
	}
	require.Equal(t, store.StateCancelled, got[store.RunKey{Tenant: tenant, ID: runs[1].ID}].State)
	require.Equal(t, 2.0, got[store.RunKey{Tenant: tenant, ID: runs[1].ID}].Input["n"])
	require.NotContains(t, got, store.RunKey{Tenant: tenant, ID: ghost})
	require.NotContains(t, got, store.RunKey{Tenant: "other", ID: runs[2].ID}, "another tenant's run")

	none, err := st.GetRuns(t.Context(), nil)
	require.NoError(t, err)
	require.Empty(t, none)

	// Each key alone (a lone waiter's batch): the same answers as GetRun's.
	for _, k := range keys {
		got, err := st.GetRuns(t.Context(), []store.RunKey{k})
		require.NoError(t, err)
		if one, err := st.GetRun(t.Context(), k.Tenant, k.ID); errors.Is(err, store.ErrNotFound) {
			require.Empty(t, got, "run %v", k)
		} else {
			require.NoError(t, err)
			require.Equal(t, map[store.RunKey]*store.Run{k: one}, got)
		}
	}
}

func TestCancel(t *testing.T) {
	t.Parallel()
	st := newStore(t)
	newAssistant(t, st, "a", nil)
	runs := enqueue(t, st, store.NewRun{AssistantID: "a"}, store.NewRun{AssistantID: "a"})
	queued, running := runs[1], runs[0]
	c := claim(t, st, "w", "cpu", 1)[0]
	require.Equal(t, running.ID, c.Run.ID)

	got, err := st.CancelRun(t.Context(), tenant, queued.ID)
	require.NoError(t, err)
	require.Equal(t, store.StateCancelled, got.State)
	require.Empty(t, claim(t, st, "w", "cpu", 1), "a cancelled run leaves the queue")

	got, err = st.CancelRun(t.Context(), tenant, running.ID)
	require.NoError(t, err)
	require.Equal(t, store.StateRunning, got.State)
	require.True(t, got.CancelRequested)
	reqs, err := st.CancelRequests(t.Context(), []string{"w"})
	require.NoError(t, err)
	require.Equal(t, []store.Lease{{RunID: running.ID, Epoch: c.Run.Epoch}}, reqs["w"])
	// The worker stops it and reports; even a "failed" report ends CANCELLED.
	_, err = st.FinishRun(t.Context(), store.FinishParams{RunID: running.ID, Epoch: c.Run.Epoch, Outcome: store.OutcomeFailed, Error: "killed", Retryable: true})
	require.NoError(t, err)
	got, err = st.CancelRun(t.Context(), tenant, running.ID)
	require.NoError(t, err, "cancel is idempotent")
	require.Equal(t, store.StateCancelled, got.State)

	_, err = st.CancelRun(t.Context(), tenant, uuid.New())
	require.ErrorIs(t, err, store.ErrNotFound)
}

func TestRecoverTimesOutOverdueRuns(t *testing.T) {
	t.Parallel()
	st := newStore(t)
	newAssistant(t, st, "a", func(a *store.Assistant) { a.Timeout = time.Second })
	run := enqueue(t, st, store.NewRun{AssistantID: "a"})[0]
	c := claim(t, st, "w", "cpu", 1)[0]
	// Claimed a minute ago, as the claim writes it: the run's claim time and its lease's
	// deadline (claim time + timeout, migration 25).
	_, err := st.Pool().Exec(t.Context(), `WITH r AS (UPDATE runs SET claim_time = now() - interval '1 minute' WHERE id = $1)
		UPDATE run_leases SET deadline_time = now() - interval '1 minute' + interval '1 second' WHERE run_id = $1`, run.ID)
	require.NoError(t, err)
	rec, err := st.RecoverRuns(t.Context(), store.RecoverParams{Batch: 10, TimeoutGrace: time.Second})
	require.NoError(t, err)
	require.Equal(t, 1, rec.TimedOut)
	require.Equal(t, []store.Lease{{RunID: run.ID, Epoch: c.Run.Epoch}}, rec.Stopped, "its live worker must be told to stop")
	got, err := st.GetRun(t.Context(), tenant, run.ID)
	require.NoError(t, err)
	require.Equal(t, store.StateTimedOut, got.State)
	require.Contains(t, got.Error, "timeout")
}

func TestListRunsPaginatesAndFilters(t *testing.T) {
	t.Parallel()
	st := newStore(t)
	newAssistant(t, st, "a", nil)
	newAssistant(t, st, "b", nil)
	for range 5 {
		enqueue(t, st, store.NewRun{AssistantID: "a"}, store.NewRun{AssistantID: "b"})
	}
	var all []*store.Run
	var after *store.RunCursor
	for {
		page, err := st.ListRuns(t.Context(), tenant, store.RunFilter{AssistantID: "a"}, 2, after)
		require.NoError(t, err)
		all = append(all, page...)
		if len(page) < 2 {
			break
		}
		last := page[len(page)-1]
		after = &store.RunCursor{CreateTime: last.CreateTime, ID: last.ID}
	}
	require.Len(t, all, 5)
	for i, r := range all {
		require.Equal(t, "a", r.AssistantID)
		if i > 0 {
			require.False(t, r.CreateTime.After(all[i-1].CreateTime), "newest first")
		}
	}
	queued, err := st.ListRuns(t.Context(), tenant, store.RunFilter{State: store.StateQueued}, 100, nil)
	require.NoError(t, err)
	require.Len(t, queued, 10)
}

func TestAssistantVersions(t *testing.T) {
	t.Parallel()
	st := newStore(t)
	newAssistant(t, st, "a", nil)
	run1 := enqueue(t, st, store.NewRun{AssistantID: "a"})[0]
	const flow2 = "executors:\n  - name: v2\n    command: [\"true\"]\n"
	a, err := st.UpdateAssistant(t.Context(), tenant, "a", func(a *store.Assistant) error { a.Flow = flow2; return nil })
	require.NoError(t, err)
	require.EqualValues(t, 2, a.Version)
	run2 := enqueue(t, st, store.NewRun{AssistantID: "a"})[0]
	require.EqualValues(t, 1, run1.AssistantVersion)
	require.EqualValues(t, 2, run2.AssistantVersion)
	cs := claim(t, st, "w", "cpu", 2)
	require.Equal(t, echoFlow, cs[0].Flow, "a queued run keeps the flow it was created with")
	require.Equal(t, flow2, cs[1].Flow)

	_, err = st.CreateAssistant(t.Context(), &store.Assistant{TenantID: tenant, ID: "a", Flow: echoFlow, SlotType: "cpu"})
	require.ErrorIs(t, err, store.ErrAlreadyExists)
	require.NoError(t, st.DeleteAssistant(t.Context(), tenant, "a"))
	require.ErrorIs(t, st.DeleteAssistant(t.Context(), tenant, "a"), store.ErrNotFound)
	_, err = st.GetAssistant(t.Context(), tenant, "a")
	require.ErrorIs(t, err, store.ErrNotFound)
}

func TestClusterStats(t *testing.T) {
	t.Parallel()
	st := newStore(t)
	newAssistant(t, st, "a", nil)
	newAssistant(t, st, "g", func(a *store.Assistant) { a.SlotType = "gpu" })
	enqueue(t, st, store.NewRun{AssistantID: "a"}, store.NewRun{AssistantID: "a"}, store.NewRun{AssistantID: "a"}, store.NewRun{AssistantID: "g"})
	claim(t, st, "w1", "cpu", 1)
	for _, w := range []*store.Worker{
		{ID: "w1", Pool: "cpu", State: store.WorkerReady, Slots: []store.SlotCount{{Type: "cpu", Total: 4, Used: 1}}},
		{ID: "w2", Pool: "cpu", State: store.WorkerDraining, Slots: []store.SlotCount{{Type: "cpu", Total: 4, Used: 2}}},
		{ID: "w3", Pool: "gpu", State: store.WorkerReady, Slots: []store.SlotCount{{Type: "cpu", Total: 2}, {Type: "gpu", Total: 1}}},
		{ID: "w4", Pool: "cpu", State: store.WorkerLost, Slots: []store.SlotCount{{Type: "cpu", Total: 4}}},
	} {
		w.ConnectTime = time.Now()
		require.NoError(t, st.UpsertWorker(t.Context(), w))
	}
	types, pools, err := st.ClusterStats(t.Context())
	require.NoError(t, err)
	require.Equal(t, []store.SlotTypeStats{{SlotType: "cpu", Queued: 2, Running: 1}, {SlotType: "gpu", Queued: 1}}, types)
	require.Equal(t, []store.PoolStats{
		{Pool: "cpu", WorkersReady: 1, WorkersDraining: 1, Slots: []store.SlotCount{{Type: "cpu", Total: 8, Used: 3}}},
		{Pool: "gpu", WorkersReady: 1, Slots: []store.SlotCount{{Type: "cpu", Total: 2}, {Type: "gpu", Total: 1}}},
	}, pools)
}

func TestClaimByFreeGPUMemory(t *testing.T) {
	t.Parallel()
	st := newStore(t)
	newAssistant(t, st, "big", func(a *store.Assistant) { a.SlotType = "gpu"; a.GPUMemoryBytes = 40 << 30 })
	newAssistant(t, st, "small", func(a *store.Assistant) { a.SlotType = "gpu"; a.GPUMemoryBytes = 8 << 30 })
	big := enqueue(t, st, store.NewRun{AssistantID: "big", Priority: prio(9)})[0]
	small := enqueue(t, st, store.NewRun{AssistantID: "small"})[0]
	free := int64(16 << 30)
	cs, err := st.ClaimRuns(t.Context(), store.ClaimParams{WorkerID: "w", SlotType: "gpu", Limit: 1, LeaseTTL: time.Minute, MaxGPUMemory: &free})
	require.NoError(t, err)
	require.Len(t, cs, 1)
	require.Equal(t, small.ID, cs[0].Run.ID, "the big run does not fit a GPU with 16Gi free; the small one does")
	free = 80 << 30
	cs, err = st.ClaimRuns(t.Context(), store.ClaimParams{WorkerID: "w", SlotType: "gpu", Limit: 1, LeaseTTL: time.Minute, MaxGPUMemory: &free})
	require.NoError(t, err)
	require.Equal(t, big.ID, cs[0].Run.ID)
}

func TestAppendRunEventsFencesEachRun(t *testing.T) {
	t.Parallel()
	st := newStore(t)
	newAssistant(t, st, "a", nil)
	runs := enqueue(t, st, store.NewRun{AssistantID: "a"}, store.NewRun{AssistantID: "a"})
	cs := claim(t, st, "w", "cpu", 2)
	refused, err := st.AppendRunEvents(t.Context(), []store.EventParams{
		{RunID: cs[0].Run.ID, Epoch: cs[0].Run.Epoch, Type: "x", Data: map[string]any{"n": 1.0}},
		{RunID: cs[1].Run.ID, Epoch: cs[1].Run.Epoch - 1, Type: "x", Data: map[string]any{"n": 2.0}},
		{RunID: cs[0].Run.ID, Epoch: cs[0].Run.Epoch, Type: "x", Data: map[string]any{"n": 3.0}},
	})
	require.NoError(t, err)
	require.Equal(t, []store.Lease{{RunID: cs[1].Run.ID, Epoch: cs[1].Run.Epoch - 1}}, refused)
	evs, err := st.ListRunEvents(t.Context(), tenant, cs[0].Run.ID, 0, 100)
	require.NoError(t, err)
	var ns []any
	for _, e := range evs {
		if e.Type == "x" {
			ns = append(ns, e.Data["n"])
		}
	}
	require.Equal(t, []any{1.0, 3.0}, ns, "in order")
	_ = runs
}

func TestFinishRunsInOneBatch(t *testing.T) {
	t.Parallel()
	st := newStore(t)
	newAssistant(t, st, "a", func(a *store.Assistant) { a.MaxAttempts = 2; a.ConcurrencyLimit = 5 })
	enqueue(t, st, store.NewRun{AssistantID: "a"}, store.NewRun{AssistantID: "a"}, store.NewRun{AssistantID: "a"})
	cs := claim(t, st, "w", "cpu", 3)
	res, errs, err := st.FinishRuns(t.Context(), []store.FinishParams{
		{RunID: cs[0].Run.ID, Epoch: cs[0].Run.Epoch, Outcome: store.OutcomeSucceeded, State: map[string]any{"ok": true}},
		{RunID: cs[1].Run.ID, Epoch: cs[1].Run.Epoch + 5, Outcome: store.OutcomeSucceeded},
		{RunID: cs[2].Run.ID, Epoch: cs[2].Run.Epoch, Outcome: store.OutcomeFailed, Retryable: true, Error: "flaky"},
	})
	require.NoError(t, err)
	require.NoError(t, errs[0])
	require.ErrorIs(t, errs[1], store.ErrStaleEpoch)
	require.NoError(t, errs[2])
	require.Equal(t, store.StateSucceeded, res[0].State)
	require.True(t, res[2].Retried)
	var running int
	require.NoError(t, st.Pool().QueryRow(t.Context(), `SELECT running FROM assistant_load WHERE assistant_id = 'a'`).Scan(&running))
	require.Equal(t, 1, running, "the load counter follows the batch: only the stale one still runs")
}

// countQueries counts the queries of a store (store.WithQueryTracer).
type countQueries struct{ n atomic.Int64 }

func (c *countQueries) TraceQueryStart(ctx context.Context, _ *pgx.Conn, _ pgx.TraceQueryStartData) context.Context {
	c.n.Add(1)
	return ctx
}

func (c *countQueries) TraceQueryEnd(context.Context, *pgx.Conn, pgx.TraceQueryEndData) {}

// beforeQueries calls before ahead of each query of a store it traces, with the query's
// number (from 1).
type beforeQueries struct {
	n      atomic.Int64
	before func(n int64, sql string)
}

func (b *beforeQueries) TraceQueryStart(ctx context.Context, _ *pgx.Conn, data pgx.TraceQueryStartData) context.Context {
	b.before(b.n.Add(1), data.SQL)
	return ctx
}

func (b *beforeQueries) TraceQueryEnd(context.Context, *pgx.Conn, pgx.TraceQueryEndData) {}

// A batch of runs on threads is created and joined to its threads in one statement (it
// took a transaction of five round trips): idle threads take their first run as active
// and queue it, the next runs wait behind, busy threads keep enqueued runs waiting. A
// refused batch is one statement too and stores nothing; a run that interrupts a busy
// thread still takes a transaction.
func TestCreateOnThreadsInOneStatement(t *testing.T) {
	t.Parallel()
	statements := &countQueries{}
	st, _ := newStoreAt(t, store.WithQueryTracer(statements))
	newAssistant(t, st, "a", nil)
	for _, th := range []string{"idle", "other", "busy"} {
		_, err := st.CreateThread(t.Context(), tenant, th, nil, nil)
		require.NoError(t, err)
	}
	on := func(thread string, m store.Multitask) store.NewRun {
		return store.NewRun{AssistantID: "a", ThreadID: thread, Multitask: m}
	}
	busy := enqueue(t, st, on("busy", ""))[0]
	var runs int
	count := func() int {
		require.NoError(t, st.Pool().QueryRow(t.Context(), `SELECT count(*) FROM runs`).Scan(&runs))
		return runs
	}

	before := statements.n.Load()
	b := enqueue(t, st, on("idle", ""), on("busy", store.MultitaskEnqueue), on("idle", store.MultitaskEnqueue), store.NewRun{AssistantID: "a"}, on("other", ""))
	require.Equal(t, int64(1), statements.n.Load()-before, "one statement")
	var active []uuid.UUID
	rows, err := st.Pool().Query(t.Context(), `SELECT active_run_id FROM threads WHERE tenant_id = $1 ORDER BY id`, tenant)
	require.NoError(t, err)
	active, err = pgx.CollectRows(rows, pgx.RowTo[uuid.UUID])
	require.NoError(t, err)
	require.Equal(t, []uuid.UUID{busy.ID, b[0].ID, b[4].ID}, active, "busy, idle, other")
	rows, err = st.Pool().Query(t.Context(), `SELECT run_id FROM run_queue ORDER BY seq`)
	require.NoError(t, err)
	queued, err := pgx.CollectRows(rows, pgx.RowTo[uuid.UUID])
	require.NoError(t, err)
	require.Equal(t, []uuid.UUID{busy.ID, b[0].ID, b[3].ID, b[4].ID}, queued, "active runs and the run without a thread")
	rows, err = st.Pool().Query(t.Context(), `SELECT run_id FROM thread_queue ORDER BY seq`)
	require.NoError(t, err)
	waiting, err := pgx.CollectRows(rows, pgx.RowTo[uuid.UUID])
	require.NoError(t, err)
	require.Equal(t, []uuid.UUID{b[1].ID, b[2].ID}, waiting)

	stored := count()
	before = statements.n.Load()
	_, err = st.CreateRuns(t.Context(), tenant, []store.NewRun{on("other", store.MultitaskEnqueue), on("idle", store.MultitaskReject)}, defaults)
	require.ErrorIs(t, err, store.ErrThreadBusy)
	require.ErrorContains(t, err, b[0].ID.String(), "names the run in the way")
	require.Equal(t, int64(1), statements.n.Load()-before, "a refusal is one statement")
	require.Equal(t, stored, count(), "and stores nothing")
	_, err = st.CreateRuns(t.Context(), tenant, []store.NewRun{on("ghost", store.MultitaskEnqueue), on("idle", store.MultitaskReject)}, defaults)
	var tnf *store.ThreadNotFoundError
	require.ErrorAs(t, err, &tnf, "the batch's first refused run names the reason")
	require.Equal(t, "ghost", tnf.ID)
	_, err = st.CreateRuns(t.Context(), tenant, []store.NewRun{on("idle", store.MultitaskReject), on("ghost", store.MultitaskEnqueue)}, defaults)
	require.ErrorIs(t, err, store.ErrThreadBusy, "the other way round")
	require.Equal(t, stored, count())

	before = statements.n.Load()
	in := enqueue(t, st, on("other", store.MultitaskInterrupt))
	require.Greater(t, statements.n.Load()-before, int64(2), "an interrupt takes a transaction")
	got, err := st.GetRun(t.Context(), tenant, b[4].ID)
	require.NoError(t, err)
	require.Equal(t, store.StateCancelled, got.State, "interrupted")
	th, err := st.GetThread(t.Context(), tenant, "other")
	require.NoError(t, err)
	require.Equal(t, in[0].ID, *th.ActiveRunID, "the interrupting run follows")
}

// Successes of runs on threads end in one statement, as plain ones do: their SUCCEEDED and
// step_started events are kept on the runs (no run_events rows), and each thread's trigger
// still runs: the thread's state is the run's output, and its next waiting run becomes
// active and queued.
func TestFinishThreadRunsInOneStatement(t *testing.T) {
	t.Parallel()
	statements := &countQueries{}
	st, _ := newStoreAt(t, store.WithQueryTracer(statements))
	newAssistant(t, st, "a", nil)
	var first, next []*store.Run
	for i := range 3 {
		thread := fmt.Sprintf("t%d", i)
		_, err := st.CreateThread(t.Context(), tenant, thread, nil, map[string]any{"turn": 0.0})
		require.NoError(t, err)
		runs := enqueue(t, st, store.NewRun{AssistantID: "a", ThreadID: thread},
			store.NewRun{AssistantID: "a", ThreadID: thread, Multitask: store.MultitaskEnqueue})
		first, next = append(first, runs[0]), append(next, runs[1])
	}
	cs := claim(t, st, "w", "cpu", 10)
	require.Len(t, cs, 3, "one active run per thread")
	var ps []store.FinishParams
	for _, c := range cs {
		ps = append(ps, store.FinishParams{RunID: c.Run.ID, Epoch: c.Run.Epoch, Outcome: store.OutcomeSucceeded,
			State: map[string]any{"turn": 1.0, "by": c.Run.ID.String()}, Events: []store.Event{{Type: "step_started", Data: map[string]any{"step": "s"}}},
			OnThread: true})
	}
	before := statements.n.Load()
	res, errs, err := st.FinishRuns(t.Context(), ps)
	require.NoError(t, err)
	require.Equal(t, int64(1), statements.n.Load()-before, "one statement, hinted by OnThread")
	for i := range ps {
		require.NoError(t, errs[i])
		require.Equal(t, store.StateSucceeded, res[i].State)
	}
	for i, r := range first {
		var rows int
		require.NoError(t, st.Pool().QueryRow(t.Context(), `SELECT count(*) FROM run_events WHERE run_id = $1`, r.ID).Scan(&rows))
		require.Zero(t, rows, "the events are kept on the run")
		evs, err := st.ListRunEvents(t.Context(), tenant, r.ID, 0, 100)
		require.NoError(t, err)
		var names []string
		for _, e := range evs {
			names = append(names, e.Type+":"+fmt.Sprint(e.Data["state"]))
		}
		require.Equal(t, []string{"state:QUEUED", "state:RUNNING", "step_started:<nil>", "state:SUCCEEDED"}, names)
		th, err := st.GetThread(t.Context(), tenant, fmt.Sprintf("t%d", i))
		require.NoError(t, err)
		require.Equal(t, map[string]any{"turn": 1.0, "by": r.ID.String()}, th.State)
		require.NotNil(t, th.ActiveRunID)
		require.Equal(t, next[i].ID, *th.ActiveRunID, "the next run follows")
	}
	cs = claim(t, st, "w", "cpu", 10)
	require.Len(t, cs, 3, "the next runs are queued")
	for _, c := range cs {
		require.Equal(t, 1.0, c.State["turn"], "from their thread's new state")
	}
}

// Successes of plain runs end in one statement, those of runs on threads in another; a
// stale success and a failure in the same batch take the general path, and every run ends
// as it should.
func TestFinishRunsMixedBatch(t *testing.T) {
	t.Parallel()
	st := newStore(t)
	newAssistant(t, st, "a", nil)
	_, err := st.CreateThread(t.Context(), tenant, "t", nil, map[string]any{"turn": 0.0})
	require.NoError(t, err)
	enqueue(t, st, store.NewRun{AssistantID: "a"}, store.NewRun{AssistantID: "a"}, store.NewRun{AssistantID: "a"})
	enqueue(t, st, store.NewRun{AssistantID: "a", ThreadID: "t"})
	cs := claim(t, st, "w", "cpu", 4)
	require.Len(t, cs, 4)
	var plain []*store.Claim
	var onThread *store.Claim
	for _, c := range cs {
		if c.Run.ThreadID != "" {
			onThread = c
		} else {
			plain = append(plain, c)
		}
	}
	require.NotNil(t, onThread)
	res, errs, err := st.FinishRuns(t.Context(), []store.FinishParams{
		{RunID: plain[0].Run.ID, Epoch: plain[0].Run.Epoch, Outcome: store.OutcomeSucceeded, State: map[string]any{"ok": true},
			Events: []store.Event{{Type: "step_started", Data: map[string]any{"step": "a"}}, {Type: "log", Data: map[string]any{"line": "x"}}}},
		{RunID: plain[1].Run.ID, Epoch: plain[1].Run.Epoch - 1, Outcome: store.OutcomeSucceeded,
			Events: []store.Event{{Type: "step_started", Data: map[string]any{"step": "stale"}}}},
		{RunID: plain[2].Run.ID, Epoch: plain[2].Run.Epoch, Outcome: store.OutcomeFailed, Error: "boom"},
		{RunID: onThread.Run.ID, Epoch: onThread.Run.Epoch, Outcome: store.OutcomeSucceeded, State: map[string]any{"turn": 1.0},
			Events: []store.Event{{Type: "step_started", Data: map[string]any{"step": "t"}}}},
	})
	require.NoError(t, err)
	require.NoError(t, errs[0])
	require.ErrorIs(t, errs[1], store.ErrStaleEpoch)
	require.NoError(t, errs[2])
	require.NoError(t, errs[3])
	require.Equal(t, []store.RunState{store.StateSucceeded, 0, store.StateFailed, store.StateSucceeded},
		[]store.RunState{res[0].State, res[1].State, res[2].State, res[3].State})

	got, err := st.GetRun(t.Context(), tenant, plain[0].Run.ID)
	require.NoError(t, err)
	require.Equal(t, store.StateSucceeded, got.State)
	require.Equal(t, map[string]any{"ok": true}, got.Output)
	got, err = st.GetRun(t.Context(), tenant, plain[1].Run.ID)
	require.NoError(t, err)
	require.Equal(t, store.StateRunning, got.State, "a stale result changes nothing")
	th, err := st.GetThread(t.Context(), tenant, "t")
	require.NoError(t, err)
	require.Equal(t, map[string]any{"turn": 1.0}, th.State, "the thread run's trigger ran")
	var leases []string
	rows, err := st.Pool().Query(t.Context(), `SELECT run_id::text FROM run_leases`)
	require.NoError(t, err)
	for rows.Next() {
		var id string
		require.NoError(t, rows.Scan(&id))
		leases = append(leases, id)
	}
	require.NoError(t, rows.Err())
	require.Equal(t, []string{plain[1].Run.ID.String()}, leases, "only the run still RUNNING holds a lease")
	// The events that came with a result precede its state event, in their order.
	for _, c := range []struct {
		run  *store.Claim
		want []string
	}{
		{plain[0], []string{"state:QUEUED", "state:RUNNING", "step_started:a", "log:", "state:SUCCEEDED"}},
		{plain[1], []string{"state:QUEUED", "state:RUNNING"}},
		{onThread, []string{"state:QUEUED", "state:RUNNING", "step_started:t", "state:SUCCEEDED"}},
	} {
		require.Equal(t, c.want, eventSummary(t, st, c.run.Run.ID), "events of %s", c.run.Run.ID)
	}
}

// eventSummary lists a run's event log as "type:detail", the detail being the event's step
// when it names one, else its state.
func eventSummary(t *testing.T, st *store.Store, run uuid.UUID) []string {
	t.Helper()
	evs, err := st.ListRunEvents(t.Context(), tenant, run, 0, 100)
	require.NoError(t, err)
	var out []string
	for _, e := range evs {
		detail, _ := e.Data["state"].(string)
		if step, ok := e.Data["step"].(string); ok {
			detail = step
		}
		out = append(out, e.Type+":"+detail)
	}
	return out
}

// A result resent after a reconnect can arrive twice in one batch: the run still ends once.
func TestFinishRunsTwiceInOneBatchEndsOnce(t *testing.T) {
	t.Parallel()
	st := newStore(t)
	newAssistant(t, st, "a", nil)
	run := enqueue(t, st, store.NewRun{AssistantID: "a"})[0]
	c := claim(t, st, "w", "cpu", 1)[0]
	p := store.FinishParams{RunID: run.ID, Epoch: c.Run.Epoch, Outcome: store.OutcomeSucceeded, State: map[string]any{}}
	_, errs, err := st.FinishRuns(t.Context(), []store.FinishParams{p, p})
	require.NoError(t, err)
	require.NoError(t, errs[0])
	require.ErrorIs(t, errs[1], store.ErrStaleEpoch)
	evs, err := st.ListRunEvents(t.Context(), tenant, run.ID, 0, 100)
	require.NoError(t, err)
	terminal := 0
	for _, e := range evs {
		if e.Type == "state" && e.Data["state"] == "SUCCEEDED" {
			terminal++
		}
	}
	require.Equal(t, 1, terminal)
}

// Results of two claims of one run can meet in one batch (a worker's result of an old claim
// resent after the run was claimed again): whichever comes first, the current claim's
// result ends the run and the old one is refused as stale.
func TestFinishRunsTwoClaimsOfOneRunInOneBatch(t *testing.T) {
	t.Parallel()
	st := newStore(t)
	newAssistant(t, st, "a", nil)
	for _, staleFirst := range []bool{true, false} {
		run := enqueue(t, st, store.NewRun{AssistantID: "a"})[0]
		c := claim(t, st, "w", "cpu", 1)[0]
		current := store.FinishParams{RunID: run.ID, Epoch: c.Run.Epoch, Outcome: store.OutcomeSucceeded, State: map[string]any{"epoch": "current"},
			Events: []store.Event{{Type: "step_started", Data: map[string]any{"step": "current"}}}}
		stale := store.FinishParams{RunID: run.ID, Epoch: c.Run.Epoch - 1, Outcome: store.OutcomeSucceeded, State: map[string]any{"epoch": "stale"},
			Events: []store.Event{{Type: "step_started", Data: map[string]any{"step": "stale"}}}}
		batch, cur := []store.FinishParams{current, stale}, 0
		if staleFirst {
			batch, cur = []store.FinishParams{stale, current}, 1
		}
		res, errs, err := st.FinishRuns(t.Context(), batch)
		require.NoError(t, err)
		require.NoError(t, errs[cur], "stale first: %v", staleFirst)
		require.Equal(t, store.StateSucceeded, res[cur].State)
		require.ErrorIs(t, errs[1-cur], store.ErrStaleEpoch, "stale first: %v", staleFirst)
		got, err := st.GetRun(t.Context(), tenant, run.ID)
		require.NoError(t, err)
		require.Equal(t, store.StateSucceeded, got.State)
		require.Equal(t, map[string]any{"epoch": "current"}, got.Output)
		require.Equal(t, []string{"state:QUEUED", "state:RUNNING", "step_started:current", "state:SUCCEEDED"},
			eventSummary(t, st, run.ID), "stale first: %v", staleFirst)
	}
}

// A batch of results as large as a worker's message batch (512) ends every run, with each
// run's own output, in one call.
func TestFinishRunsLargeBatch(t *testing.T) {
	t.Parallel()
	st := newStore(t)
	newAssistant(t, st, benchAssistant, nil)
	const n = 512
	enqueue(t, st, newRuns(n)...)
	cs := claim(t, st, "w", "cpu", n)
	require.Len(t, cs, n)
	ps := make([]store.FinishParams, n)
	for i, c := range cs {
		// Every other result carries a stale epoch.
		epoch := c.Run.Epoch
		if i%2 == 1 {
			epoch++
		}
		ps[i] = store.FinishParams{RunID: c.Run.ID, Epoch: epoch, Outcome: store.OutcomeSucceeded, State: map[string]any{"out": c.State["i"]}}
	}
	res, errs, err := st.FinishRuns(t.Context(), ps)
	require.NoError(t, err)
	for i, c := range cs {
		got, err := st.GetRun(t.Context(), tenant, c.Run.ID)
		require.NoError(t, err)
		if i%2 == 1 {
			require.ErrorIs(t, errs[i], store.ErrStaleEpoch)
			require.Equal(t, store.StateRunning, got.State)
			continue
		}
		require.NoError(t, errs[i])
		require.Equal(t, store.StateSucceeded, res[i].State)
		require.Equal(t, store.StateSucceeded, got.State)
		require.Equal(t, map[string]any{"out": c.State["i"]}, got.Output, "run %d gets its own output", i)
	}
}

// A batch's runs join their threads in the batch's order, as they would one by one: the
// first run on an idle thread becomes its active run and is queued, the next ones wait
// (enqueue) or fail the batch (reject), a thread that does not exist fails it, and an
// interrupt cancels the active run, which its thread's next waiting run follows.
func TestBatchJoinsThreadsInOrder(t *testing.T) {
	t.Parallel()
	st := newStore(t)
	newAssistant(t, st, "a", nil)
	for _, th := range []string{"t1", "t2"} {
		_, err := st.CreateThread(t.Context(), tenant, th, nil, nil)
		require.NoError(t, err)
	}
	on := func(thread string, m store.Multitask) store.NewRun {
		return store.NewRun{AssistantID: "a", ThreadID: thread, Multitask: m}
	}
	state := func(thread string) (active uuid.UUID, queued, waiting []uuid.UUID) {
		t.Helper()
		require.NoError(t, st.Pool().QueryRow(t.Context(), `SELECT active_run_id FROM threads WHERE tenant_id = $1 AND id = $2`, tenant, thread).Scan(&active))
		rows, err := st.Pool().Query(t.Context(), `SELECT q.run_id FROM run_queue q JOIN runs r ON r.id = q.run_id WHERE r.thread_id = $1 ORDER BY r.seq`, thread)
		require.NoError(t, err)
		queued, err = pgx.CollectRows(rows, pgx.RowTo[uuid.UUID])
		require.NoError(t, err)
		rows, err = st.Pool().Query(t.Context(), `SELECT run_id FROM thread_queue WHERE thread_id = $1 ORDER BY seq`, thread)
		require.NoError(t, err)
		waiting, err = pgx.CollectRows(rows, pgx.RowTo[uuid.UUID])
		require.NoError(t, err)
		return active, queued, waiting
	}
	count := func() (n int) {
		require.NoError(t, st.Pool().QueryRow(t.Context(), `SELECT count(*) FROM runs`).Scan(&n))
		return n
	}

	b := enqueue(t, st, on("t1", ""), on("t1", store.MultitaskEnqueue), on("t2", store.MultitaskEnqueue), on("t1", store.MultitaskEnqueue))
	active, queued, waiting := state("t1")
	require.Equal(t, b[0].ID, active)
	require.Equal(t, []uuid.UUID{b[0].ID}, queued)
	require.Equal(t, []uuid.UUID{b[1].ID, b[3].ID}, waiting)
	active, queued, waiting = state("t2")
	require.Equal(t, b[2].ID, active)
	require.Equal(t, []uuid.UUID{b[2].ID}, queued)
	require.Empty(t, waiting)

	_, err := st.CreateRuns(t.Context(), tenant, []store.NewRun{on("t2", store.MultitaskEnqueue), on("t1", store.MultitaskReject)}, defaults)
	require.ErrorIs(t, err, store.ErrThreadBusy)
	require.ErrorContains(t, err, b[0].ID.String(), "names the active run")
	_, err = st.CreateRuns(t.Context(), tenant, []store.NewRun{on("t2", store.MultitaskEnqueue), on("ghost", store.MultitaskEnqueue)}, defaults)
	var tnf *store.ThreadNotFoundError
	require.ErrorAs(t, err, &tnf)
	require.Equal(t, "ghost", tnf.ID)
	require.Equal(t, len(b), count(), "a failed batch stores none of its runs")
	_, _, waiting = state("t2")
	require.Empty(t, waiting)

	in := enqueue(t, st, on("t2", store.MultitaskEnqueue), on("t1", store.MultitaskInterrupt))
	got, err := st.GetRun(t.Context(), tenant, b[0].ID)
	require.NoError(t, err)
	require.Equal(t, store.StateCancelled, got.State, "interrupted")
	active, queued, waiting = state("t1")
	require.Equal(t, b[1].ID, active, "the next waiting run follows")
	require.Equal(t, []uuid.UUID{b[1].ID}, queued)
	require.Equal(t, []uuid.UUID{b[3].ID, in[1].ID}, waiting)
	_, _, waiting = state("t2")
	require.Equal(t, []uuid.UUID{in[0].ID}, waiting)
}

// Batches of runs on the same threads, named in other orders, created concurrently: none
// waits on another in a cycle (the threads are locked in id order; run by run, 153 of
// these 400 batches failed on a deadlock, each after a second), and every thread ends with
// one active run and the rest of its runs waiting behind it.
func TestConcurrentThreadBatchesDoNotDeadlock(t *testing.T) {
	t.Parallel()
	st := newStore(t)
	newAssistant(t, st, "a", nil)
	const threads, creators, batches = 4, 4, 25
	for i := range threads {
		_, err := st.CreateThread(t.Context(), tenant, fmt.Sprintf("t%d", i), nil, nil)
		require.NoError(t, err)
	}
	errs := make([]error, creators*batches)
	var wg sync.WaitGroup
	for g := range creators {
		wg.Go(func() {
			for b := range batches {
				var runs []store.NewRun
				for k := range threads {
					th := (k + g + b) % threads
					if g%2 == 1 {
						th = threads - 1 - th // the other way round
					}
					runs = append(runs, store.NewRun{AssistantID: "a", ThreadID: fmt.Sprintf("t%d", th), Multitask: store.MultitaskEnqueue})
				}
				_, errs[g*batches+b] = st.CreateRuns(t.Context(), tenant, runs, defaults)
			}
		})
	}
	wg.Wait()
	for i, err := range errs {
		require.NoError(t, err, "batch %d", i)
	}
	require.Zero(t, st.DeadlocksRetried(), "no deadlock to retry")
	for i := range threads {
		var active, waiting, runs int
		require.NoError(t, st.Pool().QueryRow(t.Context(), `SELECT
			(SELECT count(*) FROM threads th JOIN run_queue q ON q.run_id = th.active_run_id WHERE th.tenant_id = $1 AND th.id = $2),
			(SELECT count(*) FROM thread_queue WHERE tenant_id = $1 AND thread_id = $2),
			(SELECT count(*) FROM runs WHERE tenant_id = $1 AND thread_id = $2)`, tenant, fmt.Sprintf("t%d", i)).Scan(&active, &waiting, &runs))
		require.Equal(t, creators*batches, runs, "thread t%d", i)
		require.Equal(t, 1, active, "thread t%d: one active run, queued", i)
		require.Equal(t, runs-1, waiting, "thread t%d: the others wait", i)
	}
}

// CreateRunsEach answers every run of a batch on its own: the runs refused for a reason
// of their own fail alone (an unknown assistant's, a missing thread's, each rejected one
// with the run in its way), and the others are created together, in one statement a
// refusal (nine runs, four refusals: five statements, where retrying run by run took ten).
func TestCreateRunsEachFailsRefusedRunsAlone(t *testing.T) {
	t.Parallel()
	statements := &countQueries{}
	st, _ := newStoreAt(t, store.WithQueryTracer(statements))
	newAssistant(t, st, "a", nil)
	for _, th := range []string{"busy", "t"} {
		_, err := st.CreateThread(t.Context(), tenant, th, nil, nil)
		require.NoError(t, err)
	}
	busy := enqueue(t, st, store.NewRun{AssistantID: "a", ThreadID: "busy"})[0]
	on := func(thread string, m store.Multitask) store.NewRun {
		return store.NewRun{AssistantID: "a", ThreadID: thread, Multitask: m}
	}
	runs := []store.NewRun{
		{AssistantID: "a"},
		{AssistantID: "ghost"},
		on("busy", store.MultitaskReject),
		on("nowhere", store.MultitaskEnqueue),
		on("t", store.MultitaskReject),
		on("t", store.MultitaskReject),
		on("nowhere", store.MultitaskReject),
		{AssistantID: "a"},
		on("t", store.MultitaskEnqueue),
	}
	before := statements.n.Load()
	out, errs, err := st.CreateRunsEach(t.Context(), tenant, runs, defaults)
	require.NoError(t, err)
	require.Equal(t, int64(5), statements.n.Load()-before, "one statement a refusal, then the rest together")
	for _, i := range []int{0, 4, 7, 8} {
		require.NoError(t, errs[i], "run %d", i)
		require.NotNil(t, out[i], "run %d", i)
		require.Equal(t, runs[i].ThreadID, out[i].ThreadID, "run %d", i)
	}
	var anf *store.AssistantNotFoundError
	require.ErrorAs(t, errs[1], &anf)
	require.Equal(t, "ghost", anf.ID)
	var tnf *store.ThreadNotFoundError
	for _, i := range []int{3, 6} {
		require.ErrorAs(t, errs[i], &tnf, "run %d", i)
		require.Equal(t, "nowhere", tnf.ID)
	}
	require.ErrorIs(t, errs[2], store.ErrThreadBusy)
	require.ErrorContains(t, errs[2], busy.ID.String(), "the thread's active run")
	require.ErrorIs(t, errs[5], store.ErrThreadBusy)
	require.ErrorContains(t, errs[5], out[4].ID.String(), "the batch's run before it")
	th, err := st.GetThread(t.Context(), tenant, "t")
	require.NoError(t, err)
	require.Equal(t, out[4].ID, *th.ActiveRunID)
	var stored, waiting int
	require.NoError(t, st.Pool().QueryRow(t.Context(), `SELECT (SELECT count(*) FROM runs), (SELECT count(*) FROM thread_queue WHERE run_id = $1)`,
		out[8].ID).Scan(&stored, &waiting))
	require.Equal(t, 5, stored, "the busy thread's run and the four created")
	require.Equal(t, 1, waiting, "the enqueued run waits")

	// A batch that needs the transaction (an interrupt) answers its rejected run alone too.
	interrupted := out[4].ID
	out, errs, err = st.CreateRunsEach(t.Context(), tenant, []store.NewRun{on("t", store.MultitaskInterrupt), on("busy", store.MultitaskReject)}, defaults)
	require.NoError(t, err)
	require.NoError(t, errs[0])
	require.ErrorIs(t, errs[1], store.ErrThreadBusy)
	require.ErrorContains(t, errs[1], busy.ID.String())
	th, err = st.GetThread(t.Context(), tenant, "t")
	require.NoError(t, err)
	require.NotEqual(t, interrupted, *th.ActiveRunID, "the interrupted run is no longer active")
	got, err := st.GetRun(t.Context(), tenant, interrupted)
	require.NoError(t, err)
	require.Equal(t, store.StateCancelled, got.State)
	require.NotNil(t, out[0])
}

// A run refused because of an earlier run of its batch is tried again when that run is
// refused in turn: here another client takes the thread between two tries, and both runs
// are refused naming that client's run, not one that was never created.
func TestCreateRunsEachTriesAgainWhenTheRunInTheWayIsRefused(t *testing.T) {
	t.Parallel()
	var (
		other *store.Store // another client of the same database
		taken *store.Run
		tries int
	)
	hook := &beforeQueries{before: func(_ int64, sql string) {
		if !strings.Contains(sql, "INSERT INTO runs") {
			return
		}
		if tries++; tries == 2 { // after the first try refused the second run
			out, err := other.CreateRuns(context.Background(), tenant, []store.NewRun{{AssistantID: "a", ThreadID: "t"}}, defaults)
			if err == nil {
				taken = out[0]
			}
		}
	}}
	st, url := newStoreAt(t, store.WithQueryTracer(hook))
	newAssistant(t, st, "a", nil)
	_, err := st.CreateThread(t.Context(), tenant, "t", nil, nil)
	require.NoError(t, err)
	other, err = store.Open(t.Context(), url)
	require.NoError(t, err)
	t.Cleanup(other.Close)
	reject := store.NewRun{AssistantID: "a", ThreadID: "t", Multitask: store.MultitaskReject}
	out, errs, err := st.CreateRunsEach(t.Context(), tenant, []store.NewRun{reject, reject}, defaults)
	require.NoError(t, err)
	require.NotNil(t, taken, "the other client took the thread")
	require.Equal(t, 3, tries, "tried again after its run in the way was refused")
	for i := range 2 {
		require.Nil(t, out[i])
		require.ErrorIs(t, errs[i], store.ErrThreadBusy, "run %d", i)
		require.ErrorContains(t, errs[i], taken.ID.String(), "run %d names the run that took the thread", i)
	}
}

// Creates racing for one idle thread with the reject policy: exactly one becomes its
// active run, and every other is refused naming it. The create statement reads the
// thread's active run from the row it locked, the version written by the create it waited
// for, not from its own older snapshot, which would let two runs be active at once.
func TestConcurrentRejectsOnAnIdleThreadLetOneIn(t *testing.T) {
	t.Parallel()
	st := newStore(t)
	newAssistant(t, st, "a", nil)
	const rounds, racers = 10, 6
	for r := range rounds {
		thread := fmt.Sprintf("t%d", r)
		_, err := st.CreateThread(t.Context(), tenant, thread, nil, nil)
		require.NoError(t, err)
		runs := make([]*store.Run, racers)
		errs := make([]error, racers)
		var wg sync.WaitGroup
		for i := range racers {
			wg.Go(func() {
				var out []*store.Run
				out, errs[i] = st.CreateRuns(t.Context(), tenant, []store.NewRun{{AssistantID: "a", ThreadID: thread}}, defaults)
				if errs[i] == nil {
					runs[i] = out[0]
				}
			})
		}
		wg.Wait()
		var winner *store.Run
		for i := range racers {
			if errs[i] == nil {
				require.Nil(t, winner, "round %d: a second run was let in", r)
				winner = runs[i]
			}
		}
		require.NotNil(t, winner, "round %d: one run is let in", r)
		for i := range racers {
			if errs[i] != nil {
				require.ErrorIs(t, errs[i], store.ErrThreadBusy, "round %d", r)
				require.ErrorContains(t, errs[i], winner.ID.String(), "round %d: names the run in the way", r)
			}
		}
		th, err := st.GetThread(t.Context(), tenant, thread)
		require.NoError(t, err)
		require.Equal(t, winner.ID, *th.ActiveRunID)
		var stored int
		require.NoError(t, st.Pool().QueryRow(t.Context(), `SELECT count(*) FROM runs WHERE thread_id = $1`, thread).Scan(&stored))
		require.Equal(t, 1, stored, "round %d: the refused runs are not stored", r)
	}
}

// A create retried with its request id returns the run it created the first time, which
// does not join its thread again (no refusal by itself, no second queue row); a new run
// of the same batch joins behind it.
func TestRetriedCreateOnAThreadJoinsOnce(t *testing.T) {
	t.Parallel()
	st := newStore(t)
	newAssistant(t, st, "a", nil)
	_, err := st.CreateThread(t.Context(), tenant, "t", nil, nil)
	require.NoError(t, err)
	first := enqueue(t, st, store.NewRun{AssistantID: "a", ThreadID: "t", RequestID: "req-1"})[0]
	again := enqueue(t, st, store.NewRun{AssistantID: "a", ThreadID: "t", RequestID: "req-1"},
		store.NewRun{AssistantID: "a", ThreadID: "t", RequestID: "req-2", Multitask: store.MultitaskEnqueue})
	require.Equal(t, first.ID, again[0].ID, "the earlier run")
	th, err := st.GetThread(t.Context(), tenant, "t")
	require.NoError(t, err)
	require.Equal(t, first.ID, *th.ActiveRunID)
	var queued, waiting int
	require.NoError(t, st.Pool().QueryRow(t.Context(), `SELECT
		(SELECT count(*) FROM run_queue WHERE run_id = $1),
		(SELECT count(*) FROM thread_queue WHERE run_id = $2)`, first.ID, again[1].ID).Scan(&queued, &waiting))
	require.Equal(t, 1, queued, "queued once")
	require.Equal(t, 1, waiting, "the new run waits behind it")
}

// Claims, finishes and creates of runs on the same threads, concurrently: all lock
// threads in (tenant, id) order, so none waits on another in a cycle. Claims locked them
// in their runs' order (a claim and a create deadlocked about once a second, each costing
// both a second: 56 runs claimed in 20 s instead of ~29,000), and finishes in their
// writes' (assistant, thread) order (with runs of two assistants, ten deadlocks in 10 s).
// A claim could also lock a RUNNING run it did not claim, which closed a cycle with that
// run's finish and a create about once in 30 runs of this test
// (TestClaimLeavesQueueRowsNewerThanItsSnapshot).
func TestClaimsAndThreadCreatesDoNotDeadlock(t *testing.T) {
	t.Parallel()
	st := newStore(t)
	newAssistant(t, st, "a", nil)
	newAssistant(t, st, "b", nil)
	const threads = 8
	for i := range threads {
		_, err := st.CreateThread(t.Context(), tenant, fmt.Sprintf("t%d", i), nil, nil)
		require.NoError(t, err)
	}
	stop := time.Now().Add(4 * time.Second)
	var mu sync.Mutex
	var errs []error
	fail := func(err error) {
		mu.Lock()
		errs = append(errs, err)
		mu.Unlock()
	}
	var claimed atomic.Int64
	var wg sync.WaitGroup
	for g := range 3 {
		wg.Go(func() {
			for i := 0; time.Now().Before(stop); i++ {
				var runs []store.NewRun
				for k := range threads {
					th := (k*3 + g + i) % threads         // every batch names the threads in another order
					assistant := []string{"b", "a"}[th%2] // not the threads' order
					runs = append(runs, store.NewRun{AssistantID: assistant, ThreadID: fmt.Sprintf("t%d", th), Multitask: store.MultitaskEnqueue})
				}
				if _, err := st.CreateRuns(t.Context(), tenant, runs, defaults); err != nil {
					fail(err)
				}
				time.Sleep(2 * time.Millisecond)
			}
		})
	}
	for w := range 2 {
		wg.Go(func() {
			for time.Now().Before(stop) {
				cs, err := st.ClaimRuns(t.Context(), store.ClaimParams{WorkerID: fmt.Sprintf("w%d", w), SlotType: "cpu", Limit: threads, LeaseTTL: time.Minute})
				if err != nil {
					fail(err)
					continue
				}
				claimed.Add(int64(len(cs)))
				var ps []store.FinishParams
				for i, c := range cs {
					outcome := store.OutcomeSucceeded
					if i%3 == 0 {
						outcome = store.OutcomeFailed
					}
					ps = append(ps, store.FinishParams{RunID: c.Run.ID, Epoch: c.Run.Epoch, Outcome: outcome, State: map[string]any{}})
				}
				if len(ps) > 0 {
					if _, errs, err := st.FinishRuns(t.Context(), ps); err != nil {
						fail(err)
					} else if err := errors.Join(errs...); err != nil {
						fail(err)
					}
				}
			}
		})
	}
	wg.Wait()
	require.Empty(t, errs)
	require.Zero(t, st.DeadlocksRetried(), "no deadlock to retry")
	require.Positive(t, claimed.Load())
	t.Logf("%d runs claimed in 4 s", claimed.Load())
}

// Runs waiting on a thread start in submission order; a waiting run cancelled while the
// active run ends (concurrently: the two can deadlock and are retried) is never promoted,
// and the next one is.
func TestThreadWaitingRunCancelledWhileActiveEnds(t *testing.T) {
	t.Parallel()
	st := newStore(t)
	newAssistant(t, st, "a", nil)
	for round := range 10 {
		thread := fmt.Sprintf("t%d", round)
		_, err := st.CreateThread(t.Context(), tenant, thread, nil, nil)
		require.NoError(t, err)
		active := enqueue(t, st, store.NewRun{AssistantID: "a", ThreadID: thread})[0]
		x := enqueue(t, st, store.NewRun{AssistantID: "a", ThreadID: thread, Multitask: store.MultitaskEnqueue})[0]
		y := enqueue(t, st, store.NewRun{AssistantID: "a", ThreadID: thread, Multitask: store.MultitaskEnqueue})[0]
		c := claim(t, st, "w", "cpu", 10)
		require.Len(t, c, 1, "only the active run of the thread is queued")
		require.Equal(t, active.ID, c[0].Run.ID)

		var wg sync.WaitGroup
		var cancelErr, finishErr error
		wg.Add(2)
		go func() {
			defer wg.Done()
			_, cancelErr = st.CancelRun(t.Context(), tenant, x.ID)
		}()
		go func() {
			defer wg.Done()
			_, finishErr = st.FinishRun(t.Context(), store.FinishParams{RunID: active.ID, Epoch: c[0].Run.Epoch, Outcome: store.OutcomeSucceeded, State: map[string]any{}})
		}()
		wg.Wait()
		require.NoError(t, cancelErr)
		require.NoError(t, finishErr)

		got, err := st.GetRun(t.Context(), tenant, x.ID)
		require.NoError(t, err)
		require.Equal(t, store.StateCancelled, got.State)
		th, err := st.GetThread(t.Context(), tenant, thread)
		require.NoError(t, err)
		require.NotNil(t, th.ActiveRunID)
		require.Equal(t, y.ID, *th.ActiveRunID, "the next waiting run is promoted, never the cancelled one")
		c = claim(t, st, "w", "cpu", 10)
		require.Len(t, c, 1)
		require.Equal(t, y.ID, c[0].Run.ID)
		_, err = st.FinishRun(t.Context(), store.FinishParams{RunID: y.ID, Epoch: c[0].Run.Epoch, Outcome: store.OutcomeSucceeded, State: map[string]any{}})
		require.NoError(t, err)
	}
}

// A batch of successes ends every run with its own output and its own kept step, whatever
// order the results come in: the one-statement finish finds each run's values by position.
func TestFinishRunsGivesEachRunItsOwnResult(t *testing.T) {
	t.Parallel()
	st := newStore(t)
	newAssistant(t, st, "a", nil)
	const n = 40
	enqueue(t, st, runsOf("a", n)...)
	claims := claim(t, st, "w", "cpu", n)
	require.Len(t, claims, n)
	// Results in an order of their own (not the ids', not the claims').
	rand.New(rand.NewPCG(1, 2)).Shuffle(len(claims), func(i, j int) { claims[i], claims[j] = claims[j], claims[i] })
	ps := make([]store.FinishParams, n)
	for i, c := range claims {
		ps[i] = store.FinishParams{RunID: c.Run.ID, Epoch: c.Run.Epoch, Outcome: store.OutcomeSucceeded,
			State:  map[string]any{"run": c.Run.ID.String()},
			Events: []store.Event{{Type: "step_started", Data: map[string]any{"step": "s-" + c.Run.ID.String()[:8]}}}}
	}
	res, errs, err := st.FinishRuns(t.Context(), ps)
	require.NoError(t, err)
	for i := range ps {
		require.NoError(t, errs[i])
		require.Equal(t, store.StateSucceeded, res[i].State)
	}
	for _, c := range claims {
		got, err := st.GetRun(t.Context(), tenant, c.Run.ID)
		require.NoError(t, err)
		require.Equal(t, map[string]any{"run": c.Run.ID.String()}, got.Output, "output of %s", c.Run.ID)
		evs, err := st.ListRunEvents(t.Context(), tenant, c.Run.ID, 0, 100)
		require.NoError(t, err)
		var steps []any
		for _, e := range evs {
			if e.Type == "step_started" {
				steps = append(steps, e.Data["step"])
			}
		}
		require.Equal(t, []any{"s-" + c.Run.ID.String()[:8]}, steps, "step_started of %s", c.Run.ID)
	}
}

// A run's log starts with its QUEUED event and its claim's RUNNING event and ends with its
// SUCCEEDED event, which the run row holds (migrations 11, 12 and 21), and so does the
// step_started event that was its result's only event: they come in order with the events
// written as rows (the result's events before SUCCEEDED, for each run of a batch), and
// paging past them or stopping at them works like for any other event.
func TestRunEventLogMergesTheEventsKeptOnTheRun(t *testing.T) {
	t.Parallel()
	// Runs claimed under a concurrency limit end through a statement of their own.
	for _, limit := range []int32{0, 10} {
		t.Run(fmt.Sprintf("limit=%d", limit), func(t *testing.T) {
			t.Parallel()
			runEventLogMergesTheEventsKeptOnTheRun(t, limit)
		})
	}
}

func runEventLogMergesTheEventsKeptOnTheRun(t *testing.T, limit int32) {
	st := newStore(t)
	newAssistant(t, st, "a", func(a *store.Assistant) { a.ConcurrencyLimit = limit })
	runs := enqueue(t, st, store.NewRun{AssistantID: "a"}, store.NewRun{AssistantID: "a"}, store.NewRun{AssistantID: "a"},
		store.NewRun{AssistantID: "a"}, store.NewRun{AssistantID: "a"})
	claims := claim(t, st, "w", "cpu", 5)
	stepStarted := store.Event{Type: "step_started", Data: map[string]any{"step": "a"}}
	eventsOf := map[uuid.UUID][]store.Event{
		runs[0].ID: {stepStarted, {Type: "note", Data: map[string]any{"n": 1}}},
		runs[1].ID: {stepStarted, {Type: "note", Data: map[string]any{"n": 1}}},
		runs[2].ID: {stepStarted},
		runs[3].ID: {{Type: "step_started", Data: map[string]any{"step": "a", "more": true}}},
		runs[4].ID: {stepStarted},
	}
	var ps []store.FinishParams
	for _, c := range claims {
		ps = append(ps, store.FinishParams{RunID: c.Run.ID, Epoch: c.Run.Epoch, Outcome: store.OutcomeSucceeded, State: map[string]any{},
			Events: eventsOf[c.Run.ID]})
	}
	_, errs, err := st.FinishRuns(t.Context(), ps)
	require.NoError(t, err)
	for _, err := range errs {
		require.NoError(t, err)
	}

	log := func(id uuid.UUID) ([]store.RunEvent, []string) {
		all, err := st.ListRunEvents(t.Context(), tenant, id, 0, 100)
		require.NoError(t, err)
		var got []string
		for i, e := range all {
			if i > 0 {
				require.Greater(t, e.Seq, all[i-1].Seq)
			}
			name := e.Type
			if e.Type == "state" {
				name = e.Data["state"].(string)
			}
			got = append(got, name)
		}
		return all, got
	}
	rowsOf := func(id uuid.UUID) (n int) {
		require.NoError(t, st.Pool().QueryRow(t.Context(), `SELECT count(*) FROM run_events WHERE run_id = $1`, id).Scan(&n))
		return n
	}
	for _, r := range runs[:2] {
		_, got := log(r.ID)
		require.Equal(t, []string{"QUEUED", "RUNNING", "step_started", "note", "SUCCEEDED"}, got)
		require.Equal(t, 2, rowsOf(r.ID), "QUEUED, RUNNING and SUCCEEDED are not rows; two events are")
	}
	for _, r := range []*store.Run{runs[2], runs[4]} {
		kept, got := log(r.ID)
		require.Equal(t, []string{"QUEUED", "RUNNING", "step_started", "SUCCEEDED"}, got)
		require.Equal(t, map[string]any{"step": "a"}, kept[2].Data)
		require.True(t, kept[2].CreateTime.Equal(kept[3].CreateTime), "at the run's end")
		require.Zero(t, rowsOf(r.ID), "a lone step_started is kept on the run too")
	}
	other, got := log(runs[3].ID)
	require.Equal(t, []string{"QUEUED", "RUNNING", "step_started", "SUCCEEDED"}, got)
	require.Equal(t, map[string]any{"step": "a", "more": true}, other[2].Data)
	require.Equal(t, 1, rowsOf(runs[3].ID), "a step_started event with more data is a row")

	run := runs[0]
	evs, _ := log(run.ID)
	require.WithinDuration(t, run.CreateTime, evs[0].CreateTime, time.Millisecond)
	done, err := st.GetRun(t.Context(), tenant, run.ID)
	require.NoError(t, err)
	require.NotNil(t, done.EndTime)
	require.True(t, done.EndTime.Equal(evs[4].CreateTime), "SUCCEEDED at the run's end time")

	first, err := st.ListRunEvents(t.Context(), tenant, run.ID, 0, 1)
	require.NoError(t, err)
	require.Equal(t, evs[:1], first)
	rest, err := st.ListRunEvents(t.Context(), tenant, run.ID, evs[0].Seq, 100)
	require.NoError(t, err)
	require.Equal(t, evs[1:], rest)
	foreign, err := st.ListRunEvents(t.Context(), "other-tenant", run.ID, 0, 100)
	require.NoError(t, err)
	require.Empty(t, foreign, "another tenant sees none of it")
	// Many runs' events in one statement: each run's as ListRunEvents lists them.
	many, err := st.ListEventsOfRuns(t.Context(), []store.RunEventsAfter{{Tenant: tenant, ID: run.ID},
		{Tenant: tenant, ID: runs[3].ID}, {Tenant: "other-tenant", ID: run.ID}, {Tenant: tenant, ID: run.ID, AfterSeq: evs[0].Seq}}, 100)
	require.NoError(t, err)
	require.Equal(t, [][]store.RunEvent{evs, other, nil, evs[1:]}, many)
	requireEventsOfOneRunEach(t, st, []store.RunEventsAfter{{Tenant: tenant, ID: run.ID},
		{Tenant: tenant, ID: runs[3].ID}, {Tenant: "other-tenant", ID: run.ID}, {Tenant: tenant, ID: run.ID, AfterSeq: evs[0].Seq}}, 100, many)

	if limit > 0 {
		var running int
		require.NoError(t, st.Pool().QueryRow(t.Context(), `SELECT running FROM assistant_load
			WHERE tenant_id = $1 AND assistant_id = 'a'`, tenant).Scan(&running))
		require.Zero(t, running, "the ended runs left their assistant's load")
	}
}

// Every way a claimed run goes back to the queue (a retried failure, a released result, an
// expired lease, a resume) keeps the RUNNING event of the claim it ends: the log holds one
// RUNNING event per claim, with that claim's epoch, in order.
func TestRequeuedRunsKeepTheRunningEventOfEveryClaim(t *testing.T) {
	t.Parallel()
	st := newStore(t)
	ctx := t.Context()
	newAssistant(t, st, "a", func(a *store.Assistant) { a.MaxAttempts = 3 })
	run := enqueue(t, st, store.NewRun{AssistantID: "a"})[0]
	claimOnce := func(lease time.Duration) *store.Claim {
		t.Helper()
		c, err := st.ClaimRuns(ctx, store.ClaimParams{WorkerID: "w", SlotType: "cpu", Limit: 1, LeaseTTL: lease})
		require.NoError(t, err)
		require.Len(t, c, 1)
		return c[0]
	}
	finish := func(p store.FinishParams) {
		t.Helper()
		_, err := st.FinishRun(ctx, p)
		require.NoError(t, err)
	}

	c := claimOnce(time.Minute)
	finish(store.FinishParams{RunID: run.ID, Epoch: c.Run.Epoch, Outcome: store.OutcomeFailed, Error: "flaky", Retryable: true})
	c = claimOnce(time.Minute)
	finish(store.FinishParams{RunID: run.ID, Epoch: c.Run.Epoch, Outcome: store.OutcomeReleased})
	claimOnce(time.Millisecond)
	require.Eventually(t, func() bool {
		res, err := st.RecoverRuns(ctx, store.RecoverParams{Batch: 10, TimeoutGrace: time.Minute})
		require.NoError(t, err)
		return res.Requeued == 1
	}, 5*time.Second, 10*time.Millisecond)
	c = claimOnce(time.Minute)
	finish(store.FinishParams{RunID: run.ID, Epoch: c.Run.Epoch, Outcome: store.OutcomeInterrupted, Step: "s", Prompt: "ok?"})
	_, err := st.ResumeRun(ctx, tenant, run.ID, "yes")
	require.NoError(t, err)
	c = claimOnce(time.Minute)
	finish(store.FinishParams{RunID: run.ID, Epoch: c.Run.Epoch, Outcome: store.OutcomeSucceeded, State: map[string]any{}})

	evs, err := st.ListRunEvents(ctx, tenant, run.ID, 0, 100)
	require.NoError(t, err)
	var states []string
	var runningEpochs []float64
	for i, e := range evs {
		if i > 0 {
			require.Greater(t, e.Seq, evs[i-1].Seq)
		}
		require.Equal(t, "state", e.Type)
		states = append(states, e.Data["state"].(string))
		if e.Data["state"] == "RUNNING" {
			runningEpochs = append(runningEpochs, e.Data["epoch"].(float64))
		}
	}
	require.Equal(t, []string{
		"QUEUED", "RUNNING", "QUEUED", // retried
		"RUNNING", "QUEUED", // released
		"RUNNING", "QUEUED", // lease expired
		"RUNNING", "INTERRUPTED", "QUEUED", // resumed
		"RUNNING", "SUCCEEDED",
	}, states)
	require.Equal(t, []float64{1, 2, 3, 5, 6}, runningEpochs, "each claim's own epoch; recovery's requeue took epoch 4")

	// Paging one event at a time yields the same log.
	var paged []store.RunEvent
	after := int64(0)
	for {
		page, err := st.ListRunEvents(ctx, tenant, run.ID, after, 1)
		require.NoError(t, err)
		if len(page) == 0 {
			break
		}
		paged = append(paged, page...)
		after = page[0].Seq
	}
	require.Equal(t, evs, paged)

	// ListEventsOfRuns: the same log, its limit per run.
	many, err := st.ListEventsOfRuns(ctx, []store.RunEventsAfter{{Tenant: tenant, ID: run.ID},
		{Tenant: tenant, ID: run.ID, AfterSeq: evs[5].Seq}, {Tenant: tenant, ID: uuid.New()}}, 100)
	require.NoError(t, err)
	require.Equal(t, [][]store.RunEvent{evs, evs[6:], nil}, many)
	many, err = st.ListEventsOfRuns(ctx, []store.RunEventsAfter{{Tenant: tenant, ID: run.ID}, {Tenant: tenant, ID: run.ID, AfterSeq: evs[9].Seq}}, 2)
	require.NoError(t, err)
	require.Equal(t, [][]store.RunEvent{evs[:2], evs[10:]}, many)
	requireEventsOfOneRunEach(t, st, []store.RunEventsAfter{{Tenant: tenant, ID: run.ID}, {Tenant: tenant, ID: run.ID, AfterSeq: evs[9].Seq}}, 2, many)
}

// requireEventsOfOneRunEach checks that ListEventsOfRuns of each run alone (a lone stream's
// batch) answers what it answered for that run among the others (want).
func requireEventsOfOneRunEach(t *testing.T, st *store.Store, runs []store.RunEventsAfter, limit int, want [][]store.RunEvent) {
	t.Helper()
	for i, r := range runs {
		one, err := st.ListEventsOfRuns(t.Context(), []store.RunEventsAfter{r}, limit)
		require.NoError(t, err)
		require.Equal(t, want[i:i+1], one, "run %d alone", i)
	}
}

// CreateRuns returns each new run as GetRun reads it back: built from what it sent and what
// the database chose, it must agree with the stored row field for field.
func TestCreatedRunsAreReturnedAsStored(t *testing.T) {
	t.Parallel()
	st := newStore(t)
	newAssistant(t, st, "a", nil)
	newAssistant(t, st, "b", func(a *store.Assistant) {
		a.Priority, a.MaxAttempts, a.Timeout, a.SlotType = 7, 5, 90*time.Second, "gpu"
	})
	_, err := st.CreateThread(t.Context(), tenant, "t", nil, nil)
	require.NoError(t, err)
	created := enqueue(t, st,
		store.NewRun{AssistantID: "a"},
		store.NewRun{AssistantID: "b", Input: map[string]any{"n": 1.5, "s": "x", "l": []any{true, nil}, "o": map[string]any{"k": "v"}}},
		store.NewRun{AssistantID: "b", Priority: prio(-3), Timeout: 2 * time.Second, RequestID: "req-1"},
		store.NewRun{AssistantID: "a", ThreadID: "t", Input: map[string]any{}},
	)
	again := enqueue(t, st, store.NewRun{AssistantID: "a", RequestID: "req-1"}, store.NewRun{AssistantID: "a"})
	for _, r := range append(created, again...) {
		stored, err := st.GetRun(t.Context(), tenant, r.ID)
		require.NoError(t, err)
		require.Equal(t, stored, r, "run %s", r.ID)
	}
	require.Equal(t, created[2].ID, again[0].ID, "a repeated request returns the earlier run")
	require.Equal(t, int32(-3), created[2].Priority)
	require.Equal(t, "gpu", created[1].SlotType)
}

// A claim's Run holds the fields Claim documents, as GetRun reads them after the claim,
// and its State is the input of a run that has no checkpoint or thread.
func TestClaimCarriesWhatExecutionNeeds(t *testing.T) {
	t.Parallel()
	st := newStore(t)
	newAssistant(t, st, "b", func(a *store.Assistant) { a.MaxAttempts, a.Timeout, a.Priority = 4, 90*time.Second, 2 })
	created := enqueue(t, st, store.NewRun{AssistantID: "b", Input: map[string]any{"q": "x"}, Priority: prio(9)})[0]
	c := claim(t, st, "w1", "cpu", 1)[0]
	stored, err := st.GetRun(t.Context(), tenant, created.ID)
	require.NoError(t, err)
	want := &store.Run{TenantID: stored.TenantID, ID: stored.ID, AssistantID: stored.AssistantID, AssistantVersion: stored.AssistantVersion,
		ThreadID: stored.ThreadID, State: stored.State, Priority: stored.Priority, SlotType: stored.SlotType, Attempt: stored.Attempt,
		MaxAttempts: stored.MaxAttempts, Timeout: stored.Timeout, Epoch: stored.Epoch, WorkerID: stored.WorkerID, Step: stored.Step}
	require.Equal(t, want, c.Run)
	require.Equal(t, store.StateRunning, c.Run.State)
	require.Equal(t, "w1", c.Run.WorkerID)
	require.Equal(t, int32(9), c.Run.Priority)
	require.Equal(t, map[string]any{"q": "x"}, c.State)
}

// A claim gives a thread run its thread's latest committed state, even one committed after
// the claim statement began (claims overlap the results that promote thread runs). Here a
// transaction holds an update of the thread's state while the claim runs: the claim waits
// for it and starts the run from the new state, where reading with its own snapshot it
// returned the old one at once.
func TestClaimReadsTheThreadsLatestState(t *testing.T) {
	t.Parallel()
	st := newStore(t)
	newAssistant(t, st, "a", nil)
	_, err := st.CreateThread(t.Context(), tenant, "t", nil, map[string]any{"count": 2.0})
	require.NoError(t, err)
	run := enqueue(t, st, store.NewRun{AssistantID: "a", ThreadID: "t", Input: map[string]any{"x": "y"}})[0]

	tx, err := st.Pool().Begin(t.Context())
	require.NoError(t, err)
	defer tx.Rollback(context.Background())
	_, err = tx.Exec(t.Context(), `UPDATE threads SET state = '{"count": 3}' WHERE tenant_id = $1 AND id = 't'`, tenant)
	require.NoError(t, err)

	type result struct {
		c   []*store.Claim
		err error
	}
	done := make(chan result, 1)
	go func() {
		c, err := st.ClaimRuns(context.Background(), store.ClaimParams{WorkerID: "w", SlotType: "cpu", Limit: 1, LeaseTTL: time.Minute})
		done <- result{c, err}
	}()
	// The claim is under way once a backend waits for the update's lock; a claim that
	// does not wait answers first.
	waiting := func() bool {
		var n int
		require.NoError(t, st.Pool().QueryRow(t.Context(),
			`SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'`).Scan(&n))
		return n > 0
	}
	var early *result
	require.Eventually(t, func() bool {
		select {
		case r := <-done:
			early = &r
			return true
		default:
			return waiting()
		}
	}, 20*time.Second, 5*time.Millisecond)
	require.Nil(t, early, "the claim did not wait for the thread's state: it got %+v", early)
	require.NoError(t, tx.Commit(t.Context()))
	r := <-done
	require.NoError(t, r.err)
	require.Len(t, r.c, 1)
	require.Equal(t, run.ID, r.c[0].Run.ID)
	require.Equal(t, map[string]any{"count": 3.0, "x": "y"}, r.c[0].State)
}
