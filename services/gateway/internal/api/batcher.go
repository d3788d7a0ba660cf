package api

import (
	"context"

	"github.com/agentserver/agentserver/pkg/store"
)

// createBatcher groups the inserts of concurrent CreateRun calls into one transaction
// (a group: a call waits only while the batch before it commits). A run refused for a
// reason of its own (an unknown assistant or thread, a busy thread) fails alone and the
// others are created together (store.CreateRunsEach), so each caller gets the answer its
// own run deserves.
type createBatcher struct {
	*group[createRequest, *store.Run]
	store    *store.Store
	defaults store.RunDefaults
}

type createRequest struct {
	tenant string
	run    store.NewRun
}

type pendingCreate = pending[createRequest, *store.Run]

func newCreateBatcher(st *store.Store, d store.RunDefaults, maxBatch int) *createBatcher {
	b := &createBatcher{store: st, defaults: d}
	b.group = newGroup(maxBatch, b.flush)
	return b
}

// create writes one run through the batcher and returns it as created.
func (b *createBatcher) create(ctx context.Context, tenant string, r store.NewRun) (*store.Run, error) {
	return b.do(ctx, createRequest{tenant: tenant, run: r})
}

// flush writes a batch, one transaction per tenant.
func (b *createBatcher) flush(batch []*pendingCreate) {
	byTenant := make(map[string][]*pendingCreate)
	for _, p := range batch {
		byTenant[p.req.tenant] = append(byTenant[p.req.tenant], p)
	}
	for tenant, ps := range byTenant {
		b.write(tenant, ps)
	}
}

func (b *createBatcher) write(tenant string, ps []*pendingCreate) {
	runs := make([]store.NewRun, len(ps))
	for i, p := range ps {
		runs[i] = p.req.run
	}
	// The batch outlives any one caller's context: its commit answers all of them.
	out, errs, err := b.store.CreateRunsEach(context.Background(), tenant, runs, b.defaults)
	for i, p := range ps {
		switch {
		case err != nil:
			p.done <- result[*store.Run]{err: err}
		case errs[i] != nil:
			p.done <- result[*store.Run]{err: errs[i]}
		default:
			p.done <- result[*store.Run]{val: out[i]}
		}
	}
}
