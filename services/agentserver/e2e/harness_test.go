package e2e

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
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
	"github.com/agentserver/agentserver/pkg/store"
)

// Timing of the cluster under test: short leases so that lost workers are noticed within
// seconds, heartbeats well inside them.
const (
	leaseTTL          = 2 * time.Second
	heartbeatInterval = 400 * time.Millisecond
)

// proc is one service process the test started. Its stdout and stderr go to a log file
// that is printed (its tail) when the test fails.
type proc struct {
	t    *testing.T
	name string
	bin  string
	env  []string
	log  string

	mu     sync.Mutex
	cmd    *exec.Cmd
	exited chan struct{}
	state  *os.ProcessState
}

// start starts the process; it must not be running.
func (p *proc) start() {
	p.t.Helper()
	f, err := os.OpenFile(p.log, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
	require.NoError(p.t, err)
	fmt.Fprintf(f, "===== %s starting at %s\n", p.name, time.Now().Format(time.RFC3339Nano))
	cmd := exec.Command(p.bin)
	cmd.Env = append(baseEnv(), p.env...)
	cmd.Stdout, cmd.Stderr = f, f
	// Its own process group (a signal to the test's group does not reach it) and death
	// with the test binary, so a crashed test leaves nothing behind.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	require.NoError(p.t, cmd.Start(), "starting %s", p.name)
	exited := make(chan struct{})
	p.mu.Lock()
	p.cmd, p.exited, p.state = cmd, exited, nil
	p.mu.Unlock()
	go func() {
		_ = cmd.Wait()
		f.Close()
		p.mu.Lock()
		p.state = cmd.ProcessState
		p.mu.Unlock()
		close(exited)
	}()
}

// baseEnv is the test's environment without any setting of agentserver's services, so
// that only what the test sets configures them (an AGENTSERVER_CONFIG file or a
// DATABASE_URL in the developer's shell must not leak in).
func baseEnv() []string {
	var out []string
	for _, kv := range os.Environ() {
		name, _, _ := strings.Cut(kv, "=")
		switch {
		case name == "DATABASE_URL",
			strings.HasPrefix(name, "AGENTSERVER_"), strings.HasPrefix(name, "GATEWAY_"),
			strings.HasPrefix(name, "SCHEDULER_"), strings.HasPrefix(name, "WORKER_"),
			strings.HasPrefix(name, "CONSUL_"), strings.HasPrefix(name, "OTEL_"):
			continue
		}
		out = append(out, kv)
	}
	return out
}

// pid is the process id of the current (or last) incarnation.
func (p *proc) pid() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.cmd.Process.Pid
}

// running reports whether the current incarnation has not exited yet.
func (p *proc) running() bool {
	p.mu.Lock()
	exited := p.exited
	p.mu.Unlock()
	select {
	case <-exited:
		return false
	default:
		return true
	}
}

// signal sends sig to the process (SIGSTOP, SIGCONT, SIGTERM...).
func (p *proc) signal(sig syscall.Signal) {
	p.t.Helper()
	p.mu.Lock()
	cmd := p.cmd
	p.mu.Unlock()
	require.NoError(p.t, cmd.Process.Signal(sig), "sending %v to %s", sig, p.name)
}

// kill sends SIGKILL and waits until the process is reaped. It returns when that was: the
// process and, through Pdeathsig, its executors were dead by then.
func (p *proc) kill() time.Time {
	p.t.Helper()
	p.mu.Lock()
	cmd, exited := p.cmd, p.exited
	p.mu.Unlock()
	_ = cmd.Process.Signal(syscall.SIGKILL)
	select {
	case <-exited:
	case <-time.After(30 * time.Second):
		p.t.Fatalf("%s (pid %d) did not die within 30s of SIGKILL", p.name, cmd.Process.Pid)
	}
	return time.Now()
}

