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

// eventReader groups the polls of concurrent StreamRunEvents calls into one statement,
// as runReader groups run reads: many clients streaming runs' events cost the database a
// statement per batch, not one per stream and poll.
type eventReader struct {
	*group[store.RunEventsAfter, []store.RunEvent]
	store *store.Store
}

func newEventReader(st *store.Store, maxBatch int) *eventReader {
	r := &eventReader{store: st}
	r.group = newGroup(maxBatch, r.flush)
	return r
}

// streamPage is the most events one poll of a stream reads.
const streamPage = 500

// after reads up to streamPage events of a run with seq > afterSeq.
func (r *eventReader) after(ctx context.Context, tenant string, id uuid.UUID, afterSeq int64) ([]store.RunEvent, error) {
	return r.do(ctx, store.RunEventsAfter{Tenant: tenant, ID: id, AfterSeq: afterSeq})
}

func (r *eventReader) flush(batch []*pending[store.RunEventsAfter, []store.RunEvent]) {
	runs := make([]store.RunEventsAfter, len(batch))
	for i, p := range batch {
		runs[i] = p.req
	}
	ctx, cancel := context.WithTimeout(context.Background(), readTimeout)
	defer cancel()
	events, err := r.store.ListEventsOfRuns(ctx, runs, streamPage)
	for i, p := range batch {
		if err != nil {
			p.done <- result[[]store.RunEvent]{err: err}
			continue
		}
		p.done <- result[[]store.RunEvent]{val: events[i]}
	}
}
