package executor_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/agentserver/agentserver/pkg/flow"
	"github.com/agentserver/agentserver/services/worker-agent/internal/executor"
)

// waitFor bounds every poll in these tests; conditions normally hold within milliseconds.
const waitFor = 20 * time.Second

func testExecutor(t *testing.T) string {
	t.Helper()
	p, err := filepath.Abs(filepath.Join("testdata", "executor.py"))
	require.NoError(t, err)
	return p
}

func newManager(t *testing.T, cfg executor.Config) *executor.Manager {
	t.Helper()
	if cfg.Dir == "" {
		cfg.Dir = t.TempDir()
	}
	m, err := executor.NewManager(cfg)
	require.NoError(t, err)
	t.Cleanup(func() { require.NoError(t, m.Close()) })
	return m
}

func parseFlow(t testing.TB, src string) *flow.Flow {
	t.Helper()
	f, err := flow.Parse([]byte(src))
	require.NoError(t, err)
	return f
}

// oneStep is a flow with a single executor "t" running the test executor.
func oneStep(t *testing.T, extra string) *flow.Flow {
	return parseFlow(t, fmt.Sprintf("executors:\n  - name: t\n    command: [python3, %q]\n%s", testExecutor(t), extra))
}

type checkpoint struct {
	next  string
	state map[string]any
}

type event struct {
	step string
	data map[string]any
}

// recorder collects callbacks.
type recorder struct {
	mu          sync.Mutex
	events      []event
	logs        []string
	starts      []string
	checkpoints []checkpoint
	// refuse makes OnCheckpoint fail.
	refuse error
	// onEvent, when set, also sees each event.
	onEvent func(data map[string]any)
}

func (r *recorder) callbacks() executor.Callbacks {
	return executor.Callbacks{
		OnEvent: func(step string, data map[string]any) {
			r.mu.Lock()
			r.events = append(r.events, event{step, data})
			f := r.onEvent
			r.mu.Unlock()
			if f != nil {
				f(data)
			}
		},
		OnLog: func(executor, line string) {
			r.mu.Lock()
			defer r.mu.Unlock()
			r.logs = append(r.logs, executor+": "+line)
		},
		OnStepStart: func(step string) {
			r.mu.Lock()
			defer r.mu.Unlock()
			r.starts = append(r.starts, step)
		},
		OnCheckpoint: func(next string, state map[string]any) error {
			r.mu.Lock()
			defer r.mu.Unlock()
			r.checkpoints = append(r.checkpoints, checkpoint{next, state})
			return r.refuse
		},
	}
}

func (r *recorder) nexts() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []string
	for _, c := range r.checkpoints {
		out = append(out, c.next)
	}
	return out
}

func run(t *testing.T, m *executor.Manager, f *flow.Flow, state map[string]any, mod ...func(*executor.RunSpec)) (executor.Outcome, *recorder) {
	t.Helper()
	return runCtx(t.Context(), t, m, f, state, &recorder{}, mod...)
}

func runCtx(ctx context.Context, t *testing.T, m *executor.Manager, f *flow.Flow, state map[string]any, rec *recorder, mod ...func(*executor.RunSpec)) (executor.Outcome, *recorder) {
	t.Helper()
	spec := executor.RunSpec{
		RunName: "runs/" + strings.ReplaceAll(strings.ToLower(t.Name()), "/", "-"),
		Attempt: 1,
		FlowKey: "assistants/test@1",
		Flow:    f,
		State:   state,
		Config:  map[string]any{"model": "tiny"},
	}
	for _, fn := range mod {
		fn(&spec)
	}
	return m.Run(ctx, spec, rec.callbacks()), rec
}

func pidOf(t *testing.T, out executor.Outcome) int {
	t.Helper()
	require.Contains(t, out.State, "pid", "outcome %+v", out)
	return int(out.State["pid"].(float64))
}

// requireGone polls until no process has the PID (reaped, not merely a zombie of ours).
func requireGone(t *testing.T, pid int) {
	t.Helper()
	require.Eventually(t, func() bool {
		return errors.Is(syscall.Kill(pid, 0), syscall.ESRCH)
	}, waitFor, 5*time.Millisecond, "process %d is still there", pid)
}

func requireAlive(t *testing.T, pid int) {
	t.Helper()
	require.NoError(t, syscall.Kill(pid, 0), "process %d is gone", pid)
}

func repoRoot(t testing.TB) string {
	t.Helper()
	root, err := filepath.Abs(filepath.Join("..", "..", "..", ".."))
	require.NoError(t, err)
	require.FileExists(t, filepath.Join(root, "go.work"))
	return root
}

