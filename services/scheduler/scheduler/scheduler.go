// Package scheduler is the scheduler service: it holds the sessions of worker-agents,
// tracks their inventory, claims queued runs for their free slots and pushes them as
// assignments, renews the leases of live workers, records what workers report (fenced by
// each claim's epoch) and recovers the runs of workers that vanished.
//
// It never assigns more runs to a worker than the worker has free slots of that type,
// and never lets a worker whose lease moved on write anything about a run.
package scheduler

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"math/rand/v2"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/google/uuid"
	"golang.org/x/sync/errgroup"
	"google.golang.org/grpc"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/keepalive"

	schedulerv1 "github.com/agentserver/agentserver/gen/agentserver/scheduler/v1"
	"github.com/agentserver/agentserver/pkg/admin"
	"github.com/agentserver/agentserver/pkg/grpcwin"
	"github.com/agentserver/agentserver/pkg/inproc"
	"github.com/agentserver/agentserver/pkg/rawio"
	"github.com/agentserver/agentserver/pkg/store"
)

// Config configures a scheduler.
type Config struct {
	// ID names this scheduler instance; generated when empty.
	ID string
	// GRPCAddr is where workers connect (host:port; port 0 picks a free port).
	GRPCAddr string
	// DatabaseURL is a direct (non-PgBouncer) URL used to LISTEN for queue wake-ups;
	// empty disables LISTEN and leaves polling.
	DatabaseURL string
	// LeaseTTL is how long a run's lease lasts without renewal.
	LeaseTTL time.Duration
	// HeartbeatInterval is how often workers heartbeat.
	HeartbeatInterval time.Duration
	// PollInterval bounds how long a queued run waits when a wake-up is missed.
	PollInterval time.Duration
	// ClaimCooldown is the least time between two claims that found runs: under load the
	// wake-ups that arrive meanwhile are served by one larger claim. While claims drain
	// the queue at over 1,000 runs a second it grows with that rate, up to 4 times this
	// (claimCooldown). An idle scheduler claims at once.
	ClaimCooldown time.Duration
	// RecoverInterval is how often expired leases and overdue runs are looked for.
	RecoverInterval time.Duration
	// RetryBaseDelay is the backoff before the 2nd attempt; it doubles per attempt.
	RetryBaseDelay time.Duration
	// RetryMaxDelay caps the backoff.
	RetryMaxDelay time.Duration
	// TimeoutGrace is how long past its timeout a run may stay RUNNING before the
	// scheduler ends it itself.
	TimeoutGrace time.Duration
	// ReconcileInterval is how often the running counts behind concurrency limits are
	// recounted from the runs (store.ReconcileLoad).
	ReconcileInterval time.Duration
	// AdminAddr serves /healthz, /readyz and /metrics; empty disables it.
	AdminAddr string
	// QueueVacuumRuns is the least number of runs this scheduler claims between two
	// vacuums of the queue tables (store.VacuumQueue); more when vacuums cost more
	// (vacuumInterval). 0 leaves them to autovacuum.
	QueueVacuumRuns int
	// EventHold is how long a session keeps a run's events back waiting for the run's
	// result, so that both are written by one statement; 0 writes them as they come.
	EventHold time.Duration
	// ResultLinger is how long a session under load waits for more results before it
	// writes a small batch of them (see nextBatch); 0 writes every batch at once.
	ResultLinger time.Duration
}

// maxResultLinger bounds Config.ResultLinger.
const maxResultLinger = 100 * time.Millisecond

// keepaliveTimeout is how long the gRPC server waits for a worker's answer to a keepalive
// ping, and the TCP_USER_TIMEOUT of the workers' connections.
const keepaliveTimeout = 10 * time.Second

// Defaults returns the default configuration.
func Defaults() Config {
	return Config{
		GRPCAddr:          ":9091",
		LeaseTTL:          15 * time.Second,
		HeartbeatInterval: 2 * time.Second,
		PollInterval:      time.Second,
		ClaimCooldown:     time.Millisecond,
		RecoverInterval:   time.Second,
		RetryBaseDelay:    time.Second,
		RetryMaxDelay:     5 * time.Minute,
		TimeoutGrace:      10 * time.Second,
		ReconcileInterval: 30 * time.Second,
		QueueVacuumRuns:   2000,
		EventHold:         20 * time.Millisecond,
		ResultLinger:      5 * time.Millisecond,
	}
}

