package api

import (
	"context"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"

	agentserverv1 "github.com/agentserver/agentserver/gen/agentserver/v1"
	"github.com/agentserver/agentserver/pkg/pgtest"
	"github.com/agentserver/agentserver/pkg/store"
)

// reads counts the statements that read runs by id (GetRun's and GetRuns') and those
// that read runs' events (ListRunEvents' and ListEventsOfRuns').
type reads struct{ runs, events atomic.Int64 }

func (c *reads) TraceQueryStart(ctx context.Context, _ *pgx.Conn, d pgx.TraceQueryStartData) context.Context {
	if strings.Contains(d.SQL, "FROM runs WHERE") {
		c.runs.Add(1)
	}
	if strings.Contains(d.SQL, "FROM run_events") {
		c.events.Add(1)
	}
	return ctx
}

func (c *reads) TraceQueryEnd(context.Context, *pgx.Conn, pgx.TraceQueryEndData) {}

// newRunsWithStatements is the run service on a fresh database with one assistant "a",
// and a count of the statements that read runs and events.
func newRunsWithStatements(t *testing.T) (*Runs, *reads) {
	t.Helper()
	url := pgtest.NewDatabase(t)
	require.NoError(t, store.Migrate(t.Context(), url))
	count := &reads{}
	st, err := store.Open(t.Context(), url, store.WithQueryTracer(count))
	require.NoError(t, err)
	t.Cleanup(st.Close)
	_, err = st.CreateAssistant(t.Context(), &store.Assistant{TenantID: store.DefaultTenant, ID: "a",
		Flow: "executors:\n  - name: x\n    command: [\"true\"]\n", SlotType: "cpu"})
	require.NoError(t, err)
	s := NewRuns(st, DefaultLimits(), slog.Default(), maxBatch)
	t.Cleanup(s.Close)
	return s, count
}

// createRuns creates n runs of assistant "a".
func createRuns(t *testing.T, s *Runs, n int) []*agentserverv1.Run {
	t.Helper()
	reqs := make([]*agentserverv1.CreateRunRequest, n)
	for i := range reqs {
		reqs[i] = &agentserverv1.CreateRunRequest{Run: &agentserverv1.Run{Assistant: "assistants/a"}}
	}
	created, err := s.BatchCreateRuns(t.Context(), &agentserverv1.BatchCreateRunsRequest{Requests: reqs})
	require.NoError(t, err)
	return created.GetRuns()
}

// untilCancelled calls call for every run at once, cancels the runs (queued: they end
// CANCELLED at once) 0.6 s later and waits for the calls to return. It returns what
// statements counted in those 0.6 s, and the calls' errors.
func untilCancelled(t *testing.T, s *Runs, runs []*agentserverv1.Run, statements *atomic.Int64, call func(int, *agentserverv1.Run) error) (int64, []error) {
	t.Helper()
	errs := make([]error, len(runs))
	var wg sync.WaitGroup
	for i, r := range runs {
		wg.Go(func() { errs[i] = call(i, r) })
	}
	time.Sleep(600 * time.Millisecond)
	during := statements.Load()
	for _, r := range runs {
		_, err := s.CancelRun(t.Context(), &agentserverv1.CancelRunRequest{Name: r.GetName()})
		require.NoError(t, err)
	}
	wg.Wait()
	return during, errs
}

// Many clients waiting on their runs at once cost the database a few statements per
// polling instant, not one per waiter and poll (each of 200 waiters polls ~9 times in
// the 0.6 s before its run ends: ~1,800 reads of one run each before the run reader),
// and each waiter still gets its own run, as it ends.
func TestConcurrentWaitsShareReads(t *testing.T) {
	t.Parallel()
	s, count := newRunsWithStatements(t)
	const n = 200
	created := createRuns(t, s, n)

	got := make([]*agentserverv1.Run, n)
	waited, errs := untilCancelled(t, s, created, &count.runs, func(i int, r *agentserverv1.Run) (err error) {
		got[i], err = s.WaitRun(t.Context(), &agentserverv1.WaitRunRequest{Name: r.GetName(), Timeout: durationpb.New(time.Minute)})
		return err
	})
	for i, r := range created {
		require.NoError(t, errs[i], "waiter %d", i)
		require.Equal(t, r.GetName(), got[i].GetName(), "waiter %d got its own run", i)
		require.Equal(t, agentserverv1.Run_CANCELLED, got[i].GetState(), "waiter %d", i)
	}
	t.Logf("%d waiters: %d statements in 0.6 s of waiting, %d in all", n, waited, count.runs.Load())
	require.Less(t, waited, int64(n), "fewer statements than waiters, let alone polls")
}

