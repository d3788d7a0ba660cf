package executor

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"strconv"
	"sync"
	"sync/atomic"

	"github.com/agentserver/agentserver/pkg/flow"
	"github.com/agentserver/agentserver/pkg/jsonenc"
)

// Causes for ending a run's context, for context.WithCancelCause and context.WithTimeoutCause:
// Run reports OutcomeCancelled or OutcomeTimedOut according to which one ended it. A context that
// ended with context.DeadlineExceeded also counts as timed out; any other cause as cancelled.
var (
	ErrCancelled = errors.New("run cancelled")
	ErrTimedOut  = errors.New("run timed out")
)

// RunSpec is one execution of a run's flow on this worker.
type RunSpec struct {
	// RunName is the run's resource name, "runs/<id>".
	RunName string
	// Attempt is the run's attempt number, sent in every request; 0 means 1.
	Attempt int
	// Epoch is the fencing epoch of this claim of the run, sent in every request as
	// "epoch" (an optional extension of protocol v1).
	Epoch int64
	// FlowKey says which runs may share replicas: replicas are pooled and reused per flow
	// key and executor definition. The worker uses the assistant and its flow's content
	// (e.g. "assistants/x#<hash of the flow>"), so that the versions of an assistant with
	// the same flow share them.
	FlowKey string
	// Flow is the parsed flow.
	Flow *flow.Flow
	// State is the run's state before StartStep (its input, or its last checkpoint). Run never
	// modifies it.
	State map[string]any
	// Config is the run's config, sent in every request.
	Config map[string]any
	// StartStep is the step to start from; empty means the first step.
	StartStep string
	// Resume, when not nil, is sent as "resume" to the first step executed (an interrupted
	// step being continued). A json.RawMessage is sent as is; anything else is encoded.
	Resume any
	// Env is added to the environment of replicas started for this run (e.g.
	// CUDA_VISIBLE_DEVICES=1). Replicas are only shared between runs with the same Env.
	Env []string
}

// Callbacks receive what happens during a run. Run calls them one at a time (never
// concurrently, even during a map step) and never after it returns. Nil fields are skipped.
type Callbacks struct {
	// OnEvent receives the data of each event an executor sends.
	OnEvent func(step string, data map[string]any)
	// OnLog receives the executor's stderr, line by line (bounded per line and per step).
	OnLog func(executor string, line string)
	// OnStepStart is called before each step runs.
	OnStepStart func(step string)
	// OnCheckpoint is called after each step with the state and the step to run next (empty
	// when the flow is done). It is the caller's fenced write: an error ends the run with
	// OutcomeLeaseLost. The state must not be modified.
	OnCheckpoint func(nextStep string, state map[string]any) error
}

// OutcomeKind says how a run ended on this worker.
type OutcomeKind int

// Outcome kinds. The zero value is not a valid outcome.
const (
	// OutcomeSucceeded: the flow ran to its end; Outcome.State is the final state.
	OutcomeSucceeded OutcomeKind = iota + 1
	// OutcomeFailed: a step failed; Error says why and Retryable whether another attempt may
	// succeed.
	OutcomeFailed
	// OutcomeInterrupted: a step asked for input (Prompt); resume from Step with the answer.
	OutcomeInterrupted
	// OutcomeCancelled: the context ended with a cause other than a timeout.
	OutcomeCancelled
	// OutcomeTimedOut: the context ended with ErrTimedOut or context.DeadlineExceeded.
	OutcomeTimedOut
	// OutcomeLeaseLost: OnCheckpoint refused a checkpoint; the run belongs to someone else now.
	OutcomeLeaseLost
)

// String returns the kind's name.
func (k OutcomeKind) String() string {
	switch k {
	case OutcomeSucceeded:
		return "succeeded"
	case OutcomeFailed:
		return "failed"
	case OutcomeInterrupted:
		return "interrupted"
	case OutcomeCancelled:
		return "cancelled"
	case OutcomeTimedOut:
		return "timed out"
	case OutcomeLeaseLost:
		return "lease lost"
	default:
		return "OutcomeKind(" + strconv.Itoa(int(k)) + ")"
	}
}

