// Package flow parses and validates an assistant's flow: the YAML document that names the
// executors (long-lived processes speaking executor protocol v1) and the steps a run goes
// through (DESIGN.md §6).
//
// It owns the flow schema, its defaults and every validation rule, and reports each problem with
// the field path, the rule and the line:column where it is, so that gateways can reject a bad
// flow before anything is stored and workers can run a good one without checking it again.
//
// It must never start processes, touch the file system, the network or a database, or know how
// or where a flow runs: it is a pure function from bytes to a validated *Flow.
package flow

// Limits and defaults of the flow schema.
const (
	// DefaultMaxSteps is the cycle guard used when a flow does not set max_steps.
	DefaultMaxSteps = 100
	// MaxMaxSteps is the largest max_steps a flow may set.
	MaxMaxSteps = 10000
	// MaxReplicas is the largest replicas count an executor may ask for.
	MaxReplicas = 64
	// MaxConcurrency is the largest concurrency an executor may declare.
	MaxConcurrency = 1024
)

// Flow is a parsed, validated flow. Values returned by Parse are valid; a Flow built by hand is
// only as good as its author made it.
type Flow struct {
	// MaxSteps bounds how many steps one run may execute (a guard against endless loops through
	// `next`). Parse sets it to DefaultMaxSteps when the YAML does not.
	MaxSteps int
	// Executors are the flow's executors in the order they are written.
	Executors []Executor
	// DeclaredSteps are the steps as written, in order; empty when the flow has a single
	// executor and no steps. Use Steps for the steps a run actually goes through.
	DeclaredSteps []Step
}

// Executor describes one executor: a command the worker starts as one or more long-lived
// replica processes.
type Executor struct {
	// Name is unique in the flow and matches [a-z0-9][a-z0-9_-]{0,62}.
	Name string
	// Command is the program and its arguments; never empty. Relative paths resolve in the
	// executor's working directory.
	Command []string
	// Replicas is the most processes the worker runs for this executor; 0 means elastic (up to
	// the worker's concurrency, started on demand).
	Replicas int
	// Concurrency is how many requests one replica takes at once: 1 (the default, protocol
	// v1's one request at a time) or more for an executor that answers requests in any
	// order, each by its id (an optional v1 extension; docs/executor-protocol.md).
	Concurrency int
	// Resources are the per-replica resource limits.
	Resources Resources
	// Env is added to the worker's environment for every replica (nil when unset).
	Env map[string]string
	// Workdir is a local relative path (no "..", not absolute) joined to the worker's working
	// directory; empty means the working directory itself.
	Workdir string
	// Slot is the slot type label this executor needs (e.g. "gpu"); empty when unset.
	Slot string
}

// Elastic reports whether the executor's replica count is left to the worker.
func (e Executor) Elastic() bool { return e.Replicas == 0 }

// RequestsPerReplica is how many requests one replica takes at once (Concurrency, 1 when
// unset).
func (e Executor) RequestsPerReplica() int { return max(e.Concurrency, 1) }

// Resources are per-replica limits.
type Resources struct {
	// Memory is the memory limit in bytes; 0 when unset.
	Memory int64
}

// Step is one step of a flow.
type Step struct {
	// Name is unique among the flow's steps and matches [a-z0-9][a-z0-9_-]{0,62}.
	Name string
	// Executor names the executor that runs the step.
	Executor string
	// Map, when set, makes the step fan out: one request per item of the list state[Map], the
	// item results replacing that list in item order.
	Map string
	// Next is the step that follows when the executor's result names none; empty means the
	// step written after this one (or the end of the flow after the last step).
	Next string
}

// Steps returns the steps a run goes through, in order: the declared steps, or, for a flow with
// no steps and exactly one executor, a single implicit step named after that executor. It
// returns nil for a hand-built flow that has neither. The returned slice is a copy.
func (f *Flow) Steps() []Step {
	if len(f.DeclaredSteps) > 0 {
		return append([]Step(nil), f.DeclaredSteps...)
	}
	if len(f.Executors) == 1 {
		return []Step{{Name: f.Executors[0].Name, Executor: f.Executors[0].Name}}
	}
	return nil
}

// Executor returns the executor with the given name.
func (f *Flow) Executor(name string) (Executor, bool) {
	for _, e := range f.Executors {
		if e.Name == name {
			return e, true
		}
	}
	return Executor{}, false
}

// StepIndex returns the index in Steps() of the step with the given name, or -1.
func (f *Flow) StepIndex(name string) int {
	if len(f.DeclaredSteps) == 0 {
		if len(f.Executors) == 1 && f.Executors[0].Name == name {
			return 0
		}
		return -1
	}
	for i, s := range f.DeclaredSteps {
		if s.Name == name {
			return i
		}
	}
	return -1
}

// EffectiveMaxSteps returns MaxSteps, or DefaultMaxSteps when a hand-built flow left it at 0.
func (f *Flow) EffectiveMaxSteps() int {
	if f.MaxSteps <= 0 {
		return DefaultMaxSteps
	}
	return f.MaxSteps
}
