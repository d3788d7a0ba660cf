package e2e

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/stretchr/testify/require"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/structpb"

	agentserverv1 "github.com/agentserver/agentserver/gen/agentserver/v1"
	"github.com/agentserver/agentserver/pkg/pgtest"
	"github.com/agentserver/agentserver/pkg/proctest"
	"github.com/agentserver/agentserver/pkg/store"
)

// Timing of the cluster under test: short leases so that lost workers are noticed within
// seconds, heartbeats well inside them.
const (
	leaseTTL          = 2 * time.Second
	heartbeatInterval = 400 * time.Millisecond
)

// cluster is a set of processes sharing one database: at most one gateway, any number of
// schedulers and workers.
type cluster struct {
	t       *testing.T
	dir     string
	dbURL   string
	db      *store.Store
	records string

	gateway    *proctest.Process
	grpcAddr   string
	conn       *grpc.ClientConn
	assistants agentserverv1.AssistantServiceClient
	runs       agentserverv1.RunServiceClient

	procs      *proctest.Group
	mu         sync.Mutex
	schedulers []*scheduler
	workers    []*worker
	script     string
}

// scheduler is a scheduler process with a fixed address, so it can be restarted there.
type scheduler struct {
	*proctest.Process
	t    *testing.T
	id   string
	addr string
}

// worker is a worker-agent process. A restart is a new process with a new worker id.
type worker struct {
	*proctest.Process
	id    string
	slots string
}

