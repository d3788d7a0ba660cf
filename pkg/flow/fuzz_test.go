package flow_test

import (
	"errors"
	"testing"

	"github.com/agentserver/agentserver/pkg/flow"
)

// FuzzParse checks that Parse never panics, that it returns either a flow or a non-empty
// Errors, and that every flow it accepts satisfies the invariants the worker relies on.
func FuzzParse(f *testing.F) {
	for _, seed := range []string{
		fullFlow,
		"executors:\n  - name: echo\n    command: [python3, examples/echo/echo.py]\n",
		"max_steps: 3\nexecutors: [{name: a, command: [x], replicas: 2, concurrency: 4, resources: {memory: 1.5Gi}, env: {A: b}, workdir: w, slot: cpu}]\nsteps: [{name: s, executor: a, map: items, next: s}]\n",
		"executors: &a [*a]\n",
		"x: &s {a: 1}\nexecutors: [{name: a, command: [x]}]\nsteps: [*s, *s]\n",
		"",
		"   \n",
		"executors: [\n",
		"---\n---\n",
		"executors:\n  - name: Foo\n    command: ['', 1]\n    env: {AGENTSERVER_X: 1}\nsteps:\n  - {name: a, executor: nope, next: zz}\n",
		"max_steps: 99999999999999999999999\n",
		"!!binary aGVsbG8=\n",
		"? [a, b]\n: c\n",
		"<<: {executors: []}\n",
		"executors:\n- name: a\n  command: !custom [x]\n",
		"\xff\xfe",
	} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, src []byte) {
		fl, err := flow.Parse(src)
		if err != nil {
			if fl != nil {
				t.Fatalf("Parse returned both a flow and an error: %v", err)
			}
			var errs flow.Errors
			if !errors.As(err, &errs) || len(errs) == 0 {
				t.Fatalf("error is not a non-empty flow.Errors: %#v", err)
			}
			for _, e := range errs {
				if e == nil || e.Rule == "" || e.Error() == "" {
					t.Fatalf("malformed problem %#v", e)
				}
			}
			return
		}
		if fl == nil {
			t.Fatal("Parse returned neither a flow nor an error")
		}
		if fl.MaxSteps < 1 || fl.MaxSteps > flow.MaxMaxSteps {
			t.Fatalf("MaxSteps %d out of range", fl.MaxSteps)
		}
		steps := fl.Steps()
		if len(steps) == 0 {
			t.Fatal("valid flow has no effective steps")
		}
		for i, s := range steps {
			if fl.StepIndex(s.Name) != i {
				t.Fatalf("StepIndex(%q) = %d, want %d", s.Name, fl.StepIndex(s.Name), i)
			}
			if _, ok := fl.Executor(s.Executor); !ok {
				t.Fatalf("step %q names unknown executor %q", s.Name, s.Executor)
			}
			if s.Next != "" && fl.StepIndex(s.Next) < 0 {
				t.Fatalf("step %q names unknown next %q", s.Name, s.Next)
			}
		}
		for _, e := range fl.Executors {
			if len(e.Command) == 0 || e.Command[0] == "" {
				t.Fatalf("executor %q has no program", e.Name)
			}
			if e.Replicas < 0 || e.Replicas > flow.MaxReplicas || e.Concurrency < 0 || e.Concurrency > flow.MaxConcurrency || e.Resources.Memory < 0 {
				t.Fatalf("executor %q out of range: %+v", e.Name, e)
			}
		}
	})
}