// Validate reports the first setting a person must fix.
func (c *Config) Validate() error {
	switch {
	case c.LeaseTTL <= 0:
		return errors.New("lease TTL must be positive")
	case c.HeartbeatInterval <= 0 || c.HeartbeatInterval*2 > c.LeaseTTL:
		return fmt.Errorf("heartbeat interval (%s) must be positive and at most half the lease TTL (%s)", c.HeartbeatInterval, c.LeaseTTL)
	case c.PollInterval <= 0 || c.RecoverInterval <= 0 || c.ReconcileInterval <= 0:
		return errors.New("poll, recover and reconcile intervals must be positive")
	case c.ClaimCooldown < 0 || c.ClaimCooldown >= c.PollInterval:
		return fmt.Errorf("claim cooldown (%s) must be at least 0 and below the poll interval (%s)", c.ClaimCooldown, c.PollInterval)
	case c.RetryBaseDelay < 0 || c.RetryMaxDelay < c.RetryBaseDelay:
		return errors.New("retry delays must satisfy 0 <= base <= max")
	case c.EventHold < 0 || c.EventHold >= c.HeartbeatInterval:
		return fmt.Errorf("event hold (%s) must be at least 0 and below the heartbeat interval (%s)", c.EventHold, c.HeartbeatInterval)
	case c.ResultLinger < 0 || c.ResultLinger > maxResultLinger:
		return fmt.Errorf("result linger (%s) must be at least 0 and at most %s: it delays the completion of runs under load", c.ResultLinger, maxResultLinger)
	case c.QueueVacuumRuns < 0:
		return fmt.Errorf("queue vacuum runs (%d) must be at least 0 (0: leave the queue to autovacuum)", c.QueueVacuumRuns)
	}
	return nil
}

// Server is a scheduler instance.
type Server struct {
	schedulerv1.UnimplementedSchedulerServiceServer

	cfg   Config
	store *store.Store
	log   *slog.Logger

	mu       sync.Mutex
	sessions map[string]*session
	wake     chan struct{}
	// woken is what the wake-ups since the dispatcher last took it asked for.
	woken wakeSet
	// listenPause closes the LISTEN connection while the dispatcher claims back to back
	// (dispatchLoop); nil without LISTEN.
	listenPause *store.Pause

	lis net.Listener
	// inproc serves SchedulerService to workers in this process (InProcess).
	inproc *inproc.Channel
	// stopping is set when Run begins to shut down: Connect refuses new sessions (the
	// gRPC server's GracefulStop does that for the network, not for inproc).
	stopping atomic.Bool
	grpc     *grpc.Server
	health   *health.Server
	admin    *admin.Server
}

// New creates a scheduler and binds its gRPC listener.
func New(cfg Config, st *store.Store, log *slog.Logger) (*Server, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("scheduler configuration: %w", err)
	}
	if cfg.ID == "" {
		cfg.ID = "scheduler-" + uuid.NewString()[:8]
	}
	lis, err := net.Listen("tcp", cfg.GRPCAddr)
	if err != nil {
		return nil, fmt.Errorf("listening on %s for workers (is another scheduler running? set SCHEDULER_GRPC_ADDR): %w", cfg.GRPCAddr, err)
	}
	s := &Server{
		cfg:      cfg,
		store:    st,
		log:      log.With("scheduler", cfg.ID),
		sessions: make(map[string]*session),
		wake:     make(chan struct{}, 1),
		// Raw reads and writes (package rawio); the user timeout is the keepalive's below.
		lis:    rawio.Listener(lis, keepaliveTimeout),
		health: health.NewServer(),
	}
	if cfg.DatabaseURL != "" {
		s.listenPause = store.NewPause()
	}
	s.grpc = grpc.NewServer(append(grpcwin.ServerOptions(),
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: 5 * time.Second, PermitWithoutStream: true}),
		grpc.KeepaliveParams(keepalive.ServerParameters{Time: 30 * time.Second, Timeout: keepaliveTimeout}),
	)...)
	schedulerv1.RegisterSchedulerServiceServer(s.grpc, s)
	healthpb.RegisterHealthServer(s.grpc, s.health)
	// Messages are handed over, not deep-copied: the scheduler and the worker-agent build a
	// fresh message for every send and only read what they receive (a worker resends its
	// unacknowledged results as they are, still read-only), which is what Share requires.
	s.inproc = &inproc.Channel{Share: true}
	schedulerv1.RegisterSchedulerServiceServer(s.inproc, s)
	if cfg.AdminAddr != "" {
		s.admin, err = admin.Listen(cfg.AdminAddr, func(ctx context.Context) error { return st.Pool().Ping(ctx) }, s.log,
			clusterCollector{stats: st.ClusterStats, timeout: 5 * time.Second})
		if err != nil {
			lis.Close()
			return nil, err
		}
	}
	return s, nil
}

