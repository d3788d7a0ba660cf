package executor_test

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/agentserver/agentserver/pkg/flow"
	"github.com/agentserver/agentserver/services/worker-agent/internal/executor"
)

// concurrentStep is a flow with a single executor "t" running the concurrent test executor
// (testdata/concurrent_executor.py: a thread per request, answers in any order).
func concurrentStep(t *testing.T, extra string) *flow.Flow {
	p, err := filepath.Abs(filepath.Join("testdata", "concurrent_executor.py"))
	require.NoError(t, err)
	return parseFlow(t, fmt.Sprintf("executors:\n  - name: t\n    command: [python3, %q]\n%s", p, extra))
}

// runAll runs one run per state at once and returns their outcomes and recorders, in order.
func runAll(t *testing.T, m *executor.Manager, f *flow.Flow, states []map[string]any) ([]executor.Outcome, []*recorder) {
	outs, recs := make([]executor.Outcome, len(states)), make([]*recorder, len(states))
	var wg sync.WaitGroup
	for i, st := range states {
		recs[i] = &recorder{}
		wg.Go(func() {
			outs[i], _ = runCtx(t.Context(), t, m, f, st, recs[i], func(s *executor.RunSpec) { s.RunName = fmt.Sprintf("runs/r%d", i) })
		})
	}
	wg.Wait()
	return outs, recs
}

// waitEvent returns a recorder whose onEvent closes the returned channel at the first event
// with data[key] set.
func waitEvent(key string) (*recorder, <-chan map[string]any) {
	ch := make(chan map[string]any, 1)
	var once sync.Once
	return &recorder{onEvent: func(data map[string]any) {
		if data[key] != nil {
			once.Do(func() { ch <- data })
		}
	}}, ch
}

// An executor of concurrency 4 gets four requests at once on one process, and each run gets
// its own answer and its own events, in order.
func TestConcurrentExecutorTakesSeveralRequests(t *testing.T) {
	t.Parallel()
	var logs bytes.Buffer
	var logMu sync.Mutex
	m := newManager(t, executor.Config{MaxConcurrency: 8, Logger: slog.New(slog.NewTextHandler(lockedWriter{&logs, &logMu}, nil))})
	f := concurrentStep(t, "    replicas: 1\n    concurrency: 4\n")
	outs, recs := runAll(t, m, f, gathering(4, 4))
	pids := map[int]bool{}
	for i, out := range outs {
		require.Equal(t, executor.OutcomeSucceeded, out.Kind, out.Error)
		require.Equal(t, fmt.Sprintf("runs/r%d", i), out.State["run"], "each run gets its own answer")
		require.Equal(t, float64(4), out.State["seen"], "four requests were in flight at once")
		pids[pidOf(t, out)] = true
		var ns []any
		for _, e := range recs[i].events {
			require.Equal(t, fmt.Sprintf("runs/r%d", i), e.data["run"], "each run gets its own events")
			ns = append(ns, e.data["n"])
		}
		require.Equal(t, []any{float64(0), float64(1), float64(2)}, ns)
	}
	require.Len(t, pids, 1, "one process took all four")

	// Its stderr belongs to no one run: it goes to the worker's log.
	out, rec := run(t, m, f, map[string]any{"action": "stderr"})
	require.Equal(t, executor.OutcomeSucceeded, out.Kind, out.Error)
	require.Empty(t, rec.logs)
	require.Eventually(t, func() bool {
		logMu.Lock()
		defer logMu.Unlock()
		return bytes.Contains(logs.Bytes(), []byte(`executor=t replica=0`)) &&
			bytes.Contains(logs.Bytes(), []byte(`line="a line from req-`))
	}, waitFor, 5e6)
}

// gathering is the states of runs runs that each wait until n requests are in flight on
// their process (concurrent_executor.py's "gather").
func gathering(runs, n int) []map[string]any {
	states := make([]map[string]any, runs)
	for i := range states {
		states[i] = map[string]any{"action": "gather", "n": n}
	}
	return states
}

type lockedWriter struct {
	b  *bytes.Buffer
	mu *sync.Mutex
}

func (w lockedWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.b.Write(p)
}