// TestEchoExample runs examples/echo/flow.yaml as the dev-mode worker does: from the
// repository root.
func TestEchoExample(t *testing.T) {
	t.Parallel()
	root := repoRoot(t)
	src, err := os.ReadFile(filepath.Join(root, "examples", "echo", "flow.yaml"))
	require.NoError(t, err)
	f := parseFlow(t, string(src))
	m := newManager(t, executor.Config{Dir: root})

	out, rec := run(t, m, f, map[string]any{"hello": "world"})
	require.Equal(t, executor.OutcomeSucceeded, out.Kind, out.Error)
	require.Equal(t, map[string]any{"hello": "world", "echo": true}, out.State)
	require.Equal(t, []string{"echo"}, rec.starts)
	require.Equal(t, []string{""}, rec.nexts())
	require.Len(t, rec.events, 1)
	require.Equal(t, "echo", rec.events[0].step)
	require.Eventually(t, func() bool {
		rec.mu.Lock()
		defer rec.mu.Unlock()
		return slices.ContainsFunc(rec.logs, func(l string) bool { return strings.Contains(l, "started for runs/testechoexample") })
	}, waitFor, 5*time.Millisecond, "stderr reaches OnLog")

	out, _ = run(t, m, f, map[string]any{"fail": "boom"})
	require.Equal(t, executor.OutcomeFailed, out.Kind)
	require.Equal(t, "boom", out.Error)
	require.False(t, out.Retryable)
	require.Equal(t, "echo", out.Step)

	out, _ = run(t, m, f, map[string]any{"exit": 3})
	require.Equal(t, executor.OutcomeFailed, out.Kind)
	require.True(t, strings.HasPrefix(out.Error, `executor "echo" exited with status 3: `), out.Error)
	require.Contains(t, out.Error, "exiting with status 3 as the state asks")

	out, _ = run(t, m, f, map[string]any{"interrupt": map[string]any{"q": "sure?"}})
	require.Equal(t, executor.OutcomeInterrupted, out.Kind, out.Error)
	require.Equal(t, map[string]any{"q": "sure?"}, out.Prompt)
	out, _ = run(t, m, f, out.State, func(s *executor.RunSpec) {
		s.StartStep, s.Resume = out.Step, json.RawMessage(`"yes"`)
	})
	require.Equal(t, executor.OutcomeSucceeded, out.Kind, out.Error)
	require.Equal(t, "yes", out.State["resume"])
}

func TestEnvironmentAndWorkdir(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	require.NoError(t, os.MkdirAll(filepath.Join(dir, "sub", "dir"), 0o755))
	m := newManager(t, executor.Config{Dir: dir, Env: append(os.Environ(), "FROM_WORKER=w", "FROM_FLOW=overridden")})
	f := oneStep(t, "    workdir: sub/dir\n    env: {FROM_FLOW: f}\n")

	out, _ := run(t, m, f, map[string]any{"in": 1.0}, func(s *executor.RunSpec) {
		s.RunName, s.Attempt = "runs/one", 2
		s.Env = []string{"CUDA_VISIBLE_DEVICES=1", "AGENTSERVER_RUN=not-allowed"}
	})
	require.Equal(t, executor.OutcomeSucceeded, out.Kind, out.Error)
	require.Equal(t, 1.0, out.State["in"])
	require.Equal(t, filepath.Join(dir, "sub", "dir"), out.State["cwd"])
	require.Equal(t, "runs/one", out.State["run"])
	require.Equal(t, 2.0, out.State["attempt"])
	require.Equal(t, map[string]any{"model": "tiny"}, out.State["config"])
	require.Equal(t, map[string]any{
		"AGENTSERVER_EXECUTOR": "t",
		"AGENTSERVER_REPLICA":  "0",
		"AGENTSERVER_RUN":      "runs/one",
		"CUDA_VISIBLE_DEVICES": "1",
		"FROM_FLOW":            "f",
		"FROM_WORKER":          "w",
	}, out.State["env"])
}

func TestReplicaReuse(t *testing.T) {
	t.Parallel()
	m := newManager(t, executor.Config{})
	f := oneStep(t, "")

	first, _ := run(t, m, f, nil, func(s *executor.RunSpec) { s.RunName = "runs/one" })
	require.Equal(t, executor.OutcomeSucceeded, first.Kind, first.Error)
	second, _ := run(t, m, f, nil, func(s *executor.RunSpec) { s.RunName = "runs/two" })
	require.Equal(t, executor.OutcomeSucceeded, second.Kind, second.Error)

	require.Equal(t, pidOf(t, first), pidOf(t, second), "the warm replica serves the second run")
	require.Equal(t, "runs/two", second.State["run"], "requests carry the current run")
	require.Equal(t, "runs/one", second.State["env"].(map[string]any)["AGENTSERVER_RUN"], "env names the run it started for")

	// Another flow version or another caller environment never shares the replica.
	other, _ := run(t, m, f, nil, func(s *executor.RunSpec) { s.FlowKey = "assistants/test@2" })
	require.NotEqual(t, pidOf(t, first), pidOf(t, other))
	gpu, _ := run(t, m, f, nil, func(s *executor.RunSpec) { s.Env = []string{"CUDA_VISIBLE_DEVICES=0"} })
	require.NotEqual(t, pidOf(t, first), pidOf(t, gpu))
	require.NotEqual(t, pidOf(t, other), pidOf(t, gpu))
}