// Addr is the address workers connect to.
func (s *Server) Addr() net.Addr { return s.lis.Addr() }

// AdminAddr is the address of /healthz, /readyz and /metrics; nil when Config.AdminAddr
// is empty.
func (s *Server) AdminAddr() net.Addr {
	if s.admin == nil {
		return nil
	}
	return s.admin.Addr()
}

// InProcess is a connection to this scheduler for workers in the same process (the
// all-in-one server): calls are Go function calls handing the messages over, with no
// encoding, HTTP/2 framing or socket in between. Streams over it behave as over the
// network: a session ends when either side's context ends or the handler returns.
func (s *Server) InProcess() grpc.ClientConnInterface { return s.inproc }

// ID is this instance's id.
func (s *Server) ID() string { return s.cfg.ID }

// Run serves workers and runs the background loops until ctx ends.
func (s *Server) Run(ctx context.Context) error {
	g, ctx := errgroup.WithContext(ctx)
	g.Go(func() error {
		if err := s.grpc.Serve(s.lis); err != nil && !errors.Is(err, grpc.ErrServerStopped) {
			return fmt.Errorf("serving workers: %w", err)
		}
		return nil
	})
	g.Go(func() error {
		<-ctx.Done()
		s.health.Shutdown()
		s.stopping.Store(true)
		// Workers reconnect to another scheduler and keep their runs; their leases
		// outlive this process by LeaseTTL.
		s.mu.Lock()
		for _, sess := range s.sessions {
			sess.close()
		}
		s.mu.Unlock()
		stopped := make(chan struct{})
		go func() { s.grpc.GracefulStop(); close(stopped) }()
		select {
		case <-stopped:
		case <-time.After(5 * time.Second):
			s.grpc.Stop()
		}
		return nil
	})
	if s.admin != nil {
		g.Go(func() error { return s.admin.Run(ctx) })
	}
	g.Go(func() error { s.dispatchLoop(ctx); return nil })
	g.Go(func() error { s.leaseLoop(ctx); return nil })
	g.Go(func() error { s.recoverLoop(ctx); return nil })
	if s.cfg.DatabaseURL != "" {
		g.Go(func() error {
			store.Listen(ctx, s.cfg.DatabaseURL, []string{store.QueueChannel, store.CancelChannel}, s.log,
				func(channel, payload string) {
					if channel == store.CancelChannel {
						s.sendCancels(ctx)
						return
					}
					// The payload is the slot type of the runs made runnable ('' for any).
					s.kickSlotType(payload)
				}, s.listenPause)
			return nil
		})
	}
	s.log.Info("scheduler serving workers", "addr", s.lis.Addr().String())
	return g.Wait()
}

// kick wakes the dispatcher to claim for every slot type.
func (s *Server) kick() { s.kickSlotType("") }

// kickSlotType wakes the dispatcher to claim for the free slots of slotType ("" for every
// slot type): a queue notification names the slot type of the runs it announces, and
// runs of one type cannot fill slots of another.
func (s *Server) kickSlotType(slotType string) {
	s.woken.add(slotType)
	select {
	case s.wake <- struct{}{}:
	default:
	}
}

// wakeSet gathers what the wake-ups between two dispatches asked for.
type wakeSet struct {
	mu    sync.Mutex
	all   bool
	types map[string]bool
}

func (w *wakeSet) add(slotType string) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if slotType == "" {
		w.all = true
		return
	}
	if w.types == nil {
		w.types = make(map[string]bool)
	}
	w.types[slotType] = true
}

// take empties the set and returns the slot types it held, nil for every slot type.
func (w *wakeSet) take() map[string]bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	types, all := w.types, w.all
	w.types, w.all = nil, false
	if all {
		return nil
	}
	if types == nil {
		return map[string]bool{} // a wake-up whose set an earlier take emptied: none
	}
	return types
}