// wait waits up to timeout for the process to exit and returns its exit state.
func (p *proc) wait(timeout time.Duration) *os.ProcessState {
	p.t.Helper()
	p.mu.Lock()
	exited := p.exited
	p.mu.Unlock()
	select {
	case <-exited:
	case <-time.After(timeout):
		p.t.Fatalf("%s (pid %d) did not exit within %s", p.name, p.pid(), timeout)
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.state
}

// logText returns the process's log so far.
func (p *proc) logText() string {
	b, _ := os.ReadFile(p.log)
	return string(b)
}

// cluster is a set of processes sharing one database: at most one gateway, any number of
// schedulers and workers.
type cluster struct {
	t       *testing.T
	dir     string
	dbURL   string
	db      *store.Store
	records string

	gateway    *proc
	grpcAddr   string
	conn       *grpc.ClientConn
	assistants agentserverv1.AssistantServiceClient
	runs       agentserverv1.RunServiceClient

	mu         sync.Mutex
	procs      []*proc
	schedulers []*scheduler
	workers    []*worker
	script     string
}

// scheduler is a scheduler process with a fixed address, so it can be restarted there.
type scheduler struct {
	*proc
	id   string
	addr string
}

// worker is a worker-agent process. A restart is a new process with a new worker id.
type worker struct {
	*proc
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
	require.NoError(t, os.WriteFile(c.script, []byte(executorScript), 0o755))
	t.Cleanup(c.stopAll)

	httpAddr, grpcAddr := freeAddr(t), freeAddr(t)
	c.grpcAddr = grpcAddr
	c.gateway = c.newProc("gateway", bins.gateway,
		"DATABASE_URL="+c.dbURL, "GATEWAY_HTTP_ADDR="+httpAddr, "GATEWAY_GRPC_ADDR="+grpcAddr)
	c.gateway.start()
	eventually(t, 60*time.Second, "gateway healthy", func() (bool, string) {
		if !c.gateway.running() {
			t.Fatalf("gateway exited:\n%s", tail(c.gateway.logText(), 30))
		}
		resp, err := http.Get("http://" + httpAddr + "/healthz")
		if err != nil {
			return false, err.Error()
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK, resp.Status
	})

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

// newProc registers a process of the cluster (not started yet); its log goes to the
// test's directory.
func (c *cluster) newProc(name, bin string, env ...string) *proc {
	p := &proc{t: c.t, name: name, bin: bin, env: env, log: filepath.Join(c.dir, name+".log")}
	c.mu.Lock()
	c.procs = append(c.procs, p)
	c.mu.Unlock()
	return p
}

// stopAll kills every process still running (their executors die with them) and, when
// the test failed, prints the end of every log.
func (c *cluster) stopAll() {
	c.mu.Lock()
	procs := append([]*proc(nil), c.procs...)
	c.mu.Unlock()
	for _, p := range procs {
		p.mu.Lock()
		started := p.cmd != nil
		p.mu.Unlock()
		if started && p.running() {
			p.kill() // SIGKILL ends stopped (paused) processes too

		}
	}
	if c.t.Failed() {
		for _, p := range procs {
			c.t.Logf("----- last lines of %s (%s):\n%s", p.name, p.log, tail(p.logText(), 40))
		}
	}
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
	addr := freeAddr(c.t)
	s := &scheduler{proc: c.newProc(id, bins.scheduler, c.schedulerEnv(addr, id, extra...)...), id: id, addr: addr}
	c.mu.Lock()
	c.schedulers = append(c.schedulers, s)
	c.mu.Unlock()
	s.restart()
	return s
}

// restart starts the scheduler again on its address and waits until it listens.
func (s *scheduler) restart() {
	s.t.Helper()
	s.start()
	eventually(s.t, 30*time.Second, s.id+" listening", func() (bool, string) {
		if !s.running() {
			s.t.Fatalf("%s exited:\n%s", s.id, tail(s.logText(), 30))
		}
		conn, err := net.DialTimeout("tcp", s.addr, time.Second)
		if err != nil {
			return false, err.Error()
		}
		conn.Close()
		return true, ""
	})
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
	w := &worker{proc: c.newProc(id, bins.worker,
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
	w.start()
	return w
}

// waitWorkerReady waits until the worker is registered READY with some scheduler.
func (c *cluster) waitWorkerReady(w *worker) string {
	c.t.Helper()
	var sched string
	eventually(c.t, 30*time.Second, w.id+" ready", func() (bool, string) {
		if !w.running() {
			c.t.Fatalf("%s exited:\n%s", w.id, tail(w.logText(), 30))
		}
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
	eventually(c.t, timeout, name+" "+state.String(), func() (bool, string) {
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
	eventually(c.t, timeout, "every run terminal", func() (bool, string) {
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

// eventually polls cond every 20ms until it holds, failing the test after timeout with
// cond's last explanation. It is how the tests wait: never a bare sleep.
func eventually(t *testing.T, timeout time.Duration, what string, cond func() (bool, string)) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		ok, why := cond()
		if ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("waited %s for %s: %s", timeout, what, why)
		}
		select {
		case <-t.Context().Done():
			t.Fatalf("test ended while waiting for %s", what)
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// freeAddr returns a loopback address with a port that was free a moment ago.
func freeAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	addr := l.Addr().String()
	require.NoError(t, l.Close())
	return addr
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

// tail returns the last n lines of s.
func tail(s string, n int) string {
	var lines []string
	sc := bufio.NewScanner(strings.NewReader(s))
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		lines = append(lines, sc.Text())
		if len(lines) > n {
			lines = lines[1:]
		}
	}
	return strings.Join(lines, "\n")
}
