// Package worker is the worker-agent: it opens a session to a scheduler, reports its
// slots, executes the runs it is assigned through executor processes, streams their
// events, checkpoints and results back, and drains on shutdown.
//
// A worker holds no database credentials: user code runs here. It never runs more runs of
// a slot type than it has slots of that type, and it stops any run whose lease the
// scheduler says is gone. Each gpu slot is one GPU of the machine (gpu.go): a run never
// sees a GPU other than the one its slot holds.
package worker

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"os"
	"runtime"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/google/uuid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/protobuf/types/known/structpb"

	schedulerv1 "github.com/agentserver/agentserver/gen/agentserver/scheduler/v1"
	agentserverv1 "github.com/agentserver/agentserver/gen/agentserver/v1"
	"github.com/agentserver/agentserver/pkg/admin"
	"github.com/agentserver/agentserver/pkg/config"
	"github.com/agentserver/agentserver/pkg/grpcwin"
	"github.com/agentserver/agentserver/pkg/intern"
	"github.com/agentserver/agentserver/services/worker-agent/internal/executor"
	"github.com/agentserver/agentserver/services/worker-agent/internal/gpu"
)

// Config configures a worker.
type Config struct {
	// ID is this worker process's id; generated when empty (a restart is a new worker).
	ID string
	// Pool names the pool the worker belongs to (e.g. "cpu", "gpu").
	Pool string
	// Slots is WORKER_SLOTS: "cpu=4,gpu=1", or a bare count of CPU slots.
	Slots string
	// SchedulerAddrs lists scheduler addresses (comma separated); the worker tries them in
	// turn and moves to the next when a session breaks.
	SchedulerAddrs string
	// WorkDir is where executor processes start; relative commands resolve there.
	WorkDir string
	// DrainGrace is how long a draining worker lets running runs finish before it hands
	// them back to the queue.
	DrainGrace time.Duration
	// Labels are free-form key=value pairs, comma separated.
	Labels string
	// AdminAddr serves /healthz, /readyz and /metrics; empty disables it.
	AdminAddr string
	// CgroupDir is a delegated cgroup v2 directory for per-replica memory limits; empty
	// enforces resources.memory with address-space rlimits.
	CgroupDir string
	// GPU configures GPU discovery for gpu slots (gpu.go).
	GPU GPUConfig
	// EventHold is how long a run's events wait to go out with its result (events.go);
	// 0 sends each event at once.
	EventHold time.Duration
}

// Defaults returns the default configuration.
func Defaults() Config {
	return Config{Pool: "default", Slots: DefaultSlots, SchedulerAddrs: "localhost:9091", DrainGrace: 30 * time.Second, GPU: DefaultGPUConfig(), EventHold: DefaultEventHold}
}

// Bind registers the worker's settings on set, with cfg's values as defaults.
func Bind(set *config.Set, cfg *Config) {
	set.String(&cfg.ID, "id", "WORKER_ID", cfg.ID, "worker id (generated when empty)")
	set.String(&cfg.Pool, "pool", "WORKER_POOL", cfg.Pool, "worker pool name")
	set.String(&cfg.Slots, "slots", "WORKER_SLOTS", cfg.Slots, "slots by type, e.g. cpu=4,gpu=1")
	set.String(&cfg.SchedulerAddrs, "scheduler-addr", "SCHEDULER_ADDR", cfg.SchedulerAddrs, "scheduler gRPC addresses, comma separated, or one target such as consul:///agentserver-scheduler")
	set.String(&cfg.WorkDir, "workdir", "WORKER_WORKDIR", cfg.WorkDir, "working directory of executor processes (default: current)")
	set.Duration(&cfg.DrainGrace, "drain-grace", "WORKER_DRAIN_GRACE", cfg.DrainGrace, "how long running runs may finish on shutdown")
	set.String(&cfg.Labels, "labels", "WORKER_LABELS", cfg.Labels, "labels, e.g. zone=a,disk=ssd")
	set.String(&cfg.CgroupDir, "cgroup-dir", "WORKER_CGROUP_DIR", cfg.CgroupDir, "delegated cgroup v2 directory for per-replica memory limits (empty: rlimits)")
	set.String(&cfg.AdminAddr, "admin-addr", "WORKER_ADMIN_ADDR", cfg.AdminAddr, "/healthz, /readyz and /metrics address, e.g. :9093 (empty: off; several workers on one host need different ports)")
	set.Duration(&cfg.EventHold, "event-hold", "WORKER_EVENT_HOLD", cfg.EventHold, "how long a run's events wait to go out with its result (0: sent at once)")
	bindGPU(set, &cfg.GPU)
}

