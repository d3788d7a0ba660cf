package flow_test

import (
	"errors"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/agentserver/agentserver/pkg/flow"
)

const fullFlow = `# A complete flow.
max_steps: 50
executors:
  - name: splitter
    command: ["python3", "split.py"]
  - name: document-processor
    command: ["python3", "processor.py", "--fast"]
    replicas: 3
    concurrency: 8
    resources: {memory: 2Gi}
    env: {MODE: fast, THREADS: 4, DEBUG: true}
    workdir: sub/dir
    slot: gpu
  - name: reducer
    command: [./reduce]
steps:
  - name: split
    executor: splitter
  - name: process
    executor: document-processor
    map: items
  - name: combine
    executor: reducer
    next: split
`

func TestParseFullFlow(t *testing.T) {
	t.Parallel()
	f, err := flow.Parse([]byte(fullFlow))
	require.NoError(t, err)
	require.Equal(t, &flow.Flow{
		MaxSteps: 50,
		Executors: []flow.Executor{
			{Name: "splitter", Command: []string{"python3", "split.py"}},
			{
				Name:        "document-processor",
				Command:     []string{"python3", "processor.py", "--fast"},
				Replicas:    3,
				Concurrency: 8,
				Resources:   flow.Resources{Memory: 2 << 30},
				Env:         map[string]string{"MODE": "fast", "THREADS": "4", "DEBUG": "true"},
				Workdir:     "sub/dir",
				Slot:        "gpu",
			},
			{Name: "reducer", Command: []string{"./reduce"}},
		},
		DeclaredSteps: []flow.Step{
			{Name: "split", Executor: "splitter"},
			{Name: "process", Executor: "document-processor", Map: "items"},
			{Name: "combine", Executor: "reducer", Next: "split"},
		},
	}, f)

	require.Equal(t, f.DeclaredSteps, f.Steps())
	require.Equal(t, 1, f.StepIndex("process"))
	require.Equal(t, -1, f.StepIndex("nope"))
	ex, ok := f.Executor("reducer")
	require.True(t, ok)
	require.Equal(t, "reducer", ex.Name)
	require.True(t, ex.Elastic())
	_, ok = f.Executor("nope")
	require.False(t, ok)
	require.Equal(t, 50, f.EffectiveMaxSteps())

	// Steps returns a copy.
	steps := f.Steps()
	steps[0].Name = "changed"
	require.Equal(t, "split", f.Steps()[0].Name)
}

func TestParseSingleExecutorImplicitStep(t *testing.T) {
	t.Parallel()
	f, err := flow.Parse([]byte("executors:\n  - name: echo\n    command: [python3, echo.py]\n"))
	require.NoError(t, err)
	require.Equal(t, flow.DefaultMaxSteps, f.MaxSteps)
	require.Empty(t, f.DeclaredSteps)
	require.Equal(t, []flow.Step{{Name: "echo", Executor: "echo"}}, f.Steps())
	require.Equal(t, 0, f.StepIndex("echo"))
	require.Equal(t, -1, f.StepIndex("other"))

	// An explicit empty list is the same as no steps.
	f, err = flow.Parse([]byte("executors: [{name: echo, command: [x]}]\nsteps: []\n"))
	require.NoError(t, err)
	require.Equal(t, []flow.Step{{Name: "echo", Executor: "echo"}}, f.Steps())
}

func TestHandBuiltFlow(t *testing.T) {
	t.Parallel()
	var f flow.Flow
	require.Nil(t, f.Steps())
	require.Equal(t, -1, f.StepIndex("x"))
	require.Equal(t, flow.DefaultMaxSteps, f.EffectiveMaxSteps())
}

func TestParseNullOptionalFieldsAreUnset(t *testing.T) {
	t.Parallel()
	f, err := flow.Parse([]byte(`max_steps: ~
executors:
  - name: a
    command: [x]
    replicas:
    resources: ~
    env: null
    workdir:
    slot:
steps:
  - {name: s, executor: a, map: ~, next: ~}
`))
	require.NoError(t, err)
	require.Equal(t, flow.DefaultMaxSteps, f.MaxSteps)
	require.Equal(t, flow.Executor{Name: "a", Command: []string{"x"}}, f.Executors[0])
	require.Equal(t, flow.Step{Name: "s", Executor: "a"}, f.DeclaredSteps[0])
}