// newCluster creates a database, starts a gateway on free loopback ports and connects a
// gRPC client to it. Everything it starts is killed when the test ends; on failure the
// tails of the processes' logs are printed.
func newCluster(t *testing.T) *cluster {
	t.Helper()
	c := &cluster{t: t, dir: t.TempDir(), dbURL: pgtest.NewDatabase(t)}
	c.records = filepath.Join(c.dir, "records.jsonl")
	c.script = filepath.Join(c.dir, "executor.py")
	proctest.WriteExecutable(t, c.script, []byte(executorScript))
	c.procs = proctest.NewGroup(t)

	httpAddr, grpcAddr := proctest.FreeAddr(t), proctest.FreeAddr(t)
	c.grpcAddr = grpcAddr
	c.gateway = c.newProc("gateway", bins.gateway,
		"DATABASE_URL="+c.dbURL, "GATEWAY_HTTP_ADDR="+httpAddr, "GATEWAY_GRPC_ADDR="+grpcAddr)
	c.gateway.Start()
	c.gateway.Await(60*time.Second, "gateway healthy", proctest.HTTPOK("http://"+httpAddr+"/healthz"))

	// The gateway migrated the database before it listened.
	db, err := store.Open(context.Background(), c.dbURL)
	require.NoError(t, err)
	c.db = db
	t.Cleanup(db.Close)

	conn, err := grpc.NewClient(grpcAddr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	require.NoError(t, err)
	c.conn = conn
	t.Cleanup(func() { conn.Close() })
	c.assistants = agentserverv1.NewAssistantServiceClient(conn)
	c.runs = agentserverv1.NewRunServiceClient(conn)
	return c
}

// newProc registers a process of the cluster (not started yet): it sees only the
// environment the test gives it (proctest.ServiceEnv), and its log goes to the test's
// directory. When the test ends, every process still running is killed (SIGKILL ends
// paused ones too; their executors die with them) and, if the test failed, the end of
// every log is printed.
func (c *cluster) newProc(name, bin string, env ...string) *proctest.Process {
	return c.procs.New(proctest.Spec{Name: name, Bin: bin,
		Env: append(proctest.ServiceEnv(), env...), Log: filepath.Join(c.dir, name+".log")})
}

// schedulerEnv is the scheduler configuration of every test; extra entries override it.
func (c *cluster) schedulerEnv(addr, id string, extra ...string) []string {
	return append([]string{
		"DATABASE_URL=" + c.dbURL,
		"SCHEDULER_ID=" + id,
		"SCHEDULER_GRPC_ADDR=" + addr,
		"SCHEDULER_LEASE_TTL=" + leaseTTL.String(),
		"SCHEDULER_HEARTBEAT_INTERVAL=" + heartbeatInterval.String(),
		"SCHEDULER_POLL_INTERVAL=200ms",
		"SCHEDULER_RECOVER_INTERVAL=200ms",
		"SCHEDULER_RETRY_BASE_DELAY=200ms",
		"SCHEDULER_TIMEOUT_GRACE=2s",
		// Several processes share the host: any admin (health, metrics) port will do.
		"SCHEDULER_ADMIN_ADDR=127.0.0.1:0",
	}, extra...)
}

// startScheduler starts a scheduler on a free loopback port and waits until it listens.
func (c *cluster) startScheduler(extra ...string) *scheduler {
	c.t.Helper()
	c.mu.Lock()
	n := len(c.schedulers) + 1
	c.mu.Unlock()
	id := fmt.Sprintf("scheduler-%d", n)
	addr := proctest.FreeAddr(c.t)
	s := &scheduler{Process: c.newProc(id, bins.scheduler, c.schedulerEnv(addr, id, extra...)...), t: c.t, id: id, addr: addr}
	c.mu.Lock()
	c.schedulers = append(c.schedulers, s)
	c.mu.Unlock()
	s.restart()
	return s
}

// restart starts the scheduler again on its address and waits until it listens.
func (s *scheduler) restart() {
	s.t.Helper()
	s.Start()
	s.Await(30*time.Second, s.id+" listening", proctest.Listening(s.addr))
}

// workerOpts configures a worker process.
type workerOpts struct {
	slots      string
	schedulers []*scheduler
	drainGrace time.Duration
}

// startWorker starts a worker-agent and waits until a scheduler registered it READY.
func (c *cluster) startWorker(o workerOpts) *worker {
	c.t.Helper()
	w := c.launchWorker(o)
	c.waitWorkerReady(w)
	return w
}

// launchWorker starts a worker-agent without waiting for it.
func (c *cluster) launchWorker(o workerOpts) *worker {
	c.t.Helper()
	if o.slots == "" {
		o.slots = "cpu=4"
	}
	if o.drainGrace == 0 {
		o.drainGrace = 10 * time.Second
	}
	addrs := make([]string, len(o.schedulers))
	for i, s := range o.schedulers {
		addrs[i] = s.addr
	}
	c.mu.Lock()
	n := len(c.workers) + 1
	c.mu.Unlock()
	id := fmt.Sprintf("worker-%d-%s", n, uuid.NewString()[:4])
	w := &worker{Process: c.newProc(id, bins.worker,
		"WORKER_ID="+id,
		"WORKER_SLOTS="+o.slots,
		"SCHEDULER_ADDR="+strings.Join(addrs, ","),
		"WORKER_WORKDIR="+c.dir,
		"WORKER_DRAIN_GRACE="+o.drainGrace.String(),
		"WORKER_ADMIN_ADDR=127.0.0.1:0",
	), id: id, slots: o.slots}
	c.mu.Lock()
	c.workers = append(c.workers, w)
	c.mu.Unlock()
	w.Start()
	return w
}

// waitWorkerReady waits until the worker is registered READY with some scheduler.
func (c *cluster) waitWorkerReady(w *worker) string {
	c.t.Helper()
	var sched string
	w.Await(30*time.Second, w.id+" ready", func() (bool, string) {
		var state int
		err := c.db.Pool().QueryRow(context.Background(),
			`SELECT state, scheduler_id FROM workers WHERE id = $1`, w.id).Scan(&state, &sched)
		if err != nil {
			return false, err.Error()
		}
		return state == int(store.WorkerReady), fmt.Sprintf("state %d", state)
	})
	return sched
}

// workerScheduler returns the scheduler a worker is registered with and its state.
func (c *cluster) workerScheduler(id string) (string, store.WorkerState) {
	c.t.Helper()
	var sched string
	var state store.WorkerState
	err := c.db.Pool().QueryRow(context.Background(),
		`SELECT scheduler_id, state FROM workers WHERE id = $1`, id).Scan(&sched, &state)
	require.NoError(c.t, err)
	return sched, state
}

// assistantOpts describes an assistant running the test executor.
type assistantOpts struct {
	slotType         string
	concurrencyLimit int32
	timeout          time.Duration
	maxAttempts      int32
	// config is merged into the assistant's config (the executor reads it).
	config map[string]any
}

// createAssistant creates an assistant whose single executor is the test executor,
// recording into the cluster's records file.
func (c *cluster) createAssistant(id string, o assistantOpts) {
	c.t.Helper()
	cfg := map[string]any{"record": c.records}
	for k, v := range o.config {
		cfg[k] = v
	}
	config, err := structpb.NewStruct(cfg)
	require.NoError(c.t, err)
	a := &agentserverv1.Assistant{
		Flow:             fmt.Sprintf("executors:\n  - name: test\n    command: [\"python3\", %q]\n", c.script),
		SlotType:         o.slotType,
		ConcurrencyLimit: o.concurrencyLimit,
		MaxAttempts:      o.maxAttempts,
		Config:           config,
	}
	if o.timeout > 0 {
		a.Timeout = durationpb.New(o.timeout)
	}
	_, err = c.assistants.CreateAssistant(c.t.Context(), &agentserverv1.CreateAssistantRequest{Assistant: a, AssistantId: id})
	require.NoError(c.t, err)
}

// createRuns creates runs of an assistant, one per input, in batches of at most 1000
// (BatchCreateRuns), and returns their names in input order.
func (c *cluster) createRuns(assistant string, inputs []map[string]any) []string {
	c.t.Helper()
	specs := make([]runSpec, len(inputs))
	for i, in := range inputs {
		specs[i] = runSpec{assistant, in}
	}
	return c.createMixedRuns(specs)
}

// runSpec is a run to create: its assistant and input.
type runSpec struct {
	assistant string
	input     map[string]any
}

// createMixedRuns creates runs of any assistants in batches of at most 1000
// (BatchCreateRuns) and returns their names in order.
func (c *cluster) createMixedRuns(specs []runSpec) []string {
	c.t.Helper()
	names := make([]string, 0, len(specs))
	for start := 0; start < len(specs); start += 1000 {
		end := min(start+1000, len(specs))
		req := &agentserverv1.BatchCreateRunsRequest{}
		for _, spec := range specs[start:end] {
			s, err := structpb.NewStruct(spec.input)
			require.NoError(c.t, err)
			req.Requests = append(req.Requests, &agentserverv1.CreateRunRequest{Run: &agentserverv1.Run{
				Assistant: "assistants/" + spec.assistant, Input: s,
			}})
		}
		resp, err := c.runs.BatchCreateRuns(c.t.Context(), req)
		require.NoError(c.t, err)
		for _, r := range resp.GetRuns() {
			require.Equal(c.t, agentserverv1.Run_QUEUED, r.GetState())
			names = append(names, r.GetName())
		}
	}
	return names
}

// createRun creates one run and returns it.
func (c *cluster) createRun(assistant string, input map[string]any) *agentserverv1.Run {
	c.t.Helper()
	s, err := structpb.NewStruct(input)
	require.NoError(c.t, err)
	r, err := c.runs.CreateRun(c.t.Context(), &agentserverv1.CreateRunRequest{Run: &agentserverv1.Run{
		Assistant: "assistants/" + assistant, Input: s,
	}})
	require.NoError(c.t, err)
	return r
}

// getRun reads a run through the public API.
func (c *cluster) getRun(name string) *agentserverv1.Run {
	c.t.Helper()
	r, err := c.runs.GetRun(c.t.Context(), &agentserverv1.GetRunRequest{Name: name})
	require.NoError(c.t, err)
	return r
}

// waitRunState polls the run until it is in state, and fails the test if it reaches
// another terminal state first.
func (c *cluster) waitRunState(name string, state agentserverv1.Run_State, timeout time.Duration) *agentserverv1.Run {
	c.t.Helper()
	var r *agentserverv1.Run
	proctest.Eventually(c.t, timeout, name+" "+state.String(), func() (bool, string) {
		r = c.getRun(name)
		if r.GetState() != state && terminal(r.GetState()) {
			c.t.Fatalf("%s ended %s (%s), want %s", name, r.GetState(), r.GetError(), state)
		}
		return r.GetState() == state, r.GetState().String()
	})
	return r
}

// waitAllTerminal polls the database until no run is queued, running or interrupted, and
// returns how many runs there are.
func (c *cluster) waitAllTerminal(timeout time.Duration) {
	c.t.Helper()
	proctest.Eventually(c.t, timeout, "every run terminal", func() (bool, string) {
		var open int
		err := c.db.Pool().QueryRow(context.Background(),
			`SELECT count(*) FROM runs WHERE state IN (1, 2, 7)`).Scan(&open)
		if err != nil {
			return false, err.Error()
		}
		return open == 0, fmt.Sprintf("%d runs not terminal", open)
	})
}

// dbRun is what the tests read of a run straight from the database.
type dbRun struct {
	id      string
	state   store.RunState
	epoch   int64
	attempt int32
	worker  string
	output  map[string]any
}

// dbRuns returns every run of the database by name (runs/{id}).
func (c *cluster) dbRuns() map[string]dbRun {
	c.t.Helper()
	rows, err := c.db.Pool().Query(context.Background(),
		`SELECT id::text, state, epoch, attempt, coalesce(worker_id, '') FROM runs`)
	require.NoError(c.t, err)
	defer rows.Close()
	out := make(map[string]dbRun)
	for rows.Next() {
		var r dbRun
		require.NoError(c.t, rows.Scan(&r.id, &r.state, &r.epoch, &r.attempt, &r.worker))
		out["runs/"+r.id] = r
	}
	require.NoError(c.t, rows.Err())
	return out
}

// events returns a run's event log.
func (c *cluster) events(name string) []store.RunEvent {
	c.t.Helper()
	id, err := uuid.Parse(strings.TrimPrefix(name, "runs/"))
	require.NoError(c.t, err)
	evs, err := c.db.ListRunEvents(context.Background(), store.DefaultTenant, id, 0, 100000)
	require.NoError(c.t, err)
	return evs
}

// terminal reports whether no transition can leave state s.
func terminal(s agentserverv1.Run_State) bool {
	switch s {
	case agentserverv1.Run_SUCCEEDED, agentserverv1.Run_FAILED, agentserverv1.Run_CANCELLED, agentserverv1.Run_TIMED_OUT:
		return true
	}
	return false
}

// gone reports whether no live process has this pid: it does not exist (ESRCH), or it is
// a zombie that nobody reaped yet (an orphan whose new parent, PID 1 of a container, may
// never reap it), which runs no code.
func gone(pid int) bool {
	err := syscall.Kill(pid, 0)
	if errors.Is(err, syscall.ESRCH) {
		return true
	}
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return errors.Is(err, os.ErrNotExist)
	}
	// The state follows the command, which is in parentheses and may contain spaces.
	i := bytes.LastIndexByte(b, ')')
	return i > 0 && i+2 < len(b) && b[i+2] == 'Z'
}

// groupGone reports whether no live process is left in process group pgid.
func groupGone(pgid int) bool {
	if err := syscall.Kill(-pgid, 0); errors.Is(err, syscall.ESRCH) {
		return true
	}
	// Zombies still count as group members for kill(2); look for a live one.
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return false
	}
	for _, e := range entries {
		pid := 0
		if _, err := fmt.Sscanf(e.Name(), "%d", &pid); err != nil || pid <= 0 {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "stat"))
		if err != nil {
			continue
		}
		i := bytes.LastIndexByte(b, ')')
		if i < 0 || i+2 >= len(b) {
			continue
		}
		fields := strings.Fields(string(b[i+2:]))
		// fields: state ppid pgrp ...
		if len(fields) >= 3 && fields[0] != "Z" && fields[2] == fmt.Sprint(pgid) {
			return false
		}
	}
	return true
}