func (s *Server) snapshot() []*session {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]*session, 0, len(s.sessions))
	for _, sess := range s.sessions {
		out = append(out, sess)
	}
	return out
}

// cancelPollInterval is how often the dispatcher looks for cancel requests while its
// LISTEN connection is closed (dispatchLoop).
const cancelPollInterval = 50 * time.Millisecond

// dispatchLoop claims runs for free slots whenever woken, and at least every PollInterval;
// after a claim that found runs it rests first (claimCooldown).
//
// While claims drain the queue faster than cooldownRate runs a second, it claims again
// after each rest without waiting for a wake-up, and closes its LISTEN connection
// meanwhile (store.Pause): PostgreSQL signals every listening backend at every commit
// that notifies — every create statement — a signal, and a wake-up of the listening
// backend and of this server, that nobody needs while claims come back to back. Cancel
// requests are then looked for every cancelPollInterval. When a claim finds the queue
// quiet again it listens again and claims once more before it waits: a run created
// before the LISTEN took effect is found by that claim, one created after it notifies.
// Other schedulers listen on their own.
func (s *Server) dispatchLoop(ctx context.Context) {
	t := time.NewTicker(s.cfg.PollInterval)
	defer t.Stop()
	vacuum := newQueueVacuum(s.cfg.QueueVacuumRuns, s.store, s.log)
	defer vacuum.wait()
	pacer := claimPacer{base: s.cfg.ClaimCooldown}
	paused := false
	var cancelsPolled time.Time
	var only map[string]bool // the slot types to claim for; nil: every one
	for {
		n, drained := s.dispatch(ctx, only)
		only = nil
		vacuum.claimed(ctx, n)
		rest, backToBack := pacer.rest(time.Now(), n, drained)
		if rest > 0 {
			select {
			case <-ctx.Done():
				return
			case <-time.After(rest):
			}
		}
		if s.listenPause != nil {
			if backToBack {
				if !paused {
					_ = s.listenPause.SetPaused(ctx, true)
					paused = true
				}
				// No cancel notifications meanwhile: look for cancel requests instead.
				if time.Since(cancelsPolled) >= cancelPollInterval {
					s.sendCancels(ctx)
					cancelsPolled = time.Now()
				}
				continue
			}
			if paused {
				lctx, cancel := context.WithTimeout(ctx, time.Second)
				err := s.listenPause.SetPaused(lctx, false)
				cancel()
				if ctx.Err() != nil {
					return
				}
				paused = false
				if err == nil {
					continue // the claim after the LISTEN
				}
				// Not listening yet: the poll below finds the runs meanwhile.
				s.log.Warn("listening on the queue again; polling meanwhile", "err", err)
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-s.wake:
			only = s.woken.take()
		case <-t.C:
		}
	}
}

// queueVacuum vacuums the queue tables in the background after every interval claimed
// runs, one vacuum at a time (see store.VacuumQueue). The interval starts at `every` and
// is set again after each vacuum by vacuumInterval, from what that vacuum took and the
// claims' size since the one before.
type queueVacuum struct {
	every    int
	st       *store.Store
	log      *slog.Logger
	pending  int // runs claimed since the last vacuum began
	claims   int // claims that found runs since then
	interval atomic.Int64
	running  atomic.Bool
	wg       sync.WaitGroup
}

func newQueueVacuum(every int, st *store.Store, log *slog.Logger) *queueVacuum {
	v := &queueVacuum{every: every, st: st, log: log}
	v.interval.Store(int64(every))
	return v
}

// claimed counts n claimed runs and starts a vacuum when enough were claimed since the
// last one began; runs claimed while one is running count towards the next.
func (v *queueVacuum) claimed(ctx context.Context, n int) {
	if v.every <= 0 {
		return
	}
	v.pending += n
	if n > 0 {
		v.claims++
	}
	if int64(v.pending) < v.interval.Load() || !v.running.CompareAndSwap(false, true) {
		return
	}
	perClaim := float64(v.pending) / float64(max(v.claims, 1))
	v.pending, v.claims = 0, 0
	v.wg.Add(1)
	go func() {
		defer v.wg.Done()
		defer v.running.Store(false)
		start := time.Now()
		if err := v.st.VacuumQueue(ctx); err != nil {
			if ctx.Err() == nil {
				v.log.Warn("vacuuming the queue; autovacuum will have to keep up alone", "err", err)
			}
			return
		}
		v.interval.Store(int64(vacuumInterval(v.every, time.Since(start), perClaim)))
	}()
}

// deadEntryCost is what a claim pays for each dead entry of run_queue_claim it reads past
// at the head of the queue: 7.6 ms for 300,000 (store.VacuumQueue).
const deadEntryCost = 25 * time.Nanosecond

// vacuumInterval is how many runs to claim before the next vacuum, given that the last
// one took took and claims took perClaim runs each: the interval at which the vacuum's
// cost per run (took ÷ interval) equals what the claims pay per run for the dead entries
// it clears (half the interval on average, deadEntryCost each, shared by perClaim runs),
// sqrt(2 × took × perClaim ÷ deadEntryCost); at least base, at most 50 × base. A vacuum
// reads all of the queue's indexes, so it costs more the deeper the queue (2,000 claims
// apart: 3.5 ms at 10,000 queued, 7.5 ms at 100,000, 67 ms at 1,000,000 — as much as the
// claims themselves), while a shallow queue or small claims keep base.
func vacuumInterval(base int, took time.Duration, perClaim float64) int {
	n := int(math.Sqrt(2 * float64(took) * perClaim / float64(deadEntryCost)))
	return min(max(n, base), 50*base)
}

func (v *queueVacuum) wait() { v.wg.Wait() }

// dispatch fills the free slots of every live session it can, of the slot types in only
// (nil: of every type), and returns the number of runs claimed. Sessions are visited in
// random order so no worker is always served first.
//
// A claim that finds fewer runs than it asked for has taken all the queue had for its
// slot type: the other sessions' slots of that type are not claimed for again in this
// dispatch (with many workers, a run announced would otherwise cost one claim per worker
// with free slots, all but one of them empty). Runs queued meanwhile notify, and the next
// dispatch claims them.
//
// drained says that the runs claimed were all the queue had for the slots asked: every
// claim that found runs found fewer than it asked for.
func (s *Server) dispatch(ctx context.Context, only map[string]bool) (claimed int, drained bool) {
	drained = true
	sessions := s.snapshot()
	rand.Shuffle(len(sessions), func(i, j int) { sessions[i], sessions[j] = sessions[j], sessions[i] })
	exhausted := make(map[string]bool) // slot types whose queue a claim emptied
	gpusEmpty := int64(-1)             // the most free GPU memory a claim found no run for
	for _, sess := range sessions {
		if !sess.live() {
			// Its claims could not be renewed: they would only expire and be requeued.
			continue
		}
		for slotType, free := range sess.freeSlots(only) {
			if ctx.Err() != nil {
				return
			}
			if exhausted[slotType] {
				// This session's free slots of that type have nothing to take either.
				sess.claimed(slotType, free, 0)
				continue
			}
			if slotType == gpuSlotType && sess.hasGPUs() {
				// One run per GPU, each its own claim: never counted as drained.
				if n := s.dispatchGPUs(ctx, sess, free, &gpusEmpty); n > 0 {
					claimed, drained = claimed+n, false
				}
				continue
			}
			claims, err := s.store.ClaimRuns(ctx, store.ClaimParams{
				WorkerID: sess.workerID, SlotType: slotType, Limit: free, LeaseTTL: s.cfg.LeaseTTL,
			})
			if err != nil {
				if ctx.Err() == nil {
					s.log.Error("claiming runs", "worker", sess.workerID, "err", err)
				}
				continue
			}
			countClaim(slotType, len(claims))
			for _, c := range claims {
				sess.assign(c, "")
			}
			sess.claimed(slotType, free, len(claims))
			claimed += len(claims)
			if len(claims) == free {
				drained = false
			} else {
				exhausted[slotType] = true
			}
		}
	}
	return claimed, drained
}

// The claim cooldown under load. When claims drain the queue, each is as large as the
// runs that arrived since the one before, and at a high arrival rate a fixed cooldown
// makes many small claims — statements whose fixed cost is most of a small claim's. So
// while the runs claimed in the last rateWindow come faster than cooldownRate a second,
// and the last claim drained the queue, the rest grows in proportion to that rate, up to
// cooldownMax times the configured one. Below cooldownRate (500 runs/s offered, the
// latency benchmark) the cooldown and the latency stay as configured; a claim limited by
// the free slots (a backlog) keeps it too, since resting then only idles the claim stage.
// A rate over a window, not the last claim's size: a claim of a few runs after a stall
// must not lengthen the next rest (that fed on itself at 500 runs/s: p99 3.3 → 4.4–14 ms).
// Sustained load, 8 creators (docs/performance-history.md, fifteenth pass): a 4 ms cooldown
// instead of 1 ms cost PostgreSQL 18 % less per run.
const (
	rateWindow   = 100 * time.Millisecond
	cooldownRate = 1000 // runs a second
	cooldownMax  = 4
)

// claimCooldown is the rest after a claim (drained: it took all the queue had) while
// perSecond runs a second are being claimed, for a configured cooldown of base.
func claimCooldown(base time.Duration, perSecond float64, drained bool) time.Duration {
	if !fastDrain(perSecond, drained) {
		return base
	}
	return min(time.Duration(float64(base)*perSecond/cooldownRate), cooldownMax*base)
}

// fastDrain reports the regime in which the claims take all the queue has (drained) while
// runs are claimed at perSecond, over cooldownRate a second: the rest grows
// (claimCooldown), and the dispatcher claims back to back (dispatchLoop).
func fastDrain(perSecond float64, drained bool) bool {
	return drained && perSecond > cooldownRate
}

// claimPacer decides the dispatcher's rest after each claim.
type claimPacer struct {
	base time.Duration // Config.ClaimCooldown
	rate claimRate
}

// rest is the rest after a claim at now that found n runs (drained: all the queue had):
// none after a claim that found nothing or without a cooldown, else claimCooldown.
// backToBack reports a claim that found runs in the fastDrain regime: the dispatcher
// then claims again after the rest without waiting for a wake-up.
func (p *claimPacer) rest(now time.Time, n int, drained bool) (rest time.Duration, backToBack bool) {
	perSecond := p.rate.add(now, n)
	backToBack = n > 0 && fastDrain(perSecond, drained)
	if n == 0 || p.base <= 0 {
		return 0, backToBack
	}
	return claimCooldown(p.base, perSecond, drained), backToBack
}

// claimRate counts the runs claimed per rateWindow.
type claimRate struct {
	start      time.Time
	runs, last int
}

// add counts n runs claimed at now and returns the rate of the last whole window, in
// runs a second (0 when the window before the current one claimed nothing).
func (r *claimRate) add(now time.Time, n int) float64 {
	if elapsed := now.Sub(r.start); elapsed >= rateWindow {
		r.last = r.runs
		if elapsed >= 2*rateWindow {
			r.last = 0 // an idle window between
		}
		r.start, r.runs = now, 0
	}
	r.runs += n
	return float64(r.last) / rateWindow.Seconds()
}

// gpuSlotType is the slot type whose slots are GPUs, placed one run per GPU.
const gpuSlotType = "gpu"

// dispatchGPUs fills free GPUs one run each, choosing for every GPU a run that needs no
// more GPU memory than the GPU has free (largest free memory first). A claim that finds
// no run for a GPU with m bytes free finds none for a GPU with m or less either: it stops
// there, and records m in *empty so that the dispatch's other sessions skip such GPUs
// too (without it, every wake-up cost one empty claim per free GPU of the fleet).
func (s *Server) dispatchGPUs(ctx context.Context, sess *session, free int, empty *int64) (claimed int) {
	gpus := sess.freeGPUs()
	for _, g := range gpus[:min(free, len(gpus))] {
		mem := max(g.MemoryTotalBytes-g.MemoryUsedBytes, 0)
		if mem <= *empty {
			return claimed
		}
		claims, err := s.store.ClaimRuns(ctx, store.ClaimParams{
			WorkerID: sess.workerID, SlotType: gpuSlotType, Limit: 1, LeaseTTL: s.cfg.LeaseTTL, MaxGPUMemory: &mem,
		})
		if err != nil {
			if ctx.Err() == nil {
				s.log.Error("claiming gpu runs", "worker", sess.workerID, "gpu", g.UUID, "err", err)
			}
			return
		}
		countClaim(gpuSlotType, len(claims))
		if len(claims) == 0 {
			*empty = mem
			return claimed
		}
		for _, c := range claims {
			sess.assign(c, g.UUID)
		}
		claimed += len(claims)
	}
	return claimed
}

// leaseLoop renews the leases of workers that heartbeat.
func (s *Server) leaseLoop(ctx context.Context) {
	t := time.NewTicker(s.cfg.LeaseTTL / 3)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		// Only the claims each live session holds are renewed (see store.RenewLeases): a
		// worker whose stream looks open but that stopped heartbeating (paused, wedged)
		// loses its leases like one that disconnected, and a claim no session holds expires.
		start := time.Now()
		held := make(map[string][]store.Lease)
		byID := make(map[string]*session)
		for _, sess := range s.snapshot() {
			if sess.live() {
				byID[sess.workerID] = sess
				held[sess.workerID] = sess.leasesSince(start)
			}
		}
		renewed, err := s.store.RenewLeases(ctx, held, s.cfg.LeaseTTL)
		if err != nil {
			if ctx.Err() == nil {
				s.log.Error("renewing leases", "err", err)
			}
			continue
		}
		// Runs a live worker holds that were not renewed moved on (their lease expired
		// while the worker was paused, or another claim took them): stop them there.
		ok := make(map[store.Lease]bool, len(renewed))
		for _, l := range renewed {
			ok[l] = true
		}
		for w, leases := range held {
			for _, l := range leases {
				if !ok[l] {
					byID[w].cancel(l, "lease_lost")
				}
			}
		}
	}
}

