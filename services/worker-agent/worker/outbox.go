package worker

import (
	"sync"

	schedulerv1 "github.com/agentserver/agentserver/gen/agentserver/scheduler/v1"
)

// outbox is the ordered queue of messages for the scheduler. It outlives sessions, so
// what a broken stream did not take is sent on the next one.
type outbox struct {
	mu    sync.Mutex
	items []*schedulerv1.ConnectRequest
	ready chan struct{}
}

func newOutbox() *outbox { return &outbox{ready: make(chan struct{}, 1)} }

func (o *outbox) signal() {
	select {
	case o.ready <- struct{}{}:
	default:
	}
}

func (o *outbox) push(m *schedulerv1.ConnectRequest) {
	o.mu.Lock()
	o.items = append(o.items, m)
	o.mu.Unlock()
	o.signal()
}

func (o *outbox) pushFront(m *schedulerv1.ConnectRequest) {
	o.mu.Lock()
	o.items = append([]*schedulerv1.ConnectRequest{m}, o.items...)
	o.mu.Unlock()
	o.signal()
}

func (o *outbox) pop() *schedulerv1.ConnectRequest {
	o.mu.Lock()
	defer o.mu.Unlock()
	if len(o.items) == 0 {
		return nil
	}
	m := o.items[0]
	o.items[0] = nil
	o.items = o.items[1:]
	return m
}

// queuedResults is the set of results waiting in the outbox.
func (o *outbox) queuedResults() map[*schedulerv1.RunResult]bool {
	o.mu.Lock()
	defer o.mu.Unlock()
	out := make(map[*schedulerv1.RunResult]bool)
	for _, m := range o.items {
		if r := m.GetResult(); r != nil {
			out[r] = true
		}
	}
	return out
}
