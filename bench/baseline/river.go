// Package baseline runs agentserver's three benchmark workloads on River
// (github.com/riverqueue/river), the peer we measure ourselves against, configured as River's
// own benchmark (river bench) configures it: fetch cooldown 2 ms, fetch poll interval 20 ms,
// one queue, a no-op worker. It lives in the bench module so that River never enters the
// services' dependency graph.
//
// Figures come from River's own job rows (created_at, attempted_at, finalized_at: the
// database's clock), as agentserver's come from its runs' create_time, start_time and
// end_time. Completion is followed through River's in-process event subscription, which
// costs the database nothing.
package baseline

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/riverqueue/river"
	"github.com/riverqueue/river/riverdriver/riverpgxv5"
	"github.com/riverqueue/river/rivermigrate"

	"github.com/agentserver/agentserver/bench/measure"
)

// Config says how to run River.
type Config struct {
	// Pool connects to River's own database.
	Pool *pgxpool.Pool
	// MaxWorkers of the single queue (500 as the reference measurement).
	MaxWorkers int
	// FetchCooldown and FetchPollInterval as River's benchmark sets them (2 ms, 20 ms).
	FetchCooldown, FetchPollInterval time.Duration
	// DrainTimeout bounds the wait for the last jobs to complete.
	DrainTimeout time.Duration
	// CPURoots names the processes whose CPU time is reported (this process, PostgreSQL).
	CPURoots map[string]int
	// Logger receives River's own log lines; nil discards them.
	Logger *slog.Logger
}

// Defaults returns River's benchmark configuration with 500 workers.
func Defaults(pool *pgxpool.Pool) Config {
	return Config{
		Pool: pool, MaxWorkers: 500, FetchCooldown: 2 * time.Millisecond, FetchPollInterval: 20 * time.Millisecond,
		DrainTimeout: 5 * time.Minute, CPURoots: map[string]int{"benchall (river)": os.Getpid()},
	}
}

// Migrate applies River's migrations to its database.
func Migrate(ctx context.Context, pool *pgxpool.Pool) error {
	m, err := rivermigrate.New(riverpgxv5.New(pool), nil)
	if err != nil {
		return fmt.Errorf("creating river migrator: %w", err)
	}
	if _, err := m.Migrate(ctx, rivermigrate.DirectionUp, nil); err != nil {
		return fmt.Errorf("migrating river: %w", err)
	}
	return nil
}

// noopArgs are the arguments of the no-op job.
type noopArgs struct{}

// Kind names the no-op job kind.
func (noopArgs) Kind() string { return "noop" }

type noopWorker struct {
	river.WorkerDefaults[noopArgs]
}

func (noopWorker) Work(context.Context, *river.Job[noopArgs]) error { return nil }

// run is one workload on a fresh client: it counts completions through a subscription.
type run struct {
	cfg       Config
	client    *river.Client[pgx.Tx]
	completed atomic.Int64
	stopSub   func()
	subDone   chan struct{}

	mu         sync.Mutex
	errKinds   map[string]int
	errors     int
	firstCall  time.Time
	lastAnswer time.Time
	inserted   atomic.Int64
}

func (c Config) newRun(ctx context.Context) (*run, error) {
	// Start from an empty, compact table as river bench does.
	for _, q := range []string{"TRUNCATE river_job", "VACUUM FULL river_job"} {
		if _, err := c.Pool.Exec(ctx, q); err != nil {
			return nil, fmt.Errorf("resetting river_job (%s): %w", q, err)
		}
	}
	workers := river.NewWorkers()
	river.AddWorker(workers, &noopWorker{})
	logger := c.Logger
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	client, err := river.NewClient(riverpgxv5.New(c.Pool), &river.Config{
		FetchCooldown:     c.FetchCooldown,
		FetchPollInterval: c.FetchPollInterval,
		Logger:            logger,
		Queues:            map[string]river.QueueConfig{river.QueueDefault: {MaxWorkers: c.MaxWorkers}},
		Workers:           workers,
	})
	if err != nil {
		return nil, fmt.Errorf("creating river client: %w", err)
	}
	r := &run{cfg: c, client: client, errKinds: map[string]int{}, subDone: make(chan struct{})}
	events, stop := client.SubscribeConfig(&river.SubscribeConfig{
		ChanSize: 200_000,
		Kinds:    []river.EventKind{river.EventKindJobCompleted, river.EventKindJobFailed, river.EventKindJobCancelled},
	})
	r.stopSub = stop
	go func() {
		defer close(r.subDone)
		for e := range events {
			if e.Kind == river.EventKindJobCompleted {
				r.completed.Add(1)
			} else {
				r.addError("job "+string(e.Kind), 1)
			}
		}
	}()
	return r, nil
}

func (r *run) addError(kind string, n int) {
	r.mu.Lock()
	r.errKinds[kind] += n
	r.errors += n
	r.mu.Unlock()
}

func (r *run) call(began time.Time, err error, n int) {
	answered := time.Now()
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.firstCall.IsZero() || began.Before(r.firstCall) {
		r.firstCall = began
	}
	if answered.After(r.lastAnswer) {
		r.lastAnswer = answered
	}
	if err != nil {
		r.errKinds["insert: "+err.Error()] += n
		r.errors += n
		return
	}
	r.inserted.Add(int64(n))
}

func (r *run) insertOne(ctx context.Context) {
	began := time.Now()
	_, err := r.client.Insert(ctx, noopArgs{}, nil)
	if ctx.Err() != nil {
		return
	}
	r.call(began, err, 1)
}