func TestMultiStepRouting(t *testing.T) {
	t.Parallel()
	m := newManager(t, executor.Config{})
	f := parseFlow(t, fmt.Sprintf(`executors:
  - name: t
    command: [python3, %q]
steps:
  - {name: a, executor: t}
  - {name: b, executor: t, next: d}
  - {name: c, executor: t}
  - {name: d, executor: t}
`, testExecutor(t)))

	// Default order with b's static next skipping c.
	out, rec := run(t, m, f, nil)
	require.Equal(t, executor.OutcomeSucceeded, out.Kind, out.Error)
	require.Equal(t, []any{"a", "b", "d"}, out.State["visits"])
	require.Equal(t, []string{"a", "b", "d"}, rec.starts)
	require.Equal(t, []string{"b", "d", ""}, rec.nexts())
	require.Equal(t, []any{"a", "b"}, rec.checkpoints[1].state["visits"], "checkpoints carry the state after each step")

	// A result's next overrides order and static next.
	out, rec = run(t, m, f, map[string]any{"routes": map[string]any{"a": "c", "d": "b", "b": "c"}})
	require.Equal(t, executor.OutcomeFailed, out.Kind, "a→c→d→b→c→d→… loops until max_steps")
	require.Equal(t, "flow exceeded max_steps (100)", out.Error)
	require.Len(t, rec.checkpoints, 100)

	// Starting in the middle.
	out, _ = run(t, m, f, map[string]any{"visits": []any{"x"}}, func(s *executor.RunSpec) { s.StartStep = "c" })
	require.Equal(t, executor.OutcomeSucceeded, out.Kind, out.Error)
	require.Equal(t, []any{"x", "c", "d"}, out.State["visits"])

	// An unknown next fails the run, naming it, with the last checkpointed state.
	out, rec = run(t, m, f, map[string]any{"routes": map[string]any{"b": "nowhere"}})
	require.Equal(t, executor.OutcomeFailed, out.Kind)
	require.Equal(t, `step "b" chose next step "nowhere", which the flow does not have`, out.Error)
	require.Equal(t, "b", out.Step)
	require.Equal(t, []any{"a"}, out.State["visits"])
	require.Equal(t, []string{"b"}, rec.nexts())

	out, _ = run(t, m, f, nil, func(s *executor.RunSpec) { s.StartStep = "zz" })
	require.Equal(t, executor.OutcomeFailed, out.Kind)
	require.Contains(t, out.Error, `no step "zz"`)
}

func TestMaxStepsGuard(t *testing.T) {
	t.Parallel()
	m := newManager(t, executor.Config{})
	f := parseFlow(t, fmt.Sprintf(`max_steps: 5
executors:
  - {name: t, command: [python3, %q]}
steps:
  - {name: a, executor: t}
  - {name: b, executor: t, next: a}
`, testExecutor(t)))
	out, rec := run(t, m, f, nil)
	require.Equal(t, executor.OutcomeFailed, out.Kind)
	require.Equal(t, "flow exceeded max_steps (5)", out.Error)
	require.Equal(t, []string{"b", "a", "b", "a", "b"}, rec.nexts())
	require.Equal(t, []any{"a", "b", "a", "b", "a"}, out.State["visits"])
	require.Equal(t, "b", out.Step)
}

func TestMapFansOutAcrossReplicas(t *testing.T) {
	t.Parallel()
	m := newManager(t, executor.Config{})
	f := oneStep(t, "    replicas: 3\nsteps:\n  - {name: double, executor: t, map: items}\n")
	items := make([]any, 20)
	for i := range items {
		items[i] = float64(i)
	}
	dir := t.TempDir()
	out, rec := run(t, m, f, map[string]any{"items": items, "other": "kept"}, func(s *executor.RunSpec) {
		s.Config = map[string]any{"map": "sibling", "dir": dir}
	})
	require.Equal(t, executor.OutcomeSucceeded, out.Kind, out.Error)
	require.Equal(t, "kept", out.State["other"])

	results := out.State["items"].([]any)
	require.Len(t, results, 20)
	pids := map[float64]bool{}
	for i, r := range results {
		res := r.(map[string]any)
		require.Equal(t, float64(2*i), res["value"], "results are in item order")
		// Every item, the first one started included, waited until another replica had
		// started an item: so two were in flight at once.
		require.Equal(t, true, res["sibling"], "item %d", i)
		pids[res["pid"].(float64)] = true
	}
	require.GreaterOrEqual(t, len(pids), 2, "items spread over replicas")
	require.LessOrEqual(t, len(pids), 3, "never more replicas than asked for")
	require.Len(t, rec.events, 20)
	require.Equal(t, []string{""}, rec.nexts())

	markers, err := filepath.Glob(filepath.Join(dir, "start-*"))
	require.NoError(t, err)
	require.Len(t, markers, 20)
}

