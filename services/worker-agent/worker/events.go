package worker

import (
	"sync"
	"time"

	"google.golang.org/protobuf/proto"

	schedulerv1 "github.com/agentserver/agentserver/gen/agentserver/scheduler/v1"
)

// Protocol extensions this worker names in Register.features (see scheduler.proto); the
// scheduler answers with those it uses in the session.
const (
	// featureResultAcks: the scheduler acknowledges a batch of results with one ResultAcks.
	featureResultAcks = "result_acks"
	// featureResultEvents: a RunResult may carry its claim's events.
	featureResultEvents = "result_events"
)

// DefaultEventHold is how long a run's events wait for its result by default.
const DefaultEventHold = 20 * time.Millisecond

// maxEventHold bounds Config.EventHold: events are for watching runs as they go.
const maxEventHold = time.Second

// maxHeldEventsPerRun bounds the events one run holds; more are sent at once.
const maxHeldEventsPerRun = 64

// eventHold keeps runs' events back for their results (Config.EventHold): nearly every run
// reports step_started a moment before its result, and a result that carries its events
// is one message instead of two. A run whose result does not follow within the hold has
// its events sent on their own then, and always before its next checkpoint. Whether a
// session's scheduler takes events in results is decided when the result is sent
// (sendLoop), so a result never carries events to a scheduler that would drop them.
type eventHold struct {
	hold time.Duration
	push func(*schedulerv1.ConnectRequest)

	mu    sync.Mutex
	runs  map[string]*heldRun // by run name
	timer *time.Timer         // armed while runs is not empty
}

type heldRun struct {
	epoch int64
	since time.Time // when the first of evs was held
	evs   []*schedulerv1.RunEvent
}

func newEventHold(hold time.Duration, push func(*schedulerv1.ConnectRequest)) *eventHold {
	return &eventHold{hold: hold, push: push, runs: make(map[string]*heldRun)}
}

func eventMessage(ev *schedulerv1.RunEvent) *schedulerv1.ConnectRequest {
	return &schedulerv1.ConnectRequest{Msg: &schedulerv1.ConnectRequest_Event{Event: ev}}
}

// add holds ev, or sends it at once when holding is off.
func (h *eventHold) add(ev *schedulerv1.RunEvent) {
	if h.hold <= 0 {
		h.push(eventMessage(ev))
		return
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	r := h.runs[ev.GetRun()]
	if r != nil && r.epoch != ev.GetEpoch() {
		h.sendLocked(ev.GetRun(), r) // another claim's: they go first, on their own
		r = nil
	}
	if r == nil {
		r = &heldRun{epoch: ev.GetEpoch(), since: time.Now()}
		h.runs[ev.GetRun()] = r
	}
	r.evs = append(r.evs, ev)
	if len(r.evs) >= maxHeldEventsPerRun {
		h.sendLocked(ev.GetRun(), r)
	}
	if len(h.runs) > 0 && h.timer == nil {
		h.timer = time.AfterFunc(h.hold, h.expire)
	}
}

// take removes and returns the events held for run's claim epoch, for its result.
func (h *eventHold) take(run string, epoch int64) []*schedulerv1.RunEvent {
	if h.hold <= 0 {
		return nil
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	r := h.runs[run]
	if r == nil || r.epoch != epoch {
		return nil
	}
	delete(h.runs, run)
	return r.evs
}

// flush sends the events held for run now (before its checkpoint).
func (h *eventHold) flush(run string) {
	if h.hold <= 0 {
		return
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	if r := h.runs[run]; r != nil {
		h.sendLocked(run, r)
	}
}

// sendLocked pushes r's events, in order, and forgets them. Call with h.mu held.
func (h *eventHold) sendLocked(run string, r *heldRun) {
	for _, ev := range r.evs {
		h.push(eventMessage(ev))
	}
	delete(h.runs, run)
}

// expire sends the events held for a whole hold, and waits for the rest.
func (h *eventHold) expire() {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.timer = nil
	now := time.Now()
	next := time.Duration(-1)
	for run, r := range h.runs {
		if wait := h.hold - now.Sub(r.since); wait > 0 {
			if next < 0 || wait < next {
				next = wait
			}
			continue
		}
		h.sendLocked(run, r)
	}
	if next >= 0 {
		h.timer = time.AfterFunc(next, h.expire)
	}
}

// splitResult is what a session that does not take events in results sends for m: the
// result's events on their own, then the result without them. m itself is left alone (it
// is kept for resending until acknowledged).
func splitResult(m *schedulerv1.ConnectRequest) []*schedulerv1.ConnectRequest {
	res := m.GetResult()
	if len(res.GetEvents()) == 0 {
		return []*schedulerv1.ConnectRequest{m}
	}
	out := make([]*schedulerv1.ConnectRequest, 0, len(res.GetEvents())+1)
	for _, ev := range res.GetEvents() {
		out = append(out, eventMessage(ev))
	}
	bare := proto.CloneOf(res)
	bare.Events = nil
	return append(out, &schedulerv1.ConnectRequest{Msg: &schedulerv1.ConnectRequest_Result{Result: bare}})
}