// waitCompleted waits until every inserted job has completed, or DrainTimeout.
func (r *run) waitCompleted(ctx context.Context) {
	deadline := time.Now().Add(r.cfg.DrainTimeout)
	for ctx.Err() == nil && time.Now().Before(deadline) {
		r.mu.Lock()
		failed := r.errors
		r.mu.Unlock()
		if r.completed.Load()+int64(failed) >= r.inserted.Load() {
			return
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// finish stops the client and reads the jobs back into a result.
func (r *run) finish(ctx context.Context, from time.Time, cpuBefore measure.CPUSample, wallStart time.Time) (measure.Result, error) {
	wall := time.Since(wallStart)
	cpuAfter := measure.SampleCPU(r.cfg.CPURoots)
	stopCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
	defer cancel()
	stopErr := r.client.Stop(stopCtx)
	r.stopSub()
	<-r.subDone

	rows, err := r.cfg.Pool.Query(ctx, `SELECT created_at, attempted_at, finalized_at, state::text FROM river_job`)
	if err != nil {
		return measure.Result{}, fmt.Errorf("reading river jobs: %w", err)
	}
	var jobs []measure.Times
	notDone := 0
	for rows.Next() {
		var created time.Time
		var attempted, finalized *time.Time
		var state string
		if err := rows.Scan(&created, &attempted, &finalized, &state); err != nil {
			rows.Close()
			return measure.Result{}, err
		}
		t := measure.Times{Create: created}
		if attempted != nil {
			t.Start = *attempted
		}
		if finalized != nil && state == "completed" {
			t.End = *finalized
		} else {
			notDone++
		}
		jobs = append(jobs, t)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return measure.Result{}, err
	}
	var res measure.Result
	res.Compute(jobs, from)
	r.mu.Lock()
	res.Errors = r.errors + notDone
	res.ErrorKinds = r.errKinds
	if notDone > 0 {
		res.ErrorKinds["job not completed in time"] += notDone
	}
	if d := r.lastAnswer.Sub(r.firstCall); d > 0 {
		res.CreateRatePerS = float64(r.inserted.Load()) / d.Seconds()
	}
	r.mu.Unlock()
	res.CPU = measure.CPUSince(cpuBefore, cpuAfter, wall, res.Completed)
	res.Machine = measure.MachineSince(cpuBefore, cpuAfter, wall, res.Completed)
	return res, errors.Join(stopErr)
}

// Sustained inserts one job per Insert call from inserters goroutines for d (at most
// maxJobs jobs) while the client works them, and measures until all have completed.
func (c Config) Sustained(ctx context.Context, inserters int, d time.Duration, maxJobs int) (measure.Result, error) {
	r, err := c.newRun(ctx)
	if err != nil {
		return measure.Result{}, err
	}
	if err := r.client.Start(ctx); err != nil {
		return measure.Result{}, fmt.Errorf("starting river client: %w", err)
	}
	before, start := measure.SampleCPU(c.CPURoots), time.Now()
	var issued atomic.Int64
	var wg sync.WaitGroup
	for range inserters {
		wg.Go(func() {
			for ctx.Err() == nil && time.Since(start) < d && issued.Add(1) <= int64(maxJobs) {
				r.insertOne(ctx)
			}
		})
	}
	wg.Wait()
	r.waitCompleted(ctx)
	return r.finish(ctx, time.Time{}, before, start)
}

// Burndown inserts n jobs with InsertMany (batches of 5,000, as river bench does) before
// the client starts, then measures from the start until all have completed.
func (c Config) Burndown(ctx context.Context, n int) (measure.Result, error) {
	r, err := c.newRun(ctx)
	if err != nil {
		return measure.Result{}, err
	}
	const batch = 5_000
	params := make([]river.InsertManyParams, batch)
	for i := range params {
		params[i].Args = noopArgs{}
	}
	for left := n; left > 0; left -= batch {
		began := time.Now()
		_, err := r.client.InsertMany(ctx, params[:min(left, batch)])
		r.call(began, err, min(left, batch))
	}
	var from time.Time
	if err := c.Pool.QueryRow(ctx, `SELECT now()`).Scan(&from); err != nil {
		return measure.Result{}, err
	}
	before, start := measure.SampleCPU(c.CPURoots), time.Now()
	if err := r.client.Start(ctx); err != nil {
		return measure.Result{}, fmt.Errorf("starting river client: %w", err)
	}
	r.waitCompleted(ctx)
	return r.finish(ctx, from, before, start)
}

// Rate offers rate jobs per second for d, one Insert per job on schedule whether or not
// earlier inserts have returned (open loop), while the client works them.
func (c Config) Rate(ctx context.Context, rate float64, d time.Duration) (measure.Result, error) {
	r, err := c.newRun(ctx)
	if err != nil {
		return measure.Result{}, err
	}
	if err := r.client.Start(ctx); err != nil {
		return measure.Result{}, fmt.Errorf("starting river client: %w", err)
	}
	before, start := measure.SampleCPU(c.CPURoots), time.Now()
	inflight := make(chan struct{}, 10_000)
	var wg sync.WaitGroup
	for i := 0; ; i++ {
		offset := time.Duration(float64(i) / rate * float64(time.Second))
		if offset >= d || ctx.Err() != nil {
			break
		}
		time.Sleep(time.Until(start.Add(offset)))
		select {
		case inflight <- struct{}{}:
		default:
			r.addError("client: 10,000 inserts outstanding, send skipped", 1)
			continue
		}
		wg.Go(func() {
			defer func() { <-inflight }()
			r.insertOne(ctx)
		})
	}
	wg.Wait()
	r.waitCompleted(ctx)
	return r.finish(ctx, time.Time{}, before, start)
}