func TestMapElasticIsBoundedByMaxConcurrency(t *testing.T) {
	t.Parallel()
	m := newManager(t, executor.Config{MaxConcurrency: 2})
	f := oneStep(t, "steps:\n  - {name: each, executor: t, map: items}\n")
	items := make([]any, 12)
	for i := range items {
		items[i] = float64(i)
	}
	dir := t.TempDir()
	out, _ := run(t, m, f, map[string]any{"items": items}, func(s *executor.RunSpec) {
		s.Config = map[string]any{"map": "sibling", "dir": dir}
	})
	require.Equal(t, executor.OutcomeSucceeded, out.Kind, out.Error)
	pids := map[float64]bool{}
	for _, r := range out.State["items"].([]any) {
		pids[r.(map[string]any)["pid"].(float64)] = true
	}
	require.Len(t, pids, 2)
}

func TestMapRequests(t *testing.T) {
	t.Parallel()
	m := newManager(t, executor.Config{})
	f := oneStep(t, "steps:\n  - {name: each, executor: t, map: items}\n")

	out, _ := run(t, m, f, map[string]any{"items": []any{"a", nil, 3.0}, "ctx": "c"}, func(s *executor.RunSpec) {
		s.Resume = "again"
	})
	require.Equal(t, executor.OutcomeSucceeded, out.Kind, out.Error)
	results := out.State["items"].([]any)
	require.Len(t, results, 3)
	for i, want := range []any{"a", nil, 3.0} {
		res := results[i].(map[string]any)
		require.Equal(t, want, res["value"])
		require.Equal(t, map[string]any{"ctx": "c"}, res["state"], "items get the state without the list")
		require.Equal(t, "again", res["resume"], "a resumed map step resumes every item")
	}

	// An item answered without state keeps its value.
	out, _ = run(t, m, f, map[string]any{"items": []any{1.0, "two"}}, func(s *executor.RunSpec) {
		s.Config = map[string]any{"map": "keep"}
	})
	require.Equal(t, executor.OutcomeSucceeded, out.Kind, out.Error)
	require.Equal(t, []any{1.0, "two"}, out.State["items"])

	out, _ = run(t, m, f, map[string]any{"items": []any{}})
	require.Equal(t, executor.OutcomeSucceeded, out.Kind, out.Error)
	require.Equal(t, []any{}, out.State["items"])

	out, _ = run(t, m, f, map[string]any{"items": "nope"})
	require.Equal(t, executor.OutcomeFailed, out.Kind)
	require.Equal(t, `step "each" maps over state.items, which must be a list, not a string`, out.Error)

	out, _ = run(t, m, f, map[string]any{})
	require.Equal(t, executor.OutcomeFailed, out.Kind)
	require.Contains(t, out.Error, "state.items, which is missing")

	out, _ = run(t, m, f, map[string]any{"items": []any{1.0, 2.0, map[string]any{"fail": "bad item"}, 4.0}})
	require.Equal(t, executor.OutcomeFailed, out.Kind)
	require.Equal(t, "items[2]: bad item", out.Error)
	require.Equal(t, "each", out.Step)
}

func TestErrorLine(t *testing.T) {
	t.Parallel()
	m := newManager(t, executor.Config{})
	out, rec := run(t, m, oneStep(t, ""), map[string]any{"action": "error", "message": "model unavailable"})
	require.Equal(t, executor.OutcomeFailed, out.Kind)
	require.Equal(t, "model unavailable", out.Error)
	require.True(t, out.Retryable)
	require.Equal(t, "t", out.Step)
	require.Equal(t, map[string]any{"action": "error", "message": "model unavailable"}, out.State)
	require.Empty(t, rec.checkpoints)
}

func TestEventsAndStepStart(t *testing.T) {
	t.Parallel()
	m := newManager(t, executor.Config{})
	out, rec := run(t, m, oneStep(t, ""), map[string]any{"action": "events"})
	require.Equal(t, executor.OutcomeSucceeded, out.Kind, out.Error)
	require.Equal(t, map[string]any{"done": true}, out.State)
	require.Equal(t, []event{
		{"t", map[string]any{"n": 0.0}},
		{"t", map[string]any{"n": 1.0}},
		{"t", map[string]any{"n": 2.0}},
	}, rec.events)
	require.Equal(t, []string{"t"}, rec.starts)
}

