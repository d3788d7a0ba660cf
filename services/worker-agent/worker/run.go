package worker

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"reflect"
	"time"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/types/known/structpb"

	schedulerv1 "github.com/agentserver/agentserver/gen/agentserver/scheduler/v1"
	"github.com/agentserver/agentserver/pkg/flow"
	"github.com/agentserver/agentserver/services/worker-agent/internal/executor"
)

// start begins executing an assignment, or hands it straight back when no slot of its type
// is free (the scheduler never over-assigns, but a worker must not trust that blindly).
func (w *Worker) start(a *schedulerv1.Assignment) {
	w.mu.Lock()
	if cur, dup := w.runs[a.GetRun()]; dup {
		w.mu.Unlock()
		if a.GetEpoch() > cur.epoch {
			// A newer claim of a run still executing here under an older one: that claim is
			// gone (its lease expired while this worker was paused or cut off), so its
			// execution stops. The new claim cannot start before the old execution is gone;
			// it is handed back (requeued without using an attempt), never dropped: a claim
			// left unanswered would stay RUNNING with nobody executing it.
			w.log.Warn("assignment supersedes a run still executing under an older claim; stopping that one and handing this one back",
				"run", a.GetRun(), "epoch", a.GetEpoch(), "old_epoch", cur.epoch)
			cur.cancel(errLeaseLost)
			w.finish(&schedulerv1.RunResult{Run: a.GetRun(), Epoch: a.GetEpoch(), Outcome: schedulerv1.RunResult_OUTCOME_RELEASED})
		}
		return
	}
	if w.draining || w.used[a.GetSlotType()] >= w.slots[a.GetSlotType()] || !w.gpuFree(a.GetSlotType(), a.GetGpuUuid()) {
		w.mu.Unlock()
		w.log.Warn("no free slot for assignment; handing it back", "run", a.GetRun(), "slot_type", a.GetSlotType())
		w.finish(&schedulerv1.RunResult{Run: a.GetRun(), Epoch: a.GetEpoch(), Outcome: schedulerv1.RunResult_OUTCOME_RELEASED})
		return
	}
	// A run context ends the run's executor reads itself (executor.NewRunContext).
	ctx, cancel := executor.NewRunContext()
	r := &activeRun{name: a.GetRun(), epoch: a.GetEpoch(), slotType: a.GetSlotType(), cancel: cancel, done: make(chan struct{})}
	r.gpu = w.takeGPU(r.name, r.slotType, a.GetGpuUuid()) // GPU wiring (gpu.go): a gpu run holds one GPU until it ends
	w.runs[r.name] = r
	w.used[r.slotType]++
	w.mu.Unlock()
	w.runners.do(func() {
		// The execution timeout cancels the run's context with ErrTimedOut: one timer, not
		// a child context per run (context.WithTimeoutCause registers the child with its
		// parent and allocates both: 2.6 % of the all-in-one server's CPU samples in a burn-down).
		var timeout *time.Timer
		if t := a.GetTimeout().AsDuration(); t > 0 {
			timeout = time.AfterFunc(t, func() { cancel(executor.ErrTimedOut) })
		}
		res := w.execute(ctx, a, runEnv(r))
		if timeout != nil {
			timeout.Stop()
		}
		cancel(nil)
		w.mu.Lock()
		delete(w.runs, r.name)
		w.used[r.slotType]--
		w.releaseGPU(r)
		w.mu.Unlock()
		w.finish(res)
		close(r.done)
		select {
		case w.idle <- struct{}{}:
		default:
		}
	})
}

// finish queues a result and keeps it until the scheduler acknowledges it. A result of an
// older claim never replaces one of a newer claim of the same run in the resend set: the
// older one can only be refused, the newer one must not be lost with a broken stream.
func (w *Worker) finish(res *schedulerv1.RunResult) {
	if evs := w.events.take(res.GetRun(), res.GetEpoch()); len(evs) > 0 {
		res.Events = evs // before anyone else sees res: it is read-only once queued
	}
	w.mu.Lock()
	if old, ok := w.unacked[res.GetRun()]; !ok || old.GetEpoch() <= res.GetEpoch() {
		w.unacked[res.GetRun()] = res
	}
	w.mu.Unlock()
	w.outbox.push(&schedulerv1.ConnectRequest{Msg: &schedulerv1.ConnectRequest_Result{Result: res}})
}

func (w *Worker) event(a *schedulerv1.Assignment, typ string, data map[string]any) {
	s, err := structpb.NewStruct(data)
	if err != nil {
		s, _ = structpb.NewStruct(map[string]any{"error": "event data is not JSON: " + err.Error()})
	}
	w.pushEvent(a, typ, s)
}