func TestParseAliases(t *testing.T) {
	t.Parallel()
	f, err := flow.Parse([]byte(`executors:
  - name: a
    command: &cmd [python3, run.py]
    env: &env {A: "1"}
  - name: b
    command: *cmd
    env: *env
steps:
  - {name: one, executor: a}
  - {name: two, executor: b}
`))
	require.NoError(t, err)
	require.Equal(t, []string{"python3", "run.py"}, f.Executors[1].Command)
	require.Equal(t, map[string]string{"A": "1"}, f.Executors[1].Env)
}

// problem is one expected error: its position, field and (a substring of) its rule.
type problem struct {
	line, col int
	field     string
	rule      string
}

func requireProblems(t *testing.T, src string, want ...problem) {
	t.Helper()
	f, err := flow.Parse([]byte(src))
	require.Error(t, err)
	require.Nil(t, f)
	var errs flow.Errors
	require.ErrorAs(t, err, &errs)
	require.Len(t, errs, len(want), "errors: %v", err)
	for i, w := range want {
		got := errs[i]
		require.Equal(t, w.line, got.Line, "line of %v", got)
		require.Equal(t, w.col, got.Column, "column of %v", got)
		require.Equal(t, w.field, got.Field, "field of %v", got)
		require.Contains(t, got.Rule, w.rule, "rule of %v", got)
	}
	var first *flow.Error
	require.ErrorAs(t, err, &first)
	require.Equal(t, errs[0], first)
}

