// Package store owns agentserver's PostgreSQL schema and every SQL statement that reads
// or writes it: assistants, runs, the run queue with its leases and fencing epochs, run
// events and the worker registry. Services call its methods; no SQL lives anywhere else.
//
// The store never decides policy (retry delays, lease lengths, defaults): callers pass
// them in. It must never let a write about a run through unless the writer holds the
// run's current fencing epoch.
package store

import (
	"context"
	"database/sql"
	"embed"
	"errors"
	"fmt"
	"io/fs"
	"strings"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/jackc/pgx/v5/stdlib"
	"github.com/pressly/goose/v3"
	"github.com/pressly/goose/v3/lock"

	"github.com/agentserver/agentserver/pkg/rawio"
)

//go:embed migrations/*.sql
var migrations embed.FS

// DefaultTenant owns every resource until API keys with tenants exist.
const DefaultTenant = "default"

// Sentinel errors returned by store methods.
var (
	// ErrNotFound means the resource does not exist (for this tenant).
	ErrNotFound = errors.New("not found")
	// ErrAlreadyExists means a resource with that id exists.
	ErrAlreadyExists = errors.New("already exists")
	// ErrStaleEpoch means the writer's claim of a run is no longer current: another
	// claim replaced it, or the run left RUNNING. The write was refused.
	ErrStaleEpoch = errors.New("stale fencing epoch")
)

// AssistantNotFoundError reports an assistant a run referred to that does not exist.
type AssistantNotFoundError struct {
	// ID is the assistant id.
	ID string
}

func (e *AssistantNotFoundError) Error() string {
	return fmt.Sprintf("assistant %q does not exist", "assistants/"+e.ID)
}

// Is makes errors.Is(err, ErrNotFound) true.
func (e *AssistantNotFoundError) Is(target error) bool { return target == ErrNotFound }

// Store is the PostgreSQL store. It is safe for concurrent use.
type Store struct {
	pool *pgxpool.Pool
	// hot runs the statements of the claim → finish cycle with plans made once per
	// connection (hotSettings). Everything else uses pool.
	hot *pgxpool.Pool
	// replica serves the reads that tolerate staleness; nil without one (replica.go).
	replica *replica
	// deadlocks counts the transactions PostgreSQL rolled back to break a deadlock and
	// retryDeadlock ran again.
	deadlocks atomic.Int64
}

// Open connects to the database at url (a libpq URL or DSN), and to a read replica when
// WithReadReplica names one.
func Open(ctx context.Context, url string, opts ...OpenOption) (*Store, error) {
	var o openOptions
	for _, opt := range opts {
		opt(&o)
	}
	cfg, err := pgxpool.ParseConfig(url)
	if err != nil {
		return nil, fmt.Errorf("parsing database URL: %w", err)
	}
	if cfg.MaxConns < 16 {
		cfg.MaxConns = 16
	}
	durable := durableCommits(cfg.ConnConfig)
	cfg.AfterConnect = func(ctx context.Context, conn *pgx.Conn) error {
		if err := registerUUID(ctx, conn); err != nil {
			return err
		}
		return durable(ctx, conn)
	}
	// Reads and writes as raw system calls: see package rawio (~15 % of the all-in-one
	// server's CPU went to the runtime's monitor and its hand-offs around them).
	cfg.ConnConfig.DialFunc = rawio.Dial(cfg.ConnConfig.DialFunc)
	cfg.ConnConfig.Tracer = o.tracer
	hotCfg := cfg.Copy()
	hotCfg.AfterConnect = func(ctx context.Context, conn *pgx.Conn) error {
		if err := hotConnect(ctx, conn); err != nil {
			return err
		}
		return durable(ctx, conn)
	}
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("connecting to database: %w", err)
	}
	// Connections are opened on first use: a gateway, which never claims, opens none.
	hot, err := pgxpool.NewWithConfig(ctx, hotCfg)
	if err != nil {
		pool.Close()
		return nil, fmt.Errorf("connecting to database: %w", err)
	}
	pingCtx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if err := pool.Ping(pingCtx); err != nil {
		pool.Close()
		hot.Close()
		return nil, fmt.Errorf("connecting to database (is PostgreSQL running and DATABASE_URL right?): %w", err)
	}
	st := &Store{pool: pool, hot: hot}
	if o.readURL != "" {
		if st.replica, err = openReplica(ctx, o.readURL, o); err != nil {
			pool.Close()
			hot.Close()
			return nil, err
		}
	}
	return st, nil
}

// Pool returns the underlying connection pool.
func (s *Store) Pool() *pgxpool.Pool { return s.pool }

// Close closes every connection.
func (s *Store) Close() {
	if s.replica != nil {
		s.replica.close()
	}
	s.hot.Close()
	s.pool.Close()
}