// stepStarted sends the step_started event of step, {"step": step}. It is sent for every
// step of every run, so the events of a step share one Struct (a Struct and its map were
// three allocations of every run): messages are read-only once queued (the scheduler and
// the gRPC codec only read them).
func (w *Worker) stepStarted(a *schedulerv1.Assignment, step string) {
	w.pushEvent(a, "step_started", w.stepData.Get(step, newStepData))
}

// newStepData makes the data of step's step_started event.
func newStepData(step string) *structpb.Struct {
	// Step names are validated ASCII, which NewStruct would check again.
	return &structpb.Struct{Fields: map[string]*structpb.Value{"step": structpb.NewStringValue(step)}}
}

func (w *Worker) pushEvent(a *schedulerv1.Assignment, typ string, data *structpb.Struct) {
	w.events.add(&schedulerv1.RunEvent{Run: a.GetRun(), Epoch: a.GetEpoch(), Type: typ, Data: data})
}

// execute runs the assignment's flow, its replicas getting env on top of the worker's
// environment, and returns its result. ctx ends with the run (its cause says why: see
// start, which also arms the execution timeout).
func (w *Worker) execute(ctx context.Context, a *schedulerv1.Assignment, env []string) *schedulerv1.RunResult {
	res := &schedulerv1.RunResult{Run: a.GetRun(), Epoch: a.GetEpoch()}
	f, replicas, err := w.parseFlow(a.GetAssistant(), a.GetAssistantVersion(), a.GetFlow())
	if err != nil {
		res.Outcome = schedulerv1.RunResult_OUTCOME_FAILED
		res.Error = "invalid flow: " + err.Error()
		return res
	}
	spec := executor.RunSpec{
		RunName:   a.GetRun(),
		Attempt:   int(a.GetAttempt()),
		Epoch:     a.GetEpoch(),
		FlowKey:   replicas,
		Flow:      f,
		State:     a.GetState().AsMap(),
		Config:    a.GetConfig().AsMap(),
		StartStep: a.GetStep(),
		Env:       env,
	}
	if a.GetResume() != nil {
		// Raw JSON, so that a null answer is still sent as "resume": null.
		if b, err := protojson.Marshal(a.GetResume()); err == nil {
			spec.Resume = json.RawMessage(b)
		}
	}
	out := w.exec.Run(ctx, spec, executor.Callbacks{
		OnStepStart: func(step string) { w.stepStarted(a, step) },
		OnEvent: func(step string, data map[string]any) {
			w.event(a, "executor_event", map[string]any{"step": step, "data": data})
		},
		OnLog: func(executor, line string) {
			w.event(a, "log", map[string]any{"executor": executor, "line": line})
		},
		OnCheckpoint: func(next string, state map[string]any) error {
			if next == "" {
				// The flow is done: the result that follows carries this state, so a
				// checkpoint would be a write for nothing.
				return nil
			}
			s, err := structpb.NewStruct(state)
			if err != nil {
				return fmt.Errorf("state is not a JSON object: %w", err)
			}
			// The next step starts only once the checkpoint is durable, so a step whose
			// checkpoint was acknowledged never runs again. Fencing is checked by the
			// scheduler; a refused checkpoint comes back as a lease_lost cancel, which
			// ends this run (and this wait).
			return w.checkpoint(ctx, &schedulerv1.Checkpoint{Run: a.GetRun(), Epoch: a.GetEpoch(), NextStep: next, State: s})
		},
	})
	if out.State != nil {
		if a.GetState() != nil && sameMap(out.State, spec.State) {
			// The state came back unchanged: the executor package hands back the very map
			// it was given (it never changes a state map in place), so the assignment's
			// Struct is the final state. Both messages are read-only from here on.
			res.State = a.GetState()
		} else if s, err := structpb.NewStruct(out.State); err == nil {
			res.State = s
		}
	}
	res.Error, res.Retryable, res.Step = out.Error, out.Retryable, out.Step
	switch out.Kind {
	case executor.OutcomeSucceeded:
		res.Outcome = schedulerv1.RunResult_OUTCOME_SUCCEEDED
		if res.State == nil && out.State != nil {
			res.Outcome = schedulerv1.RunResult_OUTCOME_FAILED
			res.Error = "final state is not a JSON object"
		}
	case executor.OutcomeFailed:
		res.Outcome = schedulerv1.RunResult_OUTCOME_FAILED
	case executor.OutcomeInterrupted:
		res.Outcome = schedulerv1.RunResult_OUTCOME_INTERRUPTED
		if p, err := structpb.NewValue(out.Prompt); err == nil {
			res.Prompt = p
		}
	case executor.OutcomeTimedOut:
		res.Outcome = schedulerv1.RunResult_OUTCOME_TIMED_OUT
		res.Error = fmt.Sprintf("execution timeout of %s exceeded", a.GetTimeout().AsDuration().Round(time.Millisecond))
	default: // cancelled, released or lease lost
		cause := context.Cause(ctx)
		switch {
		case errors.Is(cause, errReleased):
			res.Outcome = schedulerv1.RunResult_OUTCOME_RELEASED
		case errors.Is(cause, executor.ErrTimedOut):
			// The timeout hit while a checkpoint waited for its acknowledgement.
			res.Outcome = schedulerv1.RunResult_OUTCOME_TIMED_OUT
			res.Error = fmt.Sprintf("execution timeout of %s exceeded", a.GetTimeout().AsDuration().Round(time.Millisecond))
		default:
			res.Outcome = schedulerv1.RunResult_OUTCOME_CANCELLED
		}
	}
	return res
}