// A read shared with other callers answers each with its own run, or NotFound for a run
// that is not there; a lone read is made at once.
func TestRunReaderAnswersEachCaller(t *testing.T) {
	t.Parallel()
	s, count := newRunsWithStatements(t)
	one, err := s.CreateRun(t.Context(), &agentserverv1.CreateRunRequest{Run: &agentserverv1.Run{Assistant: "assistants/a"}})
	require.NoError(t, err)
	got, err := s.GetRun(t.Context(), &agentserverv1.GetRunRequest{Name: one.GetName()})
	require.NoError(t, err)
	require.Equal(t, one.GetName(), got.GetName())
	require.Equal(t, int64(1), count.runs.Load())

	const n = 100
	var wg sync.WaitGroup
	errs := make([]error, n)
	names := make([]string, n)
	for i := range n {
		wg.Go(func() {
			ask := one.GetName()
			if i%3 == 1 {
				ask = "runs/" + uuid.NewString()
			}
			r, err := s.GetRun(t.Context(), &agentserverv1.GetRunRequest{Name: ask})
			errs[i], names[i] = err, r.GetName()
		})
	}
	wg.Wait()
	for i := range n {
		if i%3 == 1 {
			require.Equal(t, codes.NotFound, status.Code(errs[i]), fmt.Sprintf("read %d: %v", i, errs[i]))
			require.Empty(t, names[i], "read %d", i)
			continue
		}
		require.NoError(t, errs[i], "read %d", i)
		require.Equal(t, one.GetName(), names[i], "read %d", i)
	}
}

// eventStream is a StreamRunEvents server stream that keeps what is sent.
type eventStream struct {
	grpc.ServerStream // nil: StreamRunEvents uses only Context and Send
	ctx               context.Context
	sent              []*agentserverv1.RunEvent
}

func (f *eventStream) Context() context.Context { return f.ctx }

func (f *eventStream) Send(e *agentserverv1.RunEvent) error {
	f.sent = append(f.sent, e)
	return nil
}

// Many streams of runs' events poll at the same instants and share statements (200
// streams polling one by one every 150 ms, as they did, made 800 statements in 0.6 s),
// and each stream gets its own run's events, to the terminal one.
func TestConcurrentStreamsShareReads(t *testing.T) {
	t.Parallel()
	s, count := newRunsWithStatements(t)
	const n = 200
	created := createRuns(t, s, n)
	streams := make([]*eventStream, n)
	for i := range streams {
		streams[i] = &eventStream{ctx: t.Context()}
	}
	polled, errs := untilCancelled(t, s, created, &count.events, func(i int, r *agentserverv1.Run) error {
		return s.StreamRunEvents(&agentserverv1.StreamRunEventsRequest{Name: r.GetName()}, streams[i])
	})
	for i, r := range created {
		require.NoError(t, errs[i], "stream %d", i)
		var states []string
		for _, e := range streams[i].sent {
			require.Equal(t, r.GetName(), e.GetRun(), "stream %d", i)
			states = append(states, e.GetData().GetFields()["state"].GetStringValue())
		}
		require.Equal(t, []string{"QUEUED", "CANCELLED"}, states, "stream %d", i)
	}
	t.Logf("%d streams: %d statements in 0.6 s of polling, %d in all", n, polled, count.events.Load())
	require.Less(t, polled, int64(n), "fewer statements than streams, let alone polls")
}

// Waiters at one delay poll at the same instants whenever they started polling.
func TestNextPollAlignsWaiters(t *testing.T) {
	t.Parallel()
	for _, delay := range []time.Duration{waitPollMin, 40 * time.Millisecond, 160 * time.Millisecond, waitPollMax} {
		base := time.Now().Truncate(delay) // a polling instant: the others follow within delay
		var at time.Time
		for _, off := range []time.Duration{0, time.Microsecond, delay / 3, delay - time.Nanosecond} {
			now := base.Add(off)
			d := nextPoll(now, delay)
			require.Greater(t, d, time.Duration(0), "delay %s, at +%s", delay, off)
			require.LessOrEqual(t, d, delay, "delay %s, at +%s", delay, off)
			if at.IsZero() {
				at = now.Add(d)
			}
			require.Equal(t, at, now.Add(d), "delay %s: a waiter at +%s polls with the others", delay, off)
		}
	}
}