func TestParseRules(t *testing.T) {
	t.Parallel()
	const one = "executors:\n  - name: a\n    command: [x]\n"
	for _, tc := range []struct {
		name string
		src  string
		want []problem
	}{
		{"empty", "", []problem{{0, 0, "flow", "must not be empty"}}},
		{"whitespace", " \n\t\n  ", []problem{{0, 0, "flow", "must not be empty"}}},
		{"comments only", "# nothing\n# here\n", []problem{{0, 0, "flow", "must not be empty"}}},
		{"syntax", "executors: [\n", []problem{{1, 0, "", "invalid YAML"}}},
		{"two documents", one + "---\nmax_steps: 3\n", []problem{{5, 1, "flow", "must be a single YAML document"}}},
		{"root scalar", "hello\n", []problem{{1, 1, "flow", "must be a mapping"}}},
		{"root list", "- a\n", []problem{{1, 1, "flow", "must be a mapping"}}},
		{"unknown top-level field", one + "stepz: []\n", []problem{{4, 1, "stepz", "unknown field (allowed: max_steps, executors, steps)"}}},
		{"duplicate field", one + "max_steps: 3\nmax_steps: 4\n", []problem{{5, 1, "max_steps", "is defined twice (first at line 4)"}}},
		{"non-scalar key", one + "[a]: 1\n", []problem{{4, 1, "flow", "keys must be strings"}}},
		{"merge key", "base: &b {name: a}\n", []problem{{1, 1, "base", "unknown field"}, {1, 1, "executors", "is required"}}},

		{"max_steps zero", one + "max_steps: 0\n", []problem{{4, 12, "max_steps", "must be an integer between 1 and 10000"}}},
		{"max_steps too big", one + "max_steps: 10001\n", []problem{{4, 12, "max_steps", "between 1 and 10000"}}},
		{"max_steps string", one + "max_steps: \"5\"\n", []problem{{4, 12, "max_steps", "between 1 and 10000"}}},
		{"max_steps float", one + "max_steps: 5.5\n", []problem{{4, 12, "max_steps", "between 1 and 10000"}}},
		{"max_steps overflow", one + "max_steps: 99999999999999999999999\n", []problem{{4, 12, "max_steps", "between 1 and 10000"}}},

		{"executors missing", "max_steps: 3\n", []problem{{1, 1, "executors", "is required"}}},
		{"executors null", "executors:\n", []problem{{1, 1, "executors", "is required"}}},
		{"executors empty", "executors: []\n", []problem{{1, 12, "executors", "must be a non-empty list of executors"}}},
		{"executors mapping", "executors: {name: a}\n", []problem{{1, 12, "executors", "must be a non-empty list of executors"}}},
		{"executor scalar", "executors: [a]\n", []problem{{1, 13, "executors[0]", "must be a mapping"}}},
		{"executor unknown field", "executors:\n  - name: a\n    command: [x]\n    comand: [y]\n", []problem{{4, 5, "executors[0].comand", "unknown field (allowed: name, command, replicas, concurrency, resources, env, workdir, slot)"}}},

		{"name missing", "executors:\n  - command: [x]\n", []problem{{2, 5, "executors[0].name", "is required"}}},
		{"name not string", "executors:\n  - name: [a]\n    command: [x]\n", []problem{{2, 11, "executors[0].name", "must be a string"}}},
		{"name number", "executors:\n  - name: 12\n    command: [x]\n", []problem{{2, 11, "executors[0].name", "must be a string"}}},
		{"name upper case", "executors:\n  - name: Echo\n    command: [x]\n", []problem{{2, 11, "executors[0].name", "must match [a-z0-9][a-z0-9_-]{0,62}"}}},
		{"name leading dash", "executors:\n  - name: -a\n    command: [x]\n", []problem{{2, 11, "executors[0].name", "must match"}}},
		{"name too long", "executors:\n  - name: " + strings.Repeat("a", 64) + "\n    command: [x]\n", []problem{{2, 11, "executors[0].name", "must match"}}},
		{"name duplicate", "executors:\n  - {name: a, command: [x]}\n  - {name: a, command: [y]}\nsteps: [{name: s, executor: a}]\n", []problem{{3, 12, "executors[1].name", `must be unique: executor "a" is already defined at line 2`}}},

		{"command missing", "executors:\n  - name: a\n", []problem{{2, 5, "executors[0].command", "is required"}}},
		{"command empty", "executors:\n  - name: a\n    command: []\n", []problem{{3, 14, "executors[0].command", "must be a non-empty list of strings"}}},
		{"command string", "executors:\n  - name: a\n    command: python3 x.py\n", []problem{{3, 14, "executors[0].command", "must be a non-empty list of strings"}}},
		{"command non-string item", "executors:\n  - name: a\n    command: [x, 8080]\n", []problem{{3, 18, "executors[0].command[1]", "must be a string"}}},
		{"command nested list", "executors:\n  - name: a\n    command: [x, [y]]\n", []problem{{3, 18, "executors[0].command[1]", "must be a string"}}},
		{"command empty program", "executors:\n  - name: a\n    command: ['', x]\n", []problem{{3, 15, "executors[0].command[0]", "must not be empty"}}},

		{"replicas zero", one + "    replicas: 0\n", []problem{{4, 15, "executors[0].replicas", "must be an integer between 1 and 64"}}},
		{"replicas too many", one + "    replicas: 65\n", []problem{{4, 15, "executors[0].replicas", "between 1 and 64"}}},
		{"replicas negative", one + "    replicas: -1\n", []problem{{4, 15, "executors[0].replicas", "between 1 and 64"}}},
		{"replicas string", one + "    replicas: three\n", []problem{{4, 15, "executors[0].replicas", "between 1 and 64"}}},

		{"concurrency zero", one + "    concurrency: 0\n", []problem{{4, 18, "executors[0].concurrency", "must be an integer between 1 and 1024"}}},
		{"concurrency too many", one + "    concurrency: 1025\n", []problem{{4, 18, "executors[0].concurrency", "between 1 and 1024"}}},
		{"concurrency string", one + "    concurrency: many\n", []problem{{4, 18, "executors[0].concurrency", "between 1 and 1024"}}},

		{"resources scalar", one + "    resources: 2Gi\n", []problem{{4, 16, "executors[0].resources", "must be a mapping"}}},
		{"resources unknown", one + "    resources: {cpu: 2}\n", []problem{{4, 17, "executors[0].resources.cpu", "unknown field (allowed: memory)"}}},
		{"memory zero", one + "    resources: {memory: 0}\n", []problem{{4, 25, "executors[0].resources.memory", "must be a positive quantity of bytes"}}},
		{"memory bad unit", one + "    resources: {memory: 2GB}\n", []problem{{4, 25, "executors[0].resources.memory", "must be a positive quantity"}}},
		{"memory negative", one + "    resources: {memory: -1Gi}\n", []problem{{4, 25, "executors[0].resources.memory", "must be a positive quantity"}}},
		{"memory list", one + "    resources: {memory: [1]}\n", []problem{{4, 25, "executors[0].resources.memory", "must be a positive quantity"}}},
		{"memory overflow", one + "    resources: {memory: 9000000Ei}\n", []problem{{4, 25, "executors[0].resources.memory", "must be a positive quantity"}}},

		{"env scalar", one + "    env: A=1\n", []problem{{4, 10, "executors[0].env", "must be a mapping"}}},
		{"env bad name", one + "    env: {1A: x}\n", []problem{{4, 11, "executors[0].env[\"1A\"]", "names must match"}}},
		{"env reserved", one + "    env: {AGENTSERVER_RUN: x}\n", []problem{{4, 11, "executors[0].env.AGENTSERVER_RUN", "is reserved"}}},
		{"env null value", one + "    env: {A: ~}\n", []problem{{4, 14, "executors[0].env.A", "must be a string"}}},
		{"env list value", one + "    env: {A: [x]}\n", []problem{{4, 14, "executors[0].env.A", "must be a string"}}},
		{"env duplicate", one + "    env: {A: x, A: y}\n", []problem{{4, 17, "executors[0].env.A", "is defined twice"}}},

		{"workdir absolute", one + "    workdir: /tmp\n", []problem{{4, 14, "executors[0].workdir", "must be a relative path inside the worker's working directory"}}},
		{"workdir escapes", one + "    workdir: a/../../b\n", []problem{{4, 14, "executors[0].workdir", "must be a relative path inside"}}},
		{"workdir empty", one + "    workdir: ''\n", []problem{{4, 14, "executors[0].workdir", "must be a relative path inside"}}},
		{"workdir number", one + "    workdir: 3\n", []problem{{4, 14, "executors[0].workdir", "must be a string"}}},

		{"slot bad", one + "    slot: GPU\n", []problem{{4, 11, "executors[0].slot", "must match"}}},
		{"slot list", one + "    slot: [gpu]\n", []problem{{4, 11, "executors[0].slot", "must be a string"}}},

		{"steps mapping", one + "steps: {name: a}\n", []problem{{4, 8, "steps", "must be a list of steps"}}},
		{"step scalar", one + "steps: [a]\n", []problem{{4, 9, "steps[0]", "must be a mapping"}}},
		{"step unknown field", one + "steps:\n  - {name: s, executor: a, nxt: s}\n", []problem{{5, 28, "steps[0].nxt", "unknown field (allowed: name, executor, map, next)"}}},
		{"step name missing", one + "steps:\n  - executor: a\n", []problem{{5, 5, "steps[0].name", "is required"}}},
		{"step name bad", one + "steps:\n  - {name: Split, executor: a}\n", []problem{{5, 12, "steps[0].name", "must match"}}},
		{"step name duplicate", one + "steps:\n  - {name: s, executor: a}\n  - {name: s, executor: a}\n", []problem{{6, 12, "steps[1].name", `must be unique: step "s" is already defined at line 5`}}},
		{"step executor missing", one + "steps:\n  - name: s\n", []problem{{5, 5, "steps[0].executor", "is required"}}},
		{"step executor unknown", one + "steps:\n  - {name: s, executor: b}\n", []problem{{5, 25, "steps[0].executor", `must name an executor: there is no executor "b"`}}},
		{"step executor not string", one + "steps:\n  - {name: s, executor: [a]}\n", []problem{{5, 25, "steps[0].executor", "must be a string"}}},
		{"step map empty", one + "steps:\n  - {name: s, executor: a, map: ''}\n", []problem{{5, 33, "steps[0].map", "must not be empty"}}},
		{"step map not string", one + "steps:\n  - {name: s, executor: a, map: {}}\n", []problem{{5, 33, "steps[0].map", "must be a string"}}},
		{"step next unknown", one + "steps:\n  - {name: s, executor: a, next: t}\n", []problem{{5, 34, "steps[0].next", `must name a step: there is no step "t"`}}},

		{"no steps many executors", "executors:\n  - {name: a, command: [x]}\n  - {name: b, command: [y]}\n", []problem{{2, 3, "steps", "is required when the flow has more than one executor"}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			requireProblems(t, tc.src, tc.want...)
		})
	}
}

