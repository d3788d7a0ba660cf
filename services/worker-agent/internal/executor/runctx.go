package executor

import (
	"context"
	"slices"
	"sync"
)

// NewRunContext returns the context of one run and the function that ends it, with a cause
// as context.WithCancelCause's. Run treats it as any context; ending it interrupts the
// run's requests waiting for an answer directly, where with another context each request
// registers the interruption with context.AfterFunc — a child context, a children map on
// the run's context and a stop function for every request (3 % of the all-in-one server's
// CPU in a burn-down, eleventh pass).
func NewRunContext() (context.Context, context.CancelCauseFunc) {
	c := &runContext{}
	c.Context, c.cancel = context.WithCancelCause(context.Background())
	c.waiting = c.one[:0]
	return c, c.end
}

type runContext struct {
	context.Context
	cancel context.CancelCauseFunc

	mu    sync.Mutex
	ended bool
	// waiting are the replicas reading an answer for this run (more than one in a map step),
	// in one until there are more.
	waiting []*replica
	one     [1]*replica
}

// end ends the context, then interrupts the reads waiting on it, each on its own goroutine
// as context.AfterFunc would (the caller may hold locks of its own).
func (c *runContext) end(cause error) {
	c.cancel(cause)
	c.mu.Lock()
	if c.ended {
		c.mu.Unlock()
		return
	}
	c.ended = true
	waiting := c.waiting
	c.waiting = nil
	c.mu.Unlock()
	for _, r := range waiting {
		go r.interrupt()
	}
}

// watch arranges for r's read to be interrupted when the run ends, at once if it has.
func (c *runContext) watch(r *replica) {
	c.mu.Lock()
	if !c.ended {
		c.waiting = append(c.waiting, r)
		c.mu.Unlock()
		return
	}
	c.mu.Unlock()
	go r.interrupt()
}

// unwatch undoes watch. It reports false when the interruption may still land (the run
// ended meanwhile), as the stop function of context.AfterFunc does.
func (c *runContext) unwatch(r *replica) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.ended {
		return false
	}
	if i := slices.Index(c.waiting, r); i >= 0 {
		last := len(c.waiting) - 1
		c.waiting[i] = c.waiting[last]
		c.waiting[last] = nil
		c.waiting = c.waiting[:last]
	}
	return true
}

// interruptOnEnd arranges for r's read to be interrupted when ctx ends; stop undoes it.
func interruptOnEnd(ctx context.Context, r *replica) interruption {
	if c, ok := ctx.(*runContext); ok {
		c.watch(r)
		return interruption{run: c, r: r}
	}
	return interruption{afterFunc: context.AfterFunc(ctx, r.interrupt)}
}

// interruption is what interruptOnEnd arranged: a value, so that a request on a run's
// context allocates nothing for it.
type interruption struct {
	run       *runContext
	r         *replica
	afterFunc func() bool
}

// stop undoes the arrangement. It reports false when the interruption may still land (the
// context ended meanwhile), as the stop function of context.AfterFunc does.
func (i interruption) stop() bool {
	if i.run != nil {
		return i.run.unwatch(i.r)
	}
	return i.afterFunc()
}