// An elastic executor of concurrency 4 on a worker of 8 slots runs two processes, each
// taking four requests.
func TestConcurrentExecutorElasticReplicas(t *testing.T) {
	t.Parallel()
	m := newManager(t, executor.Config{MaxConcurrency: 8})
	f := concurrentStep(t, "    concurrency: 4\n")
	outs, _ := runAll(t, m, f, gathering(8, 4))
	perPID := map[int]int{}
	for _, out := range outs {
		require.Equal(t, executor.OutcomeSucceeded, out.Kind, out.Error)
		require.Equal(t, float64(4), out.State["seen"])
		perPID[pidOf(t, out)]++
	}
	require.Len(t, perPID, 2)
	for pid, n := range perPID {
		require.Equal(t, 4, n, "pid %d", pid)
	}
}

// A run whose context ends abandons its request: the other requests on the replica go on,
// and once only abandoned requests are left the replica is killed.
func TestConcurrentExecutorAbandonsAnEndedRequest(t *testing.T) {
	t.Parallel()
	m := newManager(t, executor.Config{})
	f := concurrentStep(t, "    replicas: 1\n    concurrency: 2\n")
	file := filepath.Join(t.TempDir(), "go")

	ctx, cancel := context.WithCancelCause(t.Context())
	defer cancel(nil)
	hangRec, hanging := waitEvent("hanging")
	hangOut := make(chan executor.Outcome, 1)
	go func() {
		out, _ := runCtx(ctx, t, m, f, map[string]any{"action": "hang"}, hangRec)
		hangOut <- out
	}()
	pid := int((<-hanging)["pid"].(float64))

	awaitRec, waiting := waitEvent("waiting")
	awaitOut := make(chan executor.Outcome, 1)
	go func() {
		out, _ := runCtx(t.Context(), t, m, f, map[string]any{"action": "await", "file": file}, awaitRec)
		awaitOut <- out
	}()
	<-waiting

	cancel(executor.ErrCancelled)
	out := <-hangOut
	require.Equal(t, executor.OutcomeCancelled, out.Kind)
	requireAlive(t, pid) // the other request is still in flight on it

	require.NoError(t, os.WriteFile(file, nil, 0o644))
	out = <-awaitOut
	require.Equal(t, executor.OutcomeSucceeded, out.Kind, out.Error)
	require.Equal(t, pid, pidOf(t, out), "the same process answered it")
	requireGone(t, pid) // left with the abandoned request only

	after, _ := run(t, m, f, nil)
	require.Equal(t, executor.OutcomeSucceeded, after.Kind, after.Error)
	require.NotEqual(t, pid, pidOf(t, after))
}

// A crash, or an answer to a request nobody sent, fails every request in flight on the
// replica; a fresh one serves the next.
func TestConcurrentExecutorFailureFailsEveryRequest(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name, action string
		failure      string
		retryable    bool
	}{
		{"crash", "exit_after", "executor \"t\" exited with status 4: about to exit\nlast words", true},
		{"unknown id", "stranger", `executor "t" broke protocol v1: message answers id "nobody-sent-this", which is not a request in flight: "{\"type\": \"result\", \"id\": \"nobody-sent-this\", \"state\": {}}"`, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			m := newManager(t, executor.Config{})
			f := concurrentStep(t, "    replicas: 1\n    concurrency: 3\n")
			dir := t.TempDir()
			never, trigger := filepath.Join(dir, "never"), filepath.Join(dir, "now")

			outs := make(chan executor.Outcome, 2)
			for _, st := range []map[string]any{
				{"action": "await", "file": never},
				{"action": "exit_after", "file": trigger},
			} {
				rec, waiting := waitEvent("waiting")
				go func() {
					out, _ := runCtx(t.Context(), t, m, f, st, rec)
					outs <- out
				}()
				<-waiting
			}
			if tc.action == "exit_after" {
				require.NoError(t, os.WriteFile(trigger, nil, 0o644))
			} else {
				out, _ := run(t, m, f, map[string]any{"action": tc.action})
				require.Equal(t, executor.OutcomeFailed, out.Kind)
				require.Equal(t, tc.failure, out.Error)
			}
			for range 2 {
				out := <-outs
				require.Equal(t, executor.OutcomeFailed, out.Kind)
				require.Equal(t, tc.failure, out.Error)
				require.Equal(t, tc.retryable, out.Retryable)
			}
			after, _ := run(t, m, f, nil)
			require.Equal(t, executor.OutcomeSucceeded, after.Kind, after.Error)
			require.NoError(t, os.WriteFile(trigger, nil, 0o644)) // lets the crash case's other request end
		})
	}
}

