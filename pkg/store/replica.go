package store

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/agentserver/agentserver/pkg/rawio"
)

// DefaultReplicaProbeInterval is how often a read replica that failed is probed until it
// answers again.
const DefaultReplicaProbeInterval = time.Second

// OpenOption configures Open.
type OpenOption func(*openOptions)

type openOptions struct {
	readURL       string
	log           *slog.Logger
	probeInterval time.Duration
	tracer        pgx.QueryTracer
}

// WithReadReplica sends the reads that tolerate staleness (the List methods: runs,
// assistants, threads, workers) to a read replica, typically a streaming standby of the
// primary (DATABASE_READ_URL). Everything that must read its own writes (Get*, the queue,
// run events, every write) stays on the primary. An empty url means no replica.
//
// A replica that cannot be reached, at Open or later, never fails a read: the read goes
// to the primary, the replica is probed in the background every
// DefaultReplicaProbeInterval, and reads return to it once it answers. A replica that
// answers but lags shows older data to List calls, by as much as it lags.
func WithReadReplica(url string) OpenOption {
	return func(o *openOptions) { o.readURL = url }
}

// WithLogger sets the logger of the store's background work (the read replica's
// probes); nil means slog.Default().
func WithLogger(log *slog.Logger) OpenOption {
	return func(o *openOptions) { o.log = log }
}

// WithQueryTracer traces every query of the store's connections, the read replica's
// included (pgx's hook: OpenTelemetry's pgx instrumentation, or a count in tests).
func WithQueryTracer(t pgx.QueryTracer) OpenOption {
	return func(o *openOptions) { o.tracer = t }
}

// WithReplicaProbeInterval changes how often a failed read replica is probed (tests).
func WithReplicaProbeInterval(d time.Duration) OpenOption {
	return func(o *openOptions) { o.probeInterval = d }
}

// querier is what a read needs of a pool.
type querier interface {
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
}

// replica is the read replica of a Store and whether it is usable now.
type replica struct {
	pool     *pgxpool.Pool
	log      *slog.Logger
	interval time.Duration

	down atomic.Bool // reads go to the primary while set

	mu      sync.Mutex
	probing bool
	closed  bool
	stop    chan struct{} // closed by close
	wg      sync.WaitGroup
}

// openReplica builds the replica's pool. It fails only on a malformed URL: a replica
// that does not answer yet starts marked down and is probed.
func openReplica(ctx context.Context, url string, o openOptions) (*replica, error) {
	cfg, err := pgxpool.ParseConfig(url)
	if err != nil {
		return nil, fmt.Errorf("parsing read replica URL (DATABASE_READ_URL): %w", err)
	}
	if cfg.MaxConns < 16 {
		cfg.MaxConns = 16
	}
	if cfg.ConnConfig.ConnectTimeout == 0 || cfg.ConnConfig.ConnectTimeout > 5*time.Second {
		// A replica that does not answer must not hold a read for long before it
		// falls back to the primary.
		cfg.ConnConfig.ConnectTimeout = 2 * time.Second
	}
	cfg.AfterConnect = registerUUID
	cfg.ConnConfig.DialFunc = rawio.Dial(cfg.ConnConfig.DialFunc)
	cfg.ConnConfig.Tracer = o.tracer
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("read replica: %w", err)
	}
	r := &replica{pool: pool, log: o.log, interval: o.probeInterval, stop: make(chan struct{})}
	if r.log == nil {
		r.log = slog.Default()
	}
	if r.interval <= 0 {
		r.interval = DefaultReplicaProbeInterval
	}
	pingCtx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if err := pool.Ping(pingCtx); err != nil {
		r.markDown(fmt.Errorf("first connection: %w", err))
	}
	return r, nil
}

// markDown sends reads to the primary and starts probing the replica, once.
func (r *replica) markDown(cause error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.down.Store(true)
	if r.probing || r.closed {
		return
	}
	r.probing = true
	r.log.Warn("read replica unavailable; stale reads go to the primary until it answers", "err", cause)
	// Connections to a replica that went away are broken; new ones are made after it
	// answers a probe.
	r.pool.Reset()
	r.wg.Add(1)
	go r.probe()
}

func (r *replica) probe() {
	defer r.wg.Done()
	t := time.NewTicker(r.interval)
	defer t.Stop()
	for {
		select {
		case <-r.stop:
			return
		case <-t.C:
		}
		ctx, cancel := context.WithTimeout(context.Background(), max(r.interval, 2*time.Second))
		err := r.pool.Ping(ctx)
		cancel()
		if err != nil {
			continue
		}
		r.mu.Lock()
		r.probing = false
		r.down.Store(false)
		r.mu.Unlock()
		r.log.Info("read replica answers again; stale reads go to it")
		return
	}
}

func (r *replica) close() {
	r.mu.Lock()
	if !r.closed {
		r.closed = true
		close(r.stop)
	}
	r.mu.Unlock()
	r.wg.Wait()
	r.pool.Close()
}

// connectionTrouble reports whether err says the replica cannot serve at all (it is
// unreachable, shutting down, starting, or out of connections), as opposed to refusing
// one query (a recovery conflict, say).
func connectionTrouble(err error) bool {
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) {
		return true // no answer from the server: network, connection or protocol failure
	}
	if len(pgErr.Code) < 2 {
		return false
	}
	switch pgErr.Code[:2] {
	case "08", // connection exception
		"57", // operator intervention: admin_shutdown, crash_shutdown, cannot_connect_now
		"53": // insufficient resources: too many connections, out of memory, disk full
		return true
	}
	return false
}

// ReadReplicaUp reports whether stale reads go to a read replica now: false without one
// and while the one configured is failing.
func (s *Store) ReadReplicaUp() bool {
	return s.replica != nil && !s.replica.down.Load()
}

// readStale runs a read that tolerates staleness: on the replica when there is a usable
// one, else (or when it fails there) on the primary. f may be called twice and must
// start from scratch each time.
func readStale[T any](ctx context.Context, s *Store, f func(q querier) (T, error)) (T, error) {
	if r := s.replica; r != nil && !r.down.Load() {
		out, err := f(r.pool)
		if err == nil || ctx.Err() != nil {
			return out, err
		}
		if connectionTrouble(err) {
			r.markDown(err)
		}
		// Any failure on the replica (down, or a query it refused, such as one
		// cancelled by a recovery conflict) is retried on the primary.
	}
	return f(s.pool)
}

// listStale runs a listing's query where staleness is tolerated (see readStale) and scans
// its rows; what names the listing in errors.
func listStale[T any](ctx context.Context, s *Store, what, sql string, args []any, scan func(pgx.Row) (T, error)) ([]T, error) {
	return readStale(ctx, s, func(q querier) ([]T, error) {
		rows, err := q.Query(ctx, sql, args...)
		if err != nil {
			return nil, fmt.Errorf("listing %s: %w", what, err)
		}
		out, err := collect(rows, scan)
		if err != nil {
			return nil, fmt.Errorf("listing %s: %w", what, err)
		}
		return out, nil
	})
}