// errReleased ends a run the worker hands back to the queue while draining.
var errReleased = errors.New("run released by a draining worker")

// errLeaseLost ends a run whose lease the scheduler says moved on.
var errLeaseLost = errors.New("lease lost")

// Worker is a worker-agent.
type Worker struct {
	cfg      Config
	slots    map[string]int
	labels   map[string]string
	addrs    []string
	log      *slog.Logger
	exec     *executor.Manager
	hostname string
	// gpus are the GPUs behind the gpu slots (gpu.go); its mutable fields are guarded by mu.
	gpus *gpuState

	mu       sync.Mutex
	runs     map[string]*activeRun // by run name
	used     map[string]int
	draining bool
	// events holds runs' events for their results.
	events *eventHold
	// unacked holds results sent but not yet acknowledged, resent after a reconnect.
	unacked map[string]*schedulerv1.RunResult
	outbox  *outbox
	// idle is signalled whenever a run ends.
	idle chan struct{}
	// runners execute the runs.
	runners *runners
	// connected reports whether a session is registered now (readiness).
	connected bool

	flowMu sync.Mutex
	flows  map[flowVersion]cachedFlow
	// stepData holds the data of step_started events by step name (stepStarted).
	stepData intern.Cache[*structpb.Struct]
	// checkpoints holds each run's checkpoint waiting for its acknowledgement (under mu).
	checkpoints map[string]*pendingCheckpoint
	admin       *admin.Server
	// dial holds extra options of the scheduler connection (WithDialOptions), or the
	// connection itself (WithSchedulerConn).
	dial dialSettings
}

type activeRun struct {
	name     string
	epoch    int64
	slotType string
	cancel   context.CancelCauseFunc
	// done is closed once the run has ended, freed its slot and GPU and queued its result.
	done chan struct{}

	// gpu is the UUID of the GPU a gpu run holds (gpu.go); empty for other runs.
	gpu string
}

// New validates cfg and builds a worker. A worker with gpu slots reads its GPUs here and
// refuses to start, saying what it found and what to check, when the NVIDIA driver cannot
// back them.
func New(cfg Config, log *slog.Logger, opts ...Option) (*Worker, error) {
	slots, err := ParseSlots(cfg.Slots)
	if err != nil {
		return nil, err
	}
	labels := make(map[string]string)
	for _, kv := range strings.Split(cfg.Labels, ",") {
		if kv = strings.TrimSpace(kv); kv == "" {
			continue
		}
		k, v, ok := strings.Cut(kv, "=")
		if !ok || k == "" {
			return nil, fmt.Errorf("WORKER_LABELS: %q must look like key=value", kv)
		}
		labels[k] = v
	}
	addrs := schedulerTargets(cfg.SchedulerAddrs)
	if len(addrs) == 0 {
		return nil, errors.New("SCHEDULER_ADDR is empty: give at least one scheduler address (host:port)")
	}
	if cfg.DrainGrace < 0 {
		return nil, errors.New("WORKER_DRAIN_GRACE must not be negative")
	}
	if cfg.EventHold < 0 || cfg.EventHold > maxEventHold {
		return nil, fmt.Errorf("WORKER_EVENT_HOLD must be between 0 and %s (got %s): it delays a run's events (e.g. step_started) by up to that much", maxEventHold, cfg.EventHold)
	}
	hostname, _ := os.Hostname()
	if cfg.ID == "" {
		cfg.ID = fmt.Sprintf("%s-%s", hostname, uuid.NewString()[:8])
	}
	// GPU wiring (gpu.go): resolves gpu=auto and refuses gpu slots the driver cannot back.
	gpus, inv, err := setupGPUs(cfg.GPU, slots, opts)
	if err != nil {
		return nil, err
	}
	if len(gpus.devices) > 0 {
		log.Info("GPUs found", "source", inv.Source, "driver", inv.DriverVersion, "found", len(inv.GPUs),
			"used", len(gpus.devices), "gpus", gpu.Inventory{GPUs: gpus.devices}.Describe(), "warnings", inv.Warnings)
	}
	total := 0
	for _, n := range slots {
		total += n
	}
	if cfg.CgroupDir != "" {
		if err := executor.CheckCgroupDir(cfg.CgroupDir); err != nil {
			return nil, fmt.Errorf("WORKER_CGROUP_DIR: %w", err)
		}
	}
	mgr, err := executor.NewManager(executor.Config{Dir: cfg.WorkDir, MaxConcurrency: total, Logger: log, CgroupDir: cfg.CgroupDir})
	if err != nil {
		if gpus.closer != nil {
			_ = gpus.closer.Close()
		}
		return nil, fmt.Errorf("executor manager: %w", err)
	}
	w := &Worker{
		cfg: cfg, slots: slots, labels: labels, addrs: addrs, log: log.With("worker", cfg.ID), exec: mgr,
		hostname: hostname, gpus: gpus, runs: make(map[string]*activeRun), used: make(map[string]int),
		unacked: make(map[string]*schedulerv1.RunResult), outbox: newOutbox(), idle: make(chan struct{}, 1), runners: newRunners(),
		dial: dialOptions(opts), checkpoints: make(map[string]*pendingCheckpoint),
	}
	w.events = newEventHold(cfg.EventHold, w.outbox.push)
	if cfg.AdminAddr != "" {
		if w.admin, err = admin.Listen(cfg.AdminAddr, w.ready, w.log, slotsCollector{w}); err != nil {
			_ = mgr.Close()
			if gpus.closer != nil {
				_ = gpus.closer.Close()
			}
			return nil, err
		}
	}
	return w, nil
}