func TestParseReportsEveryProblemSorted(t *testing.T) {
	t.Parallel()
	src := `steps:
  - {name: s, executor: nope, next: gone}
max_steps: 0
executors:
  - name: Bad
    command: []
    replicas: 100
`
	requireProblems(t, src,
		problem{2, 25, "steps[0].executor", "there is no executor"},
		problem{2, 37, "steps[0].next", "there is no step"},
		problem{3, 12, "max_steps", "between 1 and 10000"},
		problem{5, 11, "executors[0].name", "must match"},
		problem{6, 14, "executors[0].command", "must be a non-empty list of strings"},
		problem{7, 15, "executors[0].replicas", "between 1 and 64"},
	)
}

func TestErrorMessages(t *testing.T) {
	t.Parallel()
	_, err := flow.Parse([]byte("executors:\n  - name: a\n    command: []\n"))
	require.EqualError(t, err, "flow.yaml:3:14: executors[0].command: must be a non-empty list of strings")

	_, err = flow.Parse(nil)
	require.EqualError(t, err, "flow: must not be empty")

	_, err = flow.Parse([]byte("executors: [\n"))
	require.EqualError(t, err, "flow.yaml:1: invalid YAML: did not find expected node content")

	_, err = flow.Parse([]byte("executors: []\nmax_steps: 0\n"))
	require.EqualError(t, err, "flow.yaml:1:12: executors: must be a non-empty list of executors\n"+
		"flow.yaml:2:12: max_steps: must be an integer between 1 and 10000")

	var many strings.Builder
	many.WriteString("executors:\n")
	for range 30 {
		many.WriteString("  - {name: A, command: [x]}\n")
	}
	_, err = flow.Parse([]byte(many.String()))
	require.ErrorContains(t, err, "(and ")
	var errs flow.Errors
	require.True(t, errors.As(err, &errs))
	require.Greater(t, len(errs), 30)
}