// maxCachedFlows bounds the parsed flows a worker keeps.
const maxCachedFlows = 256

// parseFlow parses a flow once per assistant version (a version's flow never changes) and
// returns it with the key its executors' replicas are pooled under (RunSpec.FlowKey): the
// assistant and its flow's content. The versions of an assistant that share a flow share
// replicas, so an update that leaves the flow as it was (a concurrency limit, a priority,
// the config or the timeout) keeps them warm, while any change to the flow starts new ones
// (docs/architecture.md). Assistants never share replicas.
func (w *Worker) parseFlow(assistant string, version int64, src string) (*flow.Flow, string, error) {
	key := flowVersion{assistant, version}
	w.flowMu.Lock()
	if f, ok := w.flows[key]; ok && f.src == src {
		w.flowMu.Unlock()
		return f.flow, f.replicas, nil
	}
	w.flowMu.Unlock()
	f, err := flow.Parse([]byte(src))
	if err != nil {
		return nil, "", err
	}
	sum := sha256.Sum256([]byte(src))
	replicas := assistant + "#" + hex.EncodeToString(sum[:12])
	w.flowMu.Lock()
	if w.flows == nil || len(w.flows) >= maxCachedFlows {
		w.flows = make(map[flowVersion]cachedFlow)
	}
	w.flows[key] = cachedFlow{src: src, flow: f, replicas: replicas}
	w.flowMu.Unlock()
	return f, replicas, nil
}

// flowVersion names an assistant version, whose flow never changes.
type flowVersion struct {
	assistant string
	version   int64
}

type cachedFlow struct {
	src  string
	flow *flow.Flow
	// replicas is the key the flow's replicas are pooled under (see parseFlow).
	replicas string
}

// pendingCheckpoint is a checkpoint sent and not yet acknowledged.
type pendingCheckpoint struct {
	msg  *schedulerv1.Checkpoint
	done chan struct{}
}

// checkpoint sends cp and waits until the scheduler acknowledges it, or the run ends.
// A run has at most one checkpoint in flight: its steps run one after another.
func (w *Worker) checkpoint(ctx context.Context, cp *schedulerv1.Checkpoint) error {
	p := &pendingCheckpoint{msg: cp, done: make(chan struct{})}
	w.mu.Lock()
	w.checkpoints[cp.GetRun()] = p
	w.mu.Unlock()
	defer func() {
		w.mu.Lock()
		if w.checkpoints[cp.GetRun()] == p {
			delete(w.checkpoints, cp.GetRun())
		}
		w.mu.Unlock()
	}()
	w.events.flush(cp.GetRun()) // the step's events come before its checkpoint
	w.outbox.push(&schedulerv1.ConnectRequest{Msg: &schedulerv1.ConnectRequest_Checkpoint{Checkpoint: cp}})
	select {
	case <-p.done:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("checkpoint of %s not acknowledged: %w", cp.GetRun(), context.Cause(ctx))
	}
}

// checkpointAcked releases the run waiting for that checkpoint.
func (w *Worker) checkpointAcked(ack *schedulerv1.CheckpointAck) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if p, ok := w.checkpoints[ack.GetRun()]; ok && p.msg.GetEpoch() == ack.GetEpoch() && p.msg.GetNextStep() == ack.GetNextStep() {
		delete(w.checkpoints, ack.GetRun())
		close(p.done)
	}
}

// sameMap reports whether a and b are one map, not merely equal ones.
func sameMap(a, b map[string]any) bool {
	return reflect.ValueOf(a).UnsafePointer() == reflect.ValueOf(b).UnsafePointer()
}