// ID is the worker's id.
func (w *Worker) ID() string { return w.cfg.ID }

// Run keeps a session with a scheduler until ctx ends, then drains: it takes no new work,
// lets running runs finish within DrainGrace, hands the rest back, and returns nil once
// every result is acknowledged (or a last grace period passes).
func (w *Worker) Run(ctx context.Context) error {
	defer w.exec.Close()
	defer w.runners.stop()
	sessCtx, stopSessions := context.WithCancel(context.WithoutCancel(ctx))
	defer stopSessions()
	// GPU wiring (gpu.go): keep GPU readings fresh for heartbeats while sessions run.
	if w.gpus.closer != nil {
		defer w.gpus.closer.Close()
	}
	if len(w.gpus.devices) > 0 {
		gpuDone := make(chan struct{})
		defer func() { <-gpuDone }()
		go func() {
			defer close(gpuDone)
			w.gpuLoop(sessCtx)
		}()
	}
	if w.admin != nil {
		adminDone := make(chan struct{})
		defer func() { <-adminDone }()
		go func() {
			defer close(adminDone)
			if err := w.admin.Run(sessCtx); err != nil {
				w.log.Error("admin endpoint", "err", err)
			}
		}()
	}
	sessionsDone := make(chan struct{})
	go func() {
		defer close(sessionsDone)
		w.connectLoop(sessCtx)
	}()
	<-ctx.Done()
	w.drain()
	stopSessions()
	<-sessionsDone
	return nil
}

func (w *Worker) setConnected(c bool) {
	w.mu.Lock()
	w.connected = c
	w.mu.Unlock()
}

// ready reports why the worker does not take work now, if it does not.
func (w *Worker) ready(context.Context) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	switch {
	case w.draining:
		return errors.New("draining")
	case !w.connected:
		return errors.New("no scheduler session")
	}
	return nil
}