func TestExitFailsStepAndReplicaIsReplaced(t *testing.T) {
	t.Parallel()
	m := newManager(t, executor.Config{})
	f := oneStep(t, "")
	before, _ := run(t, m, f, nil)
	require.Equal(t, executor.OutcomeSucceeded, before.Kind, before.Error)

	out, _ := run(t, m, f, map[string]any{"action": "exit", "code": 3})
	require.Equal(t, executor.OutcomeFailed, out.Kind)
	require.Equal(t, "executor \"t\" exited with status 3: first words\nlast words", out.Error)
	require.True(t, out.Retryable)
	requireGone(t, pidOf(t, before))

	after, _ := run(t, m, f, nil)
	require.Equal(t, executor.OutcomeSucceeded, after.Kind, after.Error)
	require.NotEqual(t, pidOf(t, before), pidOf(t, after), "a fresh replica replaces the one that crashed")
}

func TestResultThenExit(t *testing.T) {
	t.Parallel()
	m := newManager(t, executor.Config{})
	f := oneStep(t, "")
	out, _ := run(t, m, f, map[string]any{"action": "result_then_exit"})
	require.Equal(t, executor.OutcomeSucceeded, out.Kind, out.Error)
	first := pidOf(t, out)
	requireGone(t, first)
	out, _ = run(t, m, f, nil)
	require.Equal(t, executor.OutcomeSucceeded, out.Kind, out.Error)
	require.NotEqual(t, first, pidOf(t, out))
}

// A replica that wrote to stdout outside a request, or closed it, is never reused: the pool
// retires it when it goes back (a stray line that came in the result's own write is already
// buffered) or, at the latest, when it hands it out again (one look into the pipe), and a
// fresh replica serves the next request; the stray line is never read as part of it.
func TestIdleReplicaThatWroteOrClosedStdoutIsRetired(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name  string
		state map[string]any
		wait  time.Duration // for the replica to act while idle
	}{
		{"stray line in the result's write", map[string]any{"action": "unsolicited"}, 0},
		{"stray line written later", map[string]any{"action": "unsolicited_later", "delay": 0.05}, 300 * time.Millisecond},
		{"stdout closed", map[string]any{"action": "close_stdout"}, 100 * time.Millisecond},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			m := newManager(t, executor.Config{})
			f := oneStep(t, "")
			out, _ := run(t, m, f, tc.state)
			require.Equal(t, executor.OutcomeSucceeded, out.Kind, out.Error)
			first := pidOf(t, out)
			time.Sleep(tc.wait)
			out, _ = run(t, m, f, nil)
			require.Equal(t, executor.OutcomeSucceeded, out.Kind, out.Error)
			require.NotEqual(t, first, pidOf(t, out), "the replica was reused")
			requireGone(t, first)
		})
	}
}

// A result whose state is, byte for byte, the state the request carried leaves the state
// map as it was (the very map, not decoded again); the same state written differently is
// decoded into an equal map.
func TestUnchangedStateIsNotDecodedAgain(t *testing.T) {
	t.Parallel()
	m := newManager(t, executor.Config{})
	f := oneStep(t, "")
	same := func(a, b map[string]any) bool {
		return reflect.ValueOf(a).UnsafePointer() == reflect.ValueOf(b).UnsafePointer()
	}
	for _, spaced := range []bool{false, true} {
		state := map[string]any{"action": "echo", "spaced": spaced, "n": 1.5, "list": []any{"a", nil, true}, "obj": map[string]any{"k": "v"}}
		out, _ := run(t, m, f, state)
		require.Equal(t, executor.OutcomeSucceeded, out.Kind, out.Error)
		require.Equal(t, state, out.State)
		require.Equal(t, !spaced, same(state, out.State), "spaced=%v", spaced)
	}
}

func TestStdoutClosedWithoutAnswer(t *testing.T) {
	t.Parallel()
	m := newManager(t, executor.Config{ExitGrace: 200 * time.Millisecond})
	out, rec := run(t, m, oneStep(t, ""), map[string]any{"action": "close_stdout", "answer": false})
	require.Equal(t, executor.OutcomeFailed, out.Kind)
	require.Equal(t, `executor "t" closed its stdout`, out.Error)
	// It was alive, reading stdin, until the worker gave up on it: then it was killed.
	var pid int
	for _, l := range rec.logs {
		if _, err := fmt.Sscanf(l, "t: pid %d", &pid); err == nil {
			break
		}
	}
	require.NotZero(t, pid, "stderr: %q", rec.logs)
	requireGone(t, pid)
}