// Outcome is how a run ended on this worker.
type Outcome struct {
	Kind OutcomeKind
	// State is the final state when the run succeeded, else the state of the last checkpoint
	// (or RunSpec.State when no step completed). A state no step changed is RunSpec.State
	// itself, the same map; Run never changes a state map in place.
	State map[string]any
	// Error describes a failure, cancellation, timeout or lost lease.
	Error string
	// Retryable says whether a failure may succeed on another attempt (the executor said so,
	// or it crashed).
	Retryable bool
	// Step is the step that failed or was interrupted, or that was running (or next) when the
	// run was cancelled, timed out or lost its lease.
	Step string
	// Prompt is what an interrupted step asked (decoded JSON).
	Prompt any
}

// guard serializes a run's callbacks and silences them once Run has returned, since replicas'
// stderr readers and map items call from other goroutines.
type guard struct {
	mu     sync.Mutex
	cb     Callbacks
	closed bool
}

func (g *guard) event(step string, data map[string]any) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if !g.closed && g.cb.OnEvent != nil {
		g.cb.OnEvent(step, data)
	}
}

func (g *guard) log(executor, line string) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if !g.closed && g.cb.OnLog != nil {
		g.cb.OnLog(executor, line)
	}
}

func (g *guard) stepStart(step string) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.cb.OnStepStart != nil {
		g.cb.OnStepStart(step)
	}
}

func (g *guard) checkpoint(next string, state map[string]any) error {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.cb.OnCheckpoint == nil {
		return nil
	}
	return g.cb.OnCheckpoint(next, state)
}

func (g *guard) close() {
	g.mu.Lock()
	g.closed = true
	g.mu.Unlock()
}

// Run executes spec's flow from StartStep until it ends, fails, is interrupted, or ctx ends,
// calling cb along the way. When ctx ends, the replicas serving the run are killed with their
// process groups and the outcome is OutcomeCancelled or OutcomeTimedOut by context.Cause(ctx).
//
// Steps run in order; a result's `next`, else the step's static `next`, else the following step
// chooses what runs next, and the flow ends after the last step. A `map` step sends one request
// per item of state[map] (state without that list, plus "item" and "index") across the
// executor's replicas and replaces the list with the items' results in item order; items'
// `next` is ignored; on an item's error or interrupt no new items start, those in flight
// finish, and the lowest failing item decides the outcome.
func (m *Manager) Run(ctx context.Context, spec RunSpec, cb Callbacks) Outcome {
	g := &guard{cb: cb}
	defer g.close()

	state := spec.State
	if state == nil {
		state = map[string]any{}
	}
	fail := func(step, msg string, retryable bool) Outcome {
		return Outcome{Kind: OutcomeFailed, State: state, Error: msg, Retryable: retryable, Step: step}
	}
	if spec.Flow == nil {
		return fail("", "run has no flow", false)
	}
	steps := spec.Flow.Steps()
	if len(steps) == 0 {
		return fail("", "flow has no steps", false)
	}
	i := 0
	if spec.StartStep != "" {
		if i = spec.Flow.StepIndex(spec.StartStep); i < 0 {
			return fail(spec.StartStep, fmt.Sprintf("flow has no step %q to start from", spec.StartStep), false)
		}
	}
	rs := &runState{m: m, spec: &spec, g: g, attempt: max(spec.Attempt, 1)}
	var err error
	if rs.config, err = jsonenc.Marshal(nonNil(spec.Config)); err != nil {
		return fail(steps[i].Name, fmt.Sprintf("encoding config: %v", err), false)
	}
	if spec.Resume != nil {
		if raw, ok := spec.Resume.(json.RawMessage); !ok || raw != nil {
			if rs.resume, err = jsonenc.Marshal(spec.Resume); err != nil {
				return fail(steps[i].Name, fmt.Sprintf("encoding resume value: %v", err), false)
			}
		}
	}

	maxSteps := spec.Flow.EffectiveMaxSteps()
	for executed := 0; ; executed++ {
		step := steps[i]
		if ctx.Err() != nil {
			return ctxOutcome(ctx, state, step.Name)
		}
		if executed == maxSteps {
			return fail(step.Name, fmt.Sprintf("flow exceeded max_steps (%d)", maxSteps), false)
		}
		g.stepStart(step.Name)
		res := rs.step(ctx, step, state)
		rs.resume = nil // only the first step executed is the one being resumed
		switch {
		case res.err != nil && ctx.Err() != nil:
			return ctxOutcome(ctx, state, step.Name)
		case res.err != nil:
			if m.isClosed() || errors.Is(res.err, ErrClosed) {
				// Close killed the replicas: whatever the step saw, the worker is going away.
				return fail(step.Name, "worker is shutting down: "+ErrClosed.Error(), true)
			}
			var f *failure
			if errors.As(res.err, &f) {
				return fail(step.Name, f.msg, f.retryable)
			}
			return fail(step.Name, res.err.Error(), false)
		case res.interrupted:
			return Outcome{Kind: OutcomeInterrupted, State: state, Step: step.Name, Prompt: res.prompt}
		}

		next := res.next
		if next == "" {
			next = step.Next
		}
		nextIndex := -1
		switch {
		case next != "":
			if nextIndex = spec.Flow.StepIndex(next); nextIndex < 0 {
				return fail(step.Name, fmt.Sprintf("step %q chose next step %q, which the flow does not have", step.Name, next), false)
			}
		case i+1 < len(steps):
			nextIndex = i + 1
			next = steps[nextIndex].Name
		}
		state = res.state
		if err := g.checkpoint(next, state); err != nil {
			return Outcome{Kind: OutcomeLeaseLost, State: state, Error: "checkpoint refused: " + err.Error(), Step: next}
		}
		if nextIndex < 0 {
			return Outcome{Kind: OutcomeSucceeded, State: state}
		}
		i = nextIndex
	}
}

