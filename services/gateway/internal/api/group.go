package api

import (
	"context"
	"sync"
)

// group runs concurrent calls together: a call waits only while the group's call before
// it is in flight, then everything that queued up meanwhile goes in one (group commit
// without a linger timer, so a lone call pays no extra latency). Creates share
// transactions this way (createBatcher) and reads share statements (runReader).
type group[Req, Res any] struct {
	queue    chan *pending[Req, Res]
	maxBatch int
	// flush answers every call of a batch on its done channel.
	flush func(batch []*pending[Req, Res])

	startOnce sync.Once
	stop      chan struct{}
	wg        sync.WaitGroup
}

type pending[Req, Res any] struct {
	ctx  context.Context
	req  Req
	done chan result[Res]
}

type result[Res any] struct {
	val Res
	err error
}

func newGroup[Req, Res any](maxBatch int, flush func([]*pending[Req, Res])) *group[Req, Res] {
	return &group[Req, Res]{queue: make(chan *pending[Req, Res], 4*maxBatch), maxBatch: maxBatch, flush: flush, stop: make(chan struct{})}
}

// do queues one call and waits for its own answer.
func (g *group[Req, Res]) do(ctx context.Context, req Req) (Res, error) {
	g.startOnce.Do(func() {
		g.wg.Add(1)
		go g.loop()
	})
	p := &pending[Req, Res]{ctx: ctx, req: req, done: make(chan result[Res], 1)}
	var zero Res
	select {
	case g.queue <- p:
	case <-ctx.Done():
		return zero, ctx.Err()
	}
	// A caller that gives up after queueing gets its context's error, like any call that
	// times out (a create may or may not have been written: request_id makes a retry safe).
	select {
	case res := <-p.done:
		return res.val, res.err
	case <-ctx.Done():
		return zero, ctx.Err()
	}
}

// close stops the group after the queued calls are run.
func (g *group[Req, Res]) close() {
	close(g.stop)
	g.wg.Wait()
}

// loop is the group's one flusher: one batch in flight at a time. More made smaller
// batches and cost more CPU per run in PostgreSQL (benchall --quick sustained, 8
// creators: 410–487 µs/run with one create flusher, 543–593 with two, 557–673 with four).
func (g *group[Req, Res]) loop() {
	defer g.wg.Done()
	for {
		var first *pending[Req, Res]
		select {
		case first = <-g.queue:
		case <-g.stop:
			return
		}
		batch := []*pending[Req, Res]{first}
	fill:
		for len(batch) < g.maxBatch {
			select {
			case p := <-g.queue:
				batch = append(batch, p)
			default:
				break fill
			}
		}
		if batch := live(batch); len(batch) > 0 {
			g.flush(batch)
		}
	}
}

// live answers the calls whose callers gave up before their batch ran (nothing was
// done for them) and returns the others.
func live[Req, Res any](batch []*pending[Req, Res]) []*pending[Req, Res] {
	out := batch[:0]
	for _, p := range batch {
		if err := p.ctx.Err(); err != nil {
			p.done <- result[Res]{err: err}
			continue
		}
		out = append(out, p)
	}
	return out
}
