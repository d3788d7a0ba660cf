package api

import (
	"context"
	"errors"
	"sync"

	"github.com/agentserver/agentserver/pkg/store"
)

// createBatcher groups the inserts of concurrent CreateRun calls into one transaction: a
// call waits only while the batch before it commits, then everything that queued up
// meanwhile commits together (group commit without a linger timer, so a lone call pays
// no extra latency). A batch that fails for a reason specific to one of its runs (an
// unknown assistant or thread, a busy thread) is retried run by run, so each caller gets
// the answer its own run deserves.
type createBatcher struct {
	store    *store.Store
	defaults store.RunDefaults
	queue    chan *pendingCreate
	maxBatch int

	startOnce sync.Once
	stop      chan struct{}
	wg        sync.WaitGroup
}

type pendingCreate struct {
	ctx    context.Context
	tenant string
	run    store.NewRun
	done   chan createResult
}

type createResult struct {
	run *store.Run
	err error
}

// flushers is how many batches may be in flight at once. One: while a batch commits the
// next fills in the queue, so concurrent calls share transactions. More flushers made
// smaller batches and cost more CPU per run in PostgreSQL (benchall --quick sustained,
// 8 creators: 410–487 µs/run with one flusher, 543–593 with two, 557–673 with four).
const flushers = 1

func newCreateBatcher(st *store.Store, d store.RunDefaults, maxBatch int) *createBatcher {
	return &createBatcher{store: st, defaults: d, queue: make(chan *pendingCreate, 4*maxBatch), maxBatch: maxBatch, stop: make(chan struct{})}
}

// create enqueues one run through the batcher and waits for its own result.
func (b *createBatcher) create(ctx context.Context, tenant string, r store.NewRun) (*store.Run, error) {
	b.startOnce.Do(func() {
		for range flushers {
			b.wg.Add(1)
			go b.loop()
		}
	})
	p := &pendingCreate{ctx: ctx, tenant: tenant, run: r, done: make(chan createResult, 1)}
	select {
	case b.queue <- p:
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	// A caller that gives up after queueing gets its context's error, like any call that
	// times out: the run may or may not have been created (request_id makes a retry safe).
	select {
	case res := <-p.done:
		return res.run, res.err
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// close stops the flushers after the queued requests are written.
func (b *createBatcher) close() {
	close(b.stop)
	b.wg.Wait()
}

func (b *createBatcher) loop() {
	defer b.wg.Done()
	for {
		var first *pendingCreate
		select {
		case first = <-b.queue:
		case <-b.stop:
			return
		}
		batch := []*pendingCreate{first}
	fill:
		for len(batch) < b.maxBatch {
			select {
			case p := <-b.queue:
				batch = append(batch, p)
			default:
				break fill
			}
		}
		b.flush(batch)
	}
}

// flush writes a batch, one transaction per tenant.
func (b *createBatcher) flush(batch []*pendingCreate) {
	byTenant := make(map[string][]*pendingCreate)
	for _, p := range batch {
		if p.ctx.Err() != nil {
			// Nobody waits for it any more and nothing was written: drop it.
			p.done <- createResult{err: p.ctx.Err()}
			continue
		}
		byTenant[p.tenant] = append(byTenant[p.tenant], p)
	}
	for tenant, ps := range byTenant {
		b.write(tenant, ps)
	}
}

func (b *createBatcher) write(tenant string, ps []*pendingCreate) {
	runs := make([]store.NewRun, len(ps))
	for i, p := range ps {
		runs[i] = p.run
	}
	// The batch outlives any one caller's context: its commit answers all of them.
	out, err := b.store.CreateRuns(context.Background(), tenant, runs, b.defaults)
	if err == nil {
		for i, p := range ps {
			p.done <- createResult{run: out[i]}
		}
		return
	}
	if len(ps) > 1 && runSpecific(err) {
		for _, p := range ps {
			b.write(tenant, []*pendingCreate{p})
		}
		return
	}
	for _, p := range ps {
		p.done <- createResult{err: err}
	}
}

// runSpecific reports errors caused by one run of a batch rather than by the database.
func runSpecific(err error) bool {
	var anf *store.AssistantNotFoundError
	var tnf *store.ThreadNotFoundError
	return errors.As(err, &anf) || errors.As(err, &tnf) || errors.Is(err, store.ErrThreadBusy)
}