func ctxOutcome(ctx context.Context, state map[string]any, step string) Outcome {
	cause := context.Cause(ctx)
	kind := OutcomeCancelled
	if errors.Is(cause, ErrTimedOut) || errors.Is(cause, context.DeadlineExceeded) {
		kind = OutcomeTimedOut
	}
	return Outcome{Kind: kind, State: state, Error: cause.Error(), Step: step}
}

func nonNil(m map[string]any) map[string]any {
	if m == nil {
		return map[string]any{}
	}
	return m
}

// runState is what one Run call shares between its steps.
type runState struct {
	m       *Manager
	spec    *RunSpec
	g       *guard
	attempt int
	config  json.RawMessage
	resume  json.RawMessage
}

// stepResult is how one step ended. err is a *failure, a context cause, or another error.
type stepResult struct {
	state       map[string]any
	next        string
	interrupted bool
	prompt      any
	err         error
}

func (rs *runState) step(ctx context.Context, step flow.Step, state map[string]any) stepResult {
	def, ok := rs.spec.Flow.Executor(step.Executor)
	if !ok {
		return stepResult{err: &failure{msg: fmt.Sprintf("step %q names executor %q, which the flow does not have", step.Name, step.Executor)}}
	}
	p, err := rs.m.pool(rs.spec.Flow, rs.spec.FlowKey, def, rs.spec.Env)
	if err != nil {
		return stepResult{err: err}
	}
	defer p.release()
	if step.Map != "" {
		return rs.mapStep(ctx, p, step, state)
	}

	encoded, err := jsonenc.Marshal(state)
	if err != nil {
		return stepResult{err: &failure{msg: fmt.Sprintf("encoding state: %v", err)}}
	}
	rep, err := rs.call(ctx, p, step, encoded, nil, nil)
	if err != nil {
		return stepResult{err: err}
	}
	switch rep.kind {
	case typeError:
		return stepResult{err: &failure{msg: rep.message, retryable: rep.retryable}}
	case typeInterrupt:
		return stepResult{interrupted: true, prompt: rep.prompt}
	}
	next := map[string]any{}
	if rep.state == nil || bytes.Equal(rep.state, encoded) {
		// No state in the result, or the state it was sent, byte for byte (the request's
		// state is what json.Marshal writes for a map of decoded JSON, so decoding it gives
		// that map again): the state is unchanged, and stays the same map.
		next = state
	} else if err := json.Unmarshal(rep.state, &next); err != nil {
		return stepResult{err: &failure{msg: fmt.Sprintf("executor %q broke protocol v1: result state must be a JSON object: %s",
			def.Name, snippet(rep.state))}}
	}
	return stepResult{state: next, next: rep.next}
}