// A map step fans its items out over one process of concurrency 8; the results keep the
// items' order.
func TestConcurrentExecutorMapStep(t *testing.T) {
	t.Parallel()
	m := newManager(t, executor.Config{})
	f := concurrentStep(t, "    replicas: 1\n    concurrency: 8\nsteps:\n  - {name: double, executor: t, map: items}\n")
	items := make([]any, 40)
	for i := range items {
		items[i] = float64(i)
	}
	out, _ := run(t, m, f, map[string]any{"items": items})
	require.Equal(t, executor.OutcomeSucceeded, out.Kind, out.Error)
	pids := map[float64]bool{}
	for i, r := range out.State["items"].([]any) {
		res := r.(map[string]any)
		require.Equal(t, float64(2*i), res["value"])
		pids[res["pid"].(float64)] = true
	}
	require.Len(t, pids, 1)
}

// Many runs at once over two shared replicas, a third of them cancelled while in flight:
// every run ends, each with its own answer or its cancellation, and later runs still find
// room (abandoned requests give their places back when answered).
func TestConcurrentExecutorUnderCancellations(t *testing.T) {
	t.Parallel()
	m := newManager(t, executor.Config{})
	f := concurrentStep(t, "    replicas: 2\n    concurrency: 8\n")
	var wg sync.WaitGroup
	for i := range 120 {
		wg.Go(func() {
			name := fmt.Sprintf("runs/c%d", i)
			ctx, cancel := context.WithCancelCause(t.Context())
			defer cancel(nil)
			seconds := float64(i%7) * 0.01
			if i%3 == 0 {
				time.AfterFunc(time.Duration(seconds*float64(time.Second)/2), func() { cancel(executor.ErrCancelled) })
			}
			out, rec := runCtx(ctx, t, m, f, map[string]any{"action": "sleep", "seconds": seconds}, &recorder{},
				func(s *executor.RunSpec) { s.RunName = name })
			switch out.Kind {
			case executor.OutcomeSucceeded:
				assert.Equal(t, name, out.State["run"], "its own answer")
				for _, e := range rec.events {
					assert.Equal(t, name, e.data["run"], "its own events")
				}
			case executor.OutcomeCancelled:
				assert.Zero(t, i%3, "run %d was not cancelled", i)
			default:
				t.Errorf("run %d: %v %s", i, out.Kind, out.Error)
			}
		})
	}
	wg.Wait()
	out, _ := run(t, m, f, map[string]any{"action": "ok"})
	require.Equal(t, executor.OutcomeSucceeded, out.Kind, out.Error)
}

// Output that answers nothing while no request is in flight replaces the replica, with a
// warning in the worker's log.
func TestConcurrentExecutorStrayOutputWhileIdle(t *testing.T) {
	t.Parallel()
	var logs bytes.Buffer
	var logMu sync.Mutex
	m := newManager(t, executor.Config{Logger: slog.New(slog.NewTextHandler(lockedWriter{&logs, &logMu}, nil))})
	f := concurrentStep(t, "    replicas: 1\n    concurrency: 2\n")
	first, _ := run(t, m, f, map[string]any{"action": "stray_later"})
	require.Equal(t, executor.OutcomeSucceeded, first.Kind, first.Error)
	requireGone(t, pidOf(t, first))
	logMu.Lock()
	require.Contains(t, logs.String(), `msg="executor broke protocol v1 while idle; replacing it"`)
	require.Contains(t, logs.String(), `message answers id \"stray\", which is not a request in flight`)
	logMu.Unlock()
	after, _ := run(t, m, f, nil)
	require.Equal(t, executor.OutcomeSucceeded, after.Kind, after.Error)
	require.NotEqual(t, pidOf(t, first), pidOf(t, after))
}