// recoverLoop requeues runs of vanished workers, ends overdue runs and forwards cancels.
func (s *Server) recoverLoop(ctx context.Context) {
	t := time.NewTicker(s.cfg.RecoverInterval)
	defer t.Stop()
	reconcile := time.NewTicker(s.cfg.ReconcileInterval)
	defer reconcile.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-reconcile.C:
			if err := s.store.ReconcileLoad(ctx); err != nil && ctx.Err() == nil {
				s.log.Error("reconciling assistant load", "err", err)
			}
			continue
		case <-t.C:
		}
		res, err := s.store.RecoverRuns(ctx, store.RecoverParams{Batch: 1000, TimeoutGrace: s.cfg.TimeoutGrace})
		if err != nil {
			if ctx.Err() == nil {
				s.log.Error("recovering runs", "err", err)
			}
			continue
		}
		if res.Requeued+res.TimedOut+res.Cancelled > 0 {
			s.log.Info("recovered runs", "requeued", res.Requeued, "timed_out", res.TimedOut, "cancelled", res.Cancelled)
		}
		for _, l := range res.Stopped {
			s.stopEverywhere(l, "lease_lost")
		}
		if res.Requeued > 0 {
			s.kick()
		}
		s.sendCancels(ctx)
		if err := s.store.MarkStaleWorkersLost(ctx, 3*s.cfg.LeaseTTL, 24*time.Hour); err != nil && ctx.Err() == nil {
			s.log.Error("marking stale workers", "err", err)
		}
	}
}