// call runs one request on a replica of p.
func (rs *runState) call(ctx context.Context, p *pool, step flow.Step, state, item json.RawMessage, index *int) (*reply, error) {
	name := p.def.Name
	r, err := p.acquire(ctx, rs.spec.RunName, func(line string) { rs.g.log(name, line) })
	if err != nil {
		if ctx.Err() != nil || errors.Is(err, ErrClosed) {
			return nil, err
		}
		return nil, &failure{msg: fmt.Sprintf("starting executor %q: %v", name, err)}
	}
	req := &request{
		Type:    "step",
		ID:      "req-" + strconv.FormatUint(rs.m.seq.Add(1), 10),
		Run:     rs.spec.RunName,
		Step:    step.Name,
		Attempt: rs.attempt,
		State:   state,
		Config:  rs.config,
		Item:    item,
		Index:   index,
		Resume:  rs.resume,
		Epoch:   rs.spec.Epoch,
	}
	onEvent := func(data map[string]any) { rs.g.event(step.Name, data) }
	if r.mux != nil {
		rep, abandoned, err := r.callMux(ctx, req, onEvent)
		p.putMux(r, abandoned)
		return rep, err
	}
	defer p.put(r)
	return r.call(ctx, req, onEvent)
}

// mapStep fans step out over the items of state[step.Map].
func (rs *runState) mapStep(ctx context.Context, p *pool, step flow.Step, state map[string]any) stepResult {
	raw, ok := state[step.Map]
	if !ok {
		return stepResult{err: &failure{msg: fmt.Sprintf("step %q maps over state.%s, which is missing (it must be a list)", step.Name, step.Map)}}
	}
	items, ok := raw.([]any)
	if !ok {
		return stepResult{err: &failure{msg: fmt.Sprintf("step %q maps over state.%s, which must be a list, not %s", step.Name, step.Map, jsonType(raw))}}
	}
	// Items do not get the list itself: N items each carrying N items would be quadratic.
	rest := maps.Clone(state)
	delete(rest, step.Map)
	encoded, err := jsonenc.Marshal(rest)
	if err != nil {
		return stepResult{err: &failure{msg: fmt.Sprintf("encoding state: %v", err)}}
	}

	type itemResult struct {
		value any
		rep   *reply
		err   error
	}
	results := make([]itemResult, len(items))
	var (
		nextItem atomic.Int64
		stopped  atomic.Bool
		wg       sync.WaitGroup
	)
	for range min(len(items), p.limit) {
		wg.Go(func() {
			for !stopped.Load() && ctx.Err() == nil {
				i := int(nextItem.Add(1) - 1)
				if i >= len(items) {
					return
				}
				res := &results[i]
				item, err := jsonenc.Marshal(items[i])
				if err != nil {
					res.err = &failure{msg: fmt.Sprintf("encoding state.%s[%d]: %v", step.Map, i, err)}
					stopped.Store(true)
					return
				}
				index := i
				res.rep, res.err = rs.call(ctx, p, step, encoded, item, &index)
				switch {
				case res.err != nil:
				case res.rep.kind != typeResult:
				case res.rep.state == nil:
					res.value = items[i]
					continue
				default:
					if err := json.Unmarshal(res.rep.state, &res.value); err != nil {
						res.err = &failure{msg: fmt.Sprintf("executor %q broke protocol v1: result state is not valid JSON: %s", p.def.Name, snippet(res.rep.state))}
					} else {
						continue
					}
				}
				stopped.Store(true)
				return
			}
		})
	}
	wg.Wait()
	if ctx.Err() != nil {
		return stepResult{err: context.Cause(ctx)}
	}

	out := make([]any, len(items))
	for i, res := range results {
		switch {
		case res.err != nil:
			if f, ok := res.err.(*failure); ok {
				return stepResult{err: &failure{msg: fmt.Sprintf("%s[%d]: %s", step.Map, i, f.msg), retryable: f.retryable}}
			}
			return stepResult{err: res.err}
		case res.rep == nil:
			// Never started because an earlier item stopped the step; unreachable when
			// every item succeeded.
			continue
		case res.rep.kind == typeError:
			return stepResult{err: &failure{msg: fmt.Sprintf("%s[%d]: %s", step.Map, i, res.rep.message), retryable: res.rep.retryable}}
		case res.rep.kind == typeInterrupt:
			return stepResult{interrupted: true, prompt: res.rep.prompt}
		}
		out[i] = res.value
	}
	next := maps.Clone(state)
	next[step.Map] = out
	return stepResult{state: next}
}

// jsonType names the JSON type of a decoded value, for error messages.
func jsonType(v any) string {
	switch v.(type) {
	case nil:
		return "null"
	case map[string]any:
		return "an object"
	case string:
		return "a string"
	case bool:
		return "a boolean"
	case float64, json.Number, int, int64:
		return "a number"
	default:
		return fmt.Sprintf("%T", v)
	}
}