func TestExitWhileAnEscapedChildHoldsStdout(t *testing.T) {
	t.Parallel()
	m := newManager(t, executor.Config{ExitGrace: 300 * time.Millisecond})
	pidfile := filepath.Join(t.TempDir(), "child")
	start := time.Now()
	out, _ := run(t, m, oneStep(t, ""), map[string]any{"action": "escape_and_exit", "pidfile": pidfile})
	// stdout never ends (the child holds it), so the exit is noticed by the process's
	// reaping and the answer given up after the grace: not after the run's timeout.
	require.Equal(t, executor.OutcomeFailed, out.Kind)
	require.Equal(t, "executor \"t\" exited with status 5: escaping", out.Error)
	require.Less(t, time.Since(start), waitFor)
	raw, err := os.ReadFile(pidfile)
	require.NoError(t, err)
	child, err := strconv.Atoi(string(raw))
	require.NoError(t, err)
	requireAlive(t, child) // it escaped the group: not ours to kill, but it no longer blocks us
	require.NoError(t, syscall.Kill(child, syscall.SIGKILL))
}

func TestProtocolErrors(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name  string
		state map[string]any
		cfg   executor.Config
		want  []string
	}{
		{"garbage", map[string]any{"action": "garbage"}, executor.Config{},
			[]string{`executor "t" broke protocol v1: output is not a JSON object: "hello, this is not json"`}},
		{"wrong id", map[string]any{"action": "badid"}, executor.Config{},
			[]string{`message answers id "someone-else", but the request in flight is "req-`, `{\"type\": \"result\"`}},
		{"unknown type", map[string]any{"action": "badtype"}, executor.Config{},
			[]string{`message has unknown type "bogus"`}},
		{"state not an object", map[string]any{"action": "badstate"}, executor.Config{},
			[]string{`result state must be a JSON object: "[1, 2]"`}},
		{"oversized line", map[string]any{"action": "oversize", "size": 10000}, executor.Config{MaxLineBytes: 4096},
			[]string{"output line longer than 4096 bytes", `"{\"type\": \"event\"`, "… (4096 bytes)"}},
		{"too much output", map[string]any{"action": "flood", "count": 100}, executor.Config{MaxStepOutputBytes: 50_000},
			[]string{"more than 50000 bytes of output for one request"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			m := newManager(t, tc.cfg)
			f := oneStep(t, "")
			before, _ := run(t, m, f, nil)
			require.Equal(t, executor.OutcomeSucceeded, before.Kind, before.Error)

			out, _ := run(t, m, f, tc.state)
			require.Equal(t, executor.OutcomeFailed, out.Kind)
			require.False(t, out.Retryable)
			for _, w := range tc.want {
				require.Contains(t, out.Error, w)
			}
			if tc.name != "state not an object" {
				// The replica that broke the protocol is killed and replaced.
				requireGone(t, pidOf(t, before))
				after, _ := run(t, m, f, nil)
				require.Equal(t, executor.OutcomeSucceeded, after.Kind, after.Error)
				require.NotEqual(t, pidOf(t, before), pidOf(t, after))
			}
		})
	}
}

// runContexts are the two kinds of context a run can have: a run context (the worker's,
// whose end interrupts reads itself) and any other context (context.AfterFunc).
var runContexts = []struct {
	name string
	new  func(t *testing.T) (context.Context, context.CancelCauseFunc)
}{
	{"run context", func(*testing.T) (context.Context, context.CancelCauseFunc) { return executor.NewRunContext() }},
	{"other context", func(t *testing.T) (context.Context, context.CancelCauseFunc) {
		return context.WithCancelCause(t.Context())
	}},
}

// hang runs the "hang" action (a replica that starts `sleep 1000` and never answers), ends ctx
// with cause once both processes are up, and checks that both are gone after the outcome.
func hang(t *testing.T, ctx context.Context, cancel context.CancelCauseFunc, cause error) executor.Outcome {
	m := newManager(t, executor.Config{})
	pidfile := filepath.Join(t.TempDir(), "pids")
	defer cancel(nil)
	rec := &recorder{onEvent: func(data map[string]any) {
		if data["hanging"] == true {
			cancel(cause)
		}
	}}
	out, _ := runCtx(ctx, t, m, oneStep(t, ""), map[string]any{"action": "hang", "pidfile": pidfile}, rec)

	raw, err := os.ReadFile(pidfile)
	require.NoError(t, err)
	fields := strings.Fields(string(raw))
	require.Len(t, fields, 2)
	for _, s := range fields {
		pid, err := strconv.Atoi(s)
		require.NoError(t, err)
		requireGone(t, pid)
	}
	return out
}

// A run's context ending while its executor hangs ends the run by the context's cause and
// kills the replica's process group, whatever kind of context the run has.
func TestEndedContextKillsProcessGroup(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		cause error
		kind  executor.OutcomeKind
	}{
		{executor.ErrTimedOut, executor.OutcomeTimedOut},
		{executor.ErrCancelled, executor.OutcomeCancelled},
	} {
		for _, rc := range runContexts {
			t.Run(tc.cause.Error()+", "+rc.name, func(t *testing.T) {
				t.Parallel()
				ctx, cancel := rc.new(t)
				out := hang(t, ctx, cancel, tc.cause)
				require.Equal(t, tc.kind, out.Kind)
				require.Equal(t, tc.cause.Error(), out.Error)
				require.Equal(t, "t", out.Step)
			})
		}
	}
}