func TestParseLimits(t *testing.T) {
	t.Parallel()
	big := make([]byte, flow.MaxSourceBytes+1)
	for i := range big {
		big[i] = '#'
	}
	_, err := flow.Parse(big)
	require.ErrorContains(t, err, "flow: must be at most")

	// A small document whose aliases expand to millions of nodes fails fast.
	var b strings.Builder
	b.WriteString("x: &s {")
	for i := range 500 {
		if i > 0 {
			b.WriteString(", ")
		}
		b.WriteString("k")
		b.WriteString(strings.Repeat("z", i%7))
		b.WriteString(string(rune('a' + i%26)))
		b.WriteString(strings.Repeat("q", i/26))
		b.WriteString(": 1")
	}
	b.WriteString("}\nexecutors: [{name: a, command: [x]}]\nsteps: [")
	for i := range 2000 {
		if i > 0 {
			b.WriteString(", ")
		}
		b.WriteString("*s")
	}
	b.WriteString("]\n")
	_, err = flow.Parse([]byte(b.String()))
	require.ErrorContains(t, err, "is too large once aliases are expanded")
}

func TestParseQuantity(t *testing.T) {
	t.Parallel()
	for in, want := range map[string]int64{
		"1":       1,
		"1048576": 1 << 20,
		"1Ki":     1 << 10,
		"512Mi":   512 << 20,
		"2Gi":     2 << 30,
		"1Ti":     1 << 40,
		"1Pi":     1 << 50,
		"7Ei":     7 << 60,
		"1k":      1000,
		"1K":      1000,
		"3M":      3_000_000,
		"2G":      2_000_000_000,
		"1T":      1e12,
		"1P":      1e15,
		"9E":      9e18,
		"1.5Gi":   3 << 29,
		"0.5":     1,
		"1.0001":  2,
		"0.001Ki": 2,
	} {
		got, err := flow.ParseQuantity(in)
		require.NoError(t, err, in)
		require.Equal(t, want, got, in)
	}
	for _, in := range []string{"", "0", "0.0Gi", "-1", "1GB", "1m", "1e9", "Gi", "1 Gi", ".5", "1.", "8Ei", "10E", "0x10"} {
		_, err := flow.ParseQuantity(in)
		require.Error(t, err, in)
	}
}

func TestFormatQuantityRoundTrips(t *testing.T) {
	t.Parallel()
	for _, s := range []string{"2Gi", "512Mi", "100Ki", "3Ti", "1000"} {
		n, err := flow.ParseQuantity(s)
		if err != nil {
			t.Fatal(err)
		}
		if got := flow.FormatQuantity(n); got != s {
			t.Errorf("FormatQuantity(ParseQuantity(%q)) = %q", s, got)
		}
	}
}
