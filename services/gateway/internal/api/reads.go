package api

import (
	"context"
	"time"

	"github.com/google/uuid"

	"github.com/agentserver/agentserver/pkg/store"
)

// runReader groups the reads of concurrent GetRun and WaitRun calls into one statement (a
// group, as creates share transactions): clients that poll or wait on many runs cost the
// database a statement per batch, not one per call, and a lone read pays no extra latency.
type runReader struct {
	*group[store.RunKey, *store.Run]
	store *store.Store
}

type pendingRead = pending[store.RunKey, *store.Run]

// readTimeout bounds one grouped read (up to maxBatch runs by primary key).
const readTimeout = 30 * time.Second

func newRunReader(st *store.Store, maxBatch int) *runReader {
	r := &runReader{store: st}
	r.group = newGroup(maxBatch, r.flush)
	return r
}

// get reads one run (store.ErrNotFound when the tenant has no such run).
func (r *runReader) get(ctx context.Context, tenant string, id uuid.UUID) (*store.Run, error) {
	return r.do(ctx, store.RunKey{Tenant: tenant, ID: id})
}

func (r *runReader) flush(batch []*pendingRead) {
	keys := make([]store.RunKey, len(batch))
	for i, p := range batch {
		keys[i] = p.req
	}
	// The statement outlives any one caller's context: it answers all of them. A database
	// that does not answer fails the batch after readTimeout (the callers have their own
	// deadlines): the reads queued behind it then go on.
	ctx, cancel := context.WithTimeout(context.Background(), readTimeout)
	defer cancel()
	runs, err := r.store.GetRuns(ctx, keys)
	for _, p := range batch {
		switch run, ok := runs[p.req]; {
		case err != nil:
			p.done <- result[*store.Run]{err: err}
		case !ok:
			p.done <- result[*store.Run]{err: store.ErrNotFound}
		default:
			p.done <- result[*store.Run]{val: run}
		}
	}
}