// sendCancels forwards client cancel requests to the workers running those runs here.
func (s *Server) sendCancels(ctx context.Context) {
	sessions := s.snapshot()
	if len(sessions) == 0 {
		return
	}
	ids := make([]string, len(sessions))
	byID := make(map[string]*session, len(sessions))
	for i, sess := range sessions {
		ids[i] = sess.workerID
		byID[sess.workerID] = sess
	}
	reqs, err := s.store.CancelRequests(ctx, ids)
	if err != nil {
		if ctx.Err() == nil {
			s.log.Error("reading cancel requests", "err", err)
		}
		return
	}
	for w, leases := range reqs {
		for _, l := range leases {
			byID[w].cancel(l, "cancelled")
		}
	}
}

// stopEverywhere tells whichever session here holds the run to stop it.
func (s *Server) stopEverywhere(l store.Lease, reason string) {
	for _, sess := range s.snapshot() {
		if sess.holds(l.RunID) {
			sess.cancel(l, reason)
		}
	}
}

// retryDelay is the backoff before attempt+1: base * 2^(attempt-1), capped, with up to
// 20 % jitter so retries of a burst do not return together.
func (s *Server) retryDelay(attempt int32) time.Duration {
	d := s.cfg.RetryBaseDelay
	for i := int32(1); i < attempt && d < s.cfg.RetryMaxDelay; i++ {
		d *= 2
	}
	d = min(d, s.cfg.RetryMaxDelay)
	if d > 0 {
		d += time.Duration(rand.Int64N(int64(d)/5 + 1))
	}
	return d
}