// Ending a run's context after its run leaves the replica that served it warm for the next
// run: only an end that may interrupt a read makes a replica unusable.
func TestReplicaReusedAfterItsRunContextEnds(t *testing.T) {
	t.Parallel()
	m := newManager(t, executor.Config{})
	f := oneStep(t, "")
	ctx, cancel := executor.NewRunContext()
	first, _ := runCtx(ctx, t, m, f, nil, &recorder{}, func(s *executor.RunSpec) { s.RunName = "runs/one" })
	require.Equal(t, executor.OutcomeSucceeded, first.Kind, first.Error)
	cancel(nil) // as the worker does once the run is over
	ctx, cancel = executor.NewRunContext()
	defer cancel(nil)
	second, _ := runCtx(ctx, t, m, f, nil, &recorder{}, func(s *executor.RunSpec) { s.RunName = "runs/two" })
	require.Equal(t, executor.OutcomeSucceeded, second.Kind, second.Error)
	require.Equal(t, pidOf(t, first), pidOf(t, second), "the warm replica serves the second run")
}

func TestDeadlineIsTimeout(t *testing.T) {
	t.Parallel()
	m := newManager(t, executor.Config{})
	ctx, cancel := context.WithTimeout(t.Context(), 200*time.Millisecond)
	defer cancel()
	out, _ := runCtx(ctx, t, m, oneStep(t, ""), map[string]any{"action": "hang", "pidfile": filepath.Join(t.TempDir(), "p")}, &recorder{})
	require.Equal(t, executor.OutcomeTimedOut, out.Kind)
}

func TestInterruptAndResume(t *testing.T) {
	t.Parallel()
	m := newManager(t, executor.Config{})
	f := oneStep(t, "")
	out, rec := run(t, m, f, map[string]any{"action": "interrupt"})
	require.Equal(t, executor.OutcomeInterrupted, out.Kind, out.Error)
	require.Equal(t, map[string]any{"question": "continue?"}, out.Prompt)
	require.Equal(t, "t", out.Step)
	require.Empty(t, rec.checkpoints)

	out, _ = run(t, m, f, out.State, func(s *executor.RunSpec) {
		s.StartStep, s.Resume = out.Step, json.RawMessage(`{"ok":true}`)
	})
	require.Equal(t, executor.OutcomeSucceeded, out.Kind, out.Error)
	require.Equal(t, map[string]any{"answer": map[string]any{"ok": true}}, out.State)
}

func TestCheckpointRefusedIsLeaseLost(t *testing.T) {
	t.Parallel()
	m := newManager(t, executor.Config{})
	rec := &recorder{refuse: errors.New("fencing epoch 7 is stale")}
	out, _ := runCtx(t.Context(), t, m, oneStep(t, ""), nil, rec)
	require.Equal(t, executor.OutcomeLeaseLost, out.Kind)
	require.Contains(t, out.Error, "fencing epoch 7 is stale")
}

func TestStderrIsBounded(t *testing.T) {
	t.Parallel()
	m := newManager(t, executor.Config{MaxLogLineBytes: 32, MaxStepLogBytes: 400})
	rec := &recorder{}
	out, _ := runCtx(t.Context(), t, m, oneStep(t, ""), map[string]any{"action": "stderr", "lines": 50, "width": 100}, rec)
	require.Equal(t, executor.OutcomeSucceeded, out.Kind, out.Error)
	// Lines are written before the result, but read on another pipe: wait for the notice.
	require.Eventually(t, func() bool {
		rec.mu.Lock()
		defer rec.mu.Unlock()
		return len(rec.logs) > 0 && strings.Contains(rec.logs[len(rec.logs)-1], "further stderr of this step dropped after 400 bytes")
	}, waitFor, 5*time.Millisecond)
	rec.mu.Lock()
	defer rec.mu.Unlock()
	require.Less(t, len(rec.logs), 50)
	require.Equal(t, "t: line 0 zzzzzzzzzzzzzzzzzzzzzzzzz … [line truncated]", rec.logs[0])
}

func TestIdleReplicasExpire(t *testing.T) {
	t.Parallel()
	m := newManager(t, executor.Config{IdleTimeout: 50 * time.Millisecond})
	out, _ := run(t, m, oneStep(t, ""), nil)
	require.Equal(t, executor.OutcomeSucceeded, out.Kind, out.Error)
	requireGone(t, pidOf(t, out))
}