// hotSettings are the session settings of the hot pool's connections.
//
// PostgreSQL re-plans a prepared statement at every execution while its custom plans look
// cheaper than its generic plan. The claim and finish statements take arrays of ids
// (unnest($1), = ANY($1)), which a custom plan sizes exactly and a generic plan guesses,
// so both were planned anew at every execution: 12 % of PostgreSQL's CPU under sustained
// load (perf of benchall's sustained workload; 1 % with generic plans).
//
// A generic plan is made once and kept until the tables' statistics change, so it must
// stay right whatever the tables' sizes become: run_leases and run_queue are small at
// times and huge at others, and a sequential scan chosen while one was small would read
// all of it at every call once it has grown. Sequential and bitmap scans are therefore off
// on these connections: every statement sent through them probes indexes by key (the
// candidate scan of the claim pins its own plan, migrations 8 and 9).
//
// Session settings rather than startup parameters, which PgBouncer refuses. The scheduler
// connects directly (its LISTEN needs it); through PgBouncer in transaction mode the
// settings stay with whichever server connection ran them, changing only plan choices.
const hotSettings = "SET plan_cache_mode = force_generic_plan; SET enable_seqscan = off; SET enable_bitmapscan = off"

func hotConnect(ctx context.Context, conn *pgx.Conn) error {
	if err := registerUUID(ctx, conn); err != nil {
		return err
	}
	if _, err := conn.Exec(ctx, hotSettings); err != nil {
		return fmt.Errorf("preparing a connection of the claim and finish path: %w", err)
	}
	return nil
}

// durableCommit turns synchronous commit on for the session when the server's default
// leaves it off, and leaves any stronger setting (remote_write, remote_apply, or on with
// synchronous standbys) as it is.
const durableCommit = `SELECT set_config('synchronous_commit', 'on', false) WHERE current_setting('synchronous_commit') = 'off'`

// durableCommits returns what each new connection runs so that every write agentserver
// acknowledges (a created run, a claim, a result) is in the write-ahead log before the
// answer leaves: with synchronous_commit off, a database crash loses the commits of the
// last moments (up to three times wal_writer_delay) that clients were already told about.
// A database URL (or PGOPTIONS) that sets synchronous_commit itself (…?synchronous_commit=off,
// options=-c synchronous_commit=off) is taken as the operator's choice and kept.
//
// It also costs less on a server with synchronous_commit off: each such commit wakes the
// WAL writer with a signal (PostgreSQL 15 asks it to write whenever its last flush lags
// behind a full page, which it does until wal_writer_flush_after), where a synchronous
// commit writes its own WAL. On the benchmark's PostgreSQL (fsync off) PostgreSQL's CPU
// per run fell 4–14 % against the load client's (docs/performance-history.md, twenty-fifth pass).
//
// A session setting, not a startup parameter, which PgBouncer refuses (hotSettings).
func durableCommits(cfg *pgx.ConnConfig) func(context.Context, *pgx.Conn) error {
	_, set := cfg.RuntimeParams["synchronous_commit"]
	if set || strings.Contains(cfg.RuntimeParams["options"], "synchronous_commit") {
		return func(context.Context, *pgx.Conn) error { return nil }
	}
	return func(ctx context.Context, conn *pgx.Conn) error {
		if _, err := conn.Exec(ctx, durableCommit); err != nil {
			return fmt.Errorf("turning synchronous commit on: %w", err)
		}
		return nil
	}
}

// Migrate applies every pending migration. Several processes may call it at once: a
// PostgreSQL advisory lock lets one apply while the others wait.
func Migrate(ctx context.Context, url string) error {
	db, err := sql.Open("pgx", url)
	if err != nil {
		return fmt.Errorf("opening database for migrations: %w", err)
	}
	defer db.Close()
	return migrateDB(ctx, db)
}

var _ = stdlib.GetDefaultDriver // registers the "pgx" database/sql driver

func migrateDB(ctx context.Context, db *sql.DB) error {
	sub, err := fs.Sub(migrations, "migrations")
	if err != nil {
		return err
	}
	locker, err := lock.NewPostgresSessionLocker(lock.WithLockTimeout(1, 300))
	if err != nil {
		return fmt.Errorf("creating migration lock: %w", err)
	}
	provider, err := goose.NewProvider(goose.DialectPostgres, db, sub, goose.WithSessionLocker(locker))
	if err != nil {
		return fmt.Errorf("loading migrations: %w", err)
	}
	if _, err := provider.Up(ctx); err != nil {
		return fmt.Errorf("applying migrations: %w", err)
	}
	return nil
}

// collect reads every row with scan (scanRun, scanAssistant, ...) and closes rows.
func collect[T any](rows pgx.Rows, scan func(pgx.Row) (T, error)) ([]T, error) {
	return pgx.CollectRows(rows, func(row pgx.CollectableRow) (T, error) { return scan(row) })
}

// retryDeadlock runs tx, a whole transaction, again when PostgreSQL rolled it back to
// break a deadlock (SQLSTATE 40P01), at most three times in all.
func (s *Store) retryDeadlock(tx func() error) error {
	for attempt := 1; ; attempt++ {
		err := tx()
		var pgErr *pgconn.PgError
		if err == nil || !errors.As(err, &pgErr) || pgErr.Code != "40P01" || attempt == 3 {
			return err
		}
		s.deadlocks.Add(1)
	}
}

// DeadlocksRetried is how many transactions of this Store PostgreSQL rolled back to break
// a deadlock and the Store then ran again. Each cost deadlock_timeout (1 s by default)
// of waiting first.
func (s *Store) DeadlocksRetried() int64 { return s.deadlocks.Load() }