// drain stops taking work, waits up to DrainGrace for running runs, releases the rest
// and waits briefly for their results to be acknowledged.
func (w *Worker) drain() {
	w.mu.Lock()
	w.draining = true
	n := len(w.runs)
	w.mu.Unlock()
	w.log.Info("draining", "running", n, "grace", w.cfg.DrainGrace)
	w.outbox.push(w.heartbeat())
	deadline := time.After(w.cfg.DrainGrace)
	for !w.waitIdle(deadline) {
		// Grace is over: hand the remaining runs back to the queue.
		w.mu.Lock()
		for _, r := range w.runs {
			r.cancel(errReleased)
		}
		w.mu.Unlock()
		deadline = nil
	}
	flush := time.After(10 * time.Second)
	for {
		w.mu.Lock()
		pending := len(w.unacked)
		w.mu.Unlock()
		if pending == 0 {
			return
		}
		select {
		case <-flush:
			w.log.Warn("exiting with unacknowledged results; their runs will be recovered after their leases expire", "count", pending)
			return
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// waitIdle waits until no run is active (true) or deadline fires (false). A nil deadline
// waits until idle.
func (w *Worker) waitIdle(deadline <-chan time.Time) bool {
	for {
		w.mu.Lock()
		n := len(w.runs)
		w.mu.Unlock()
		if n == 0 {
			return true
		}
		select {
		case <-w.idle:
		case <-deadline:
			return false
		}
	}
}

// connectLoop opens sessions, rotating through the scheduler addresses with backoff.
func (w *Worker) connectLoop(ctx context.Context) {
	backoff := 100 * time.Millisecond
	for i := 0; ctx.Err() == nil; i++ {
		addr := w.addrs[i%len(w.addrs)]
		start := time.Now()
		registered := false
		err := w.session(ctx, addr, &registered)
		if ctx.Err() != nil {
			return
		}
		// Backoff is for schedulers that cannot be reached or refuse the worker. A session
		// that registered ended because its scheduler went away: reconnect (to the next
		// address) at once, so the runs this worker holds are adopted before their leases
		// expire. Growing the delay across such sessions let a few scheduler restarts push
		// it past the lease TTL, and every run held here was then executed again elsewhere.
		if registered || time.Since(start) > 10*time.Second {
			backoff = 100 * time.Millisecond
		}
		w.log.Warn("scheduler session ended; reconnecting", "scheduler", addr, "err", err, "retry_in", backoff)
		jitter := time.Duration(rand.Int64N(int64(backoff)/2 + 1))
		select {
		case <-ctx.Done():
			return
		case <-time.After(backoff + jitter):
		}
		backoff = min(backoff*2, 5*time.Second)
	}
}

func (w *Worker) slotInventory() []*agentserverv1.SlotInventory {
	out := make([]*agentserverv1.SlotInventory, 0, len(w.slots))
	for t, n := range w.slots {
		out = append(out, &agentserverv1.SlotInventory{Type: t, Total: int32(n), Used: int32(w.used[t])})
	}
	return out
}

func (w *Worker) heartbeat() *schedulerv1.ConnectRequest {
	w.mu.Lock()
	defer w.mu.Unlock()
	_, free := memInfo()
	return &schedulerv1.ConnectRequest{Msg: &schedulerv1.ConnectRequest_Heartbeat{Heartbeat: &schedulerv1.Heartbeat{
		MemoryFreeBytes: free, Slots: w.slotInventory(), Gpus: w.changedGPUs(), Draining: w.draining,
	}}}
}

// session runs one Connect stream until it breaks or ctx ends. It sets *registered once
// the scheduler accepted the worker's registration.
func (w *Worker) session(ctx context.Context, addr string, registered *bool) error {
	conn := w.dial.conn
	if conn == nil {
		cc, err := grpc.NewClient(addr, append(append(grpcwin.DialOptions(),
			grpc.WithTransportCredentials(insecure.NewCredentials()),
			grpc.WithKeepaliveParams(keepalive.ClientParameters{Time: 20 * time.Second, Timeout: 10 * time.Second, PermitWithoutStream: true}),
		), w.dial.opts...)...)
		if err != nil {
			return err
		}
		defer cc.Close()
		conn = cc
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stream, err := schedulerv1.NewSchedulerServiceClient(conn).Connect(ctx)
	if err != nil {
		return err
	}
	total, free := memInfo()
	w.mu.Lock()
	reg := &schedulerv1.Register{
		WorkerId: w.cfg.ID, Pool: w.cfg.Pool, Slots: w.slotInventory(), Gpus: w.gpuInventory(), MemoryTotalBytes: total,
		MemoryFreeBytes: free, Labels: w.labels, Hostname: w.hostname, Draining: w.draining,
		Features: []string{featureResultAcks, featureResultEvents},
	}
	for _, r := range w.runs {
		reg.Running = append(reg.Running, &schedulerv1.RunLease{Run: r.name, Epoch: r.epoch})
	}
	resend := make([]*schedulerv1.RunResult, 0, len(w.unacked))
	queued := w.outbox.queuedResults()
	for _, res := range w.unacked {
		// Finished but unacknowledged: keep the lease until the result lands.
		reg.Running = append(reg.Running, &schedulerv1.RunLease{Run: res.GetRun(), Epoch: res.GetEpoch()})
		if !queued[res] { // one still in the outbox goes out from there, once
			resend = append(resend, res)
		}
	}
	w.mu.Unlock()
	if err := stream.Send(&schedulerv1.ConnectRequest{Msg: &schedulerv1.ConnectRequest_Register{Register: reg}}); err != nil {
		return err
	}
	first, err := stream.Recv()
	if err != nil {
		return err
	}
	reply := first.GetRegistered()
	if reply == nil {
		return errors.New("scheduler did not answer register")
	}
	*registered = true
	w.setConnected(true)
	defer w.setConnected(false)
	w.log.Info("connected to scheduler", "scheduler", reply.GetSchedulerId(), "addr", addr, "slots", FormatSlots(w.slots))
	for _, l := range reply.GetLost() {
		w.stop(l.GetRun(), l.GetEpoch(), errLeaseLost)
	}
	interval := reply.GetHeartbeatInterval().AsDuration()
	if interval <= 0 {
		interval = 2 * time.Second
	}
	for _, res := range resend {
		w.outbox.push(&schedulerv1.ConnectRequest{Msg: &schedulerv1.ConnectRequest_Result{Result: res}})
	}
	// A checkpoint the broken stream may have lost: send it again (writing it twice is
	// harmless; its run waits for the acknowledgement).
	w.mu.Lock()
	for _, p := range w.checkpoints {
		w.outbox.push(&schedulerv1.ConnectRequest{Msg: &schedulerv1.ConnectRequest_Checkpoint{Checkpoint: p.msg}})
	}
	w.mu.Unlock()

	errc := make(chan error, 2)
	resultEvents := slices.Contains(reply.GetFeatures(), featureResultEvents)
	go func() { errc <- w.sendLoop(ctx, stream, interval, resultEvents) }()
	go func() {
		for {
			m, err := stream.Recv()
			if err != nil {
				errc <- err
				return
			}
			w.handle(m)
		}
	}()
	err = <-errc
	cancel()
	return err
}

// sendLoop writes the outbox and heartbeats to the stream. A message whose send fails
// goes back to the front of the outbox for the next session. Without resultEvents (a
// scheduler that does not take events in results) a result's events go on their own first.
func (w *Worker) sendLoop(ctx context.Context, stream schedulerv1.SchedulerService_ConnectClient, interval time.Duration, resultEvents bool) error {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		for {
			m := w.outbox.pop()
			if m == nil {
				break
			}
			if !resultEvents && len(m.GetResult().GetEvents()) > 0 {
				for _, part := range splitResult(m) {
					if err := stream.Send(part); err != nil {
						w.outbox.pushFront(m) // whole again: its events may go twice, never lost
						return err
					}
				}
				continue
			}
			if err := stream.Send(m); err != nil {
				w.outbox.pushFront(m)
				return err
			}
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-w.outbox.ready:
			// Let the goroutines already runnable go first: a claim's runs end together
			// (their executor's answers come in one read) and each pushes its result, so
			// one wake-up here then sends them all, where taking each result as it came
			// woke this loop, and the scheduler's receiving goroutines, once a run (~1.7
			// wake-ups a run fewer in the server; thirty-fifth pass).
			runtime.Gosched()
		case <-t.C:
			if err := stream.Send(w.heartbeat()); err != nil {
				return err
			}
		}
	}
}

// handle processes one message from the scheduler.
func (w *Worker) handle(m *schedulerv1.ConnectResponse) {
	switch msg := m.GetMsg().(type) {
	case *schedulerv1.ConnectResponse_Assignment:
		w.start(msg.Assignment)
	case *schedulerv1.ConnectResponse_Cancel:
		cause := executor.ErrCancelled
		if msg.Cancel.GetReason() == "lease_lost" {
			cause = errLeaseLost
		}
		w.stop(msg.Cancel.GetRun(), msg.Cancel.GetEpoch(), cause)
	case *schedulerv1.ConnectResponse_CheckpointAck:
		w.checkpointAcked(msg.CheckpointAck)
	case *schedulerv1.ConnectResponse_ResultAck:
		w.mu.Lock()
		w.acked(msg.ResultAck)
		w.mu.Unlock()
	case *schedulerv1.ConnectResponse_ResultAcks:
		w.mu.Lock()
		for _, ack := range msg.ResultAcks.GetAcks() {
			w.acked(ack)
		}
		w.mu.Unlock()
	case *schedulerv1.ConnectResponse_Drain:
		w.mu.Lock()
		w.draining = true
		w.mu.Unlock()
		w.outbox.push(w.heartbeat())
	}
}

// acked forgets the result ack acknowledges. Call with w.mu held.
func (w *Worker) acked(ack *schedulerv1.ResultAck) {
	if res, ok := w.unacked[ack.GetRun()]; ok && res.GetEpoch() == ack.GetEpoch() {
		delete(w.unacked, ack.GetRun())
	}
}

// stop ends a running run with cause, if the worker runs it under that epoch.
func (w *Worker) stop(run string, epoch int64, cause error) {
	w.mu.Lock()
	r, ok := w.runs[run]
	w.mu.Unlock()
	if ok && r.epoch == epoch {
		w.log.Info("stopping run", "run", run, "reason", cause)
		r.cancel(cause)
	}
}