func TestCloseKillsReplicas(t *testing.T) {
	t.Parallel()
	m, err := executor.NewManager(executor.Config{Dir: t.TempDir()})
	require.NoError(t, err)
	out, _ := run(t, m, oneStep(t, ""), nil)
	require.Equal(t, executor.OutcomeSucceeded, out.Kind, out.Error)
	requireAlive(t, pidOf(t, out))
	require.NoError(t, m.Close())
	requireGone(t, pidOf(t, out))
	require.NoError(t, m.Close(), "Close is idempotent")

	out, _ = run(t, m, oneStep(t, ""), nil)
	require.Equal(t, executor.OutcomeFailed, out.Kind)
	require.Contains(t, out.Error, "executor manager is closed")
	require.True(t, out.Retryable)
}

func TestStartFailure(t *testing.T) {
	t.Parallel()
	m := newManager(t, executor.Config{})
	f := parseFlow(t, "executors:\n  - {name: t, command: [/nonexistent/program]}\n")
	out, _ := run(t, m, f, nil)
	require.Equal(t, executor.OutcomeFailed, out.Kind)
	require.Contains(t, out.Error, `starting executor "t": `)
	require.Contains(t, out.Error, "/nonexistent/program")
}

func TestConfigValidation(t *testing.T) {
	t.Parallel()
	_, err := executor.NewManager(executor.Config{Dir: t.TempDir(), MaxConcurrency: -1})
	require.ErrorContains(t, err, "MaxConcurrency must not be negative")
	_, err = executor.NewManager(executor.Config{Dir: filepath.Join(t.TempDir(), "missing")})
	require.ErrorContains(t, err, "executor working directory")
}

func TestOutcomeKindString(t *testing.T) {
	t.Parallel()
	require.Equal(t, "timed out", executor.OutcomeTimedOut.String())
	require.Equal(t, "OutcomeKind(0)", executor.OutcomeKind(0).String())
}

func TestStderrWrittenBeforeTheAnswerReachesTheRun(t *testing.T) {
	t.Parallel()
	m := newManager(t, executor.Config{})
	for range 5 {
		out, rec := run(t, m, oneStep(t, ""), map[string]any{"action": "stderr", "lines": 5})
		require.Equal(t, executor.OutcomeSucceeded, out.Kind, out.Error)
		// No waiting: Run hands on what the replica wrote to stderr before it answered.
		rec.mu.Lock()
		require.Len(t, rec.logs, 5)
		require.Equal(t, "t: line 4 zzzzzzzzzz", rec.logs[4])
		rec.mu.Unlock()
	}
}

func TestCloseDuringRun(t *testing.T) {
	t.Parallel()
	m, err := executor.NewManager(executor.Config{Dir: t.TempDir()})
	require.NoError(t, err)
	pidfile := filepath.Join(t.TempDir(), "pids")
	hanging := make(chan struct{})
	rec := &recorder{onEvent: func(data map[string]any) {
		if data["hanging"] == true {
			close(hanging)
		}
	}}
	done := make(chan executor.Outcome, 1)
	go func() {
		out, _ := runCtx(t.Context(), t, m, oneStep(t, ""), map[string]any{"action": "hang", "pidfile": pidfile}, rec)
		done <- out
	}()
	select {
	case <-hanging:
	case <-time.After(waitFor):
		t.Fatal("the executor never started hanging")
	}
	require.NoError(t, m.Close())
	out := <-done
	require.Equal(t, executor.OutcomeFailed, out.Kind)
	require.Equal(t, "worker is shutting down: executor manager is closed", out.Error)
	require.True(t, out.Retryable)

	raw, err := os.ReadFile(pidfile)
	require.NoError(t, err)
	for _, s := range strings.Fields(string(raw)) {
		pid, err := strconv.Atoi(s)
		require.NoError(t, err)
		requireGone(t, pid)
	}
}

func TestLargeStateRoundTrips(t *testing.T) {
	t.Parallel()
	m := newManager(t, executor.Config{MaxLineBytes: 8 << 20})
	big := strings.Repeat("x", 3<<20) // far beyond a pipe's buffer
	out, _ := run(t, m, oneStep(t, ""), map[string]any{"big": big})
	require.Equal(t, executor.OutcomeSucceeded, out.Kind, out.Error)
	require.Equal(t, big, out.State["big"])
}

// An executor that exits without reading its request fails the step as a crash (whether
// the request was written before it exited or hit a closed pipe), never as a hang.
func TestExitBeforeReadingRequest(t *testing.T) {
	t.Parallel()
	m := newManager(t, executor.Config{})
	f := parseFlow(t, "executors:\n  - name: t\n    command: [/bin/sh, -c, \"exec 0<&-; exit 3\"]\n")
	for range 5 {
		out, _ := run(t, m, f, map[string]any{"big": strings.Repeat("x", 256<<10)})
		require.Equal(t, executor.OutcomeFailed, out.Kind, out.Error)
		require.True(t, out.Retryable)
		require.Contains(t, out.Error, `executor "t" exited with status 3`)
	}
}
