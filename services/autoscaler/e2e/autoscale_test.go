package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/types/known/structpb"

	agentserverv1 "github.com/agentserver/agentserver/gen/agentserver/v1"
	"github.com/agentserver/agentserver/pkg/pgtest"
	"github.com/agentserver/agentserver/pkg/proctest"
	"github.com/agentserver/agentserver/pkg/store"
	"github.com/agentserver/agentserver/services/autoscaler/internal/api"
	"github.com/agentserver/agentserver/services/autoscaler/internal/metrics"
)

// sleeper is the executor of the test: protocol v1 over stdin/stdout, Python stdlib only.
// Each step sleeps state["ms"] milliseconds (so a burst builds a queue) and returns its
// state plus "done": true.
const sleeper = `#!/usr/bin/env python3
import json
import sys
import time

while True:
    line = sys.stdin.readline()
    if not line:
        break
    if not line.strip():
        continue
    req = json.loads(line)
    if req.get("type") != "step":
        continue
    state = req.get("state") or {}
    time.sleep(state.get("ms", 75) / 1000.0)
    out = dict(state)
    out["done"] = True
    sys.stdout.write(json.dumps({"type": "result", "id": req["id"], "state": out}) + "\n")
    sys.stdout.flush()
`

// The pool under test and its policy: windows and cooldowns of seconds, so a burst
// scales it up and an idle spell back down within the test.
const (
	minReplicas = 1
	maxReplicas = 4
	burst       = 500
	policyYAML  = `interval: 250ms
pools:
  - name: cpu
    slot_type: cpu
    min_replicas: 1
    max_replicas: 4
    slots_per_worker: 2
    scale_up:
      queue_depth: 4
      utilization: 0.8
      sustained: 500ms
      cooldown: 1s
      step: 1
    scale_down:
      utilization: 0.2
      sustained: 3s
      cooldown: 2s
      step: 1
`
)

// startProc starts a process of the test with the test binary's environment and env; its
// output goes to a log file whose tail is printed when the test fails.
func startProc(t *testing.T, dir, name, bin string, args []string, env ...string) *proctest.Process {
	t.Helper()
	p := proctest.New(t, proctest.Spec{Name: name, Bin: bin, Args: args,
		Env: append(os.Environ(), env...), Log: filepath.Join(dir, name+".log")})
	// It dies with the test binary (proctest), so a crashed test leaves nothing behind;
	// the autoscaler's workers die with the autoscaler the same way.
	p.Start()
	t.Cleanup(func() {
		// SIGTERM first: a scheduler or gateway shuts down cleanly, the autoscaler
		// drains its workers. Then SIGKILL, if it takes too long.
		p.Stop(30 * time.Second)
		p.ReportLog()
	})
	return p
}

// sample is the autoscaler's status at one instant.
type sample struct {
	at                                       time.Duration
	current, desired, ready, draining, queue int
	used, total                              int
}

// timeline polls the autoscaler's status in the background and keeps every change.
type timeline struct {
	mu      sync.Mutex
	samples []sample
}

func (tl *timeline) add(s sample) {
	tl.mu.Lock()
	defer tl.mu.Unlock()
	if n := len(tl.samples); n > 0 {
		last := tl.samples[n-1]
		last.at = s.at
		if last == s {
			return
		}
	}
	tl.samples = append(tl.samples, s)
}

func (tl *timeline) String() string {
	tl.mu.Lock()
	defer tl.mu.Unlock()
	var b strings.Builder
	b.WriteString("  t        current desired ready draining queue slots(used/total)\n")
	for _, s := range tl.samples {
		fmt.Fprintf(&b, "  %6.1fs  %7d %7d %5d %8d %5d %d/%d\n",
			s.at.Seconds(), s.current, s.desired, s.ready, s.draining, s.queue, s.used, s.total)
	}
	return b.String()
}

// autoscalerAPI reads the autoscaler's HTTP API.
type autoscalerAPI struct {
	base string
}

func (a autoscalerAPI) get(ctx context.Context, path string, out any) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, a.base+path, nil)
	if err != nil {
		return err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("GET %s: %s", path, resp.Status)
	}
	return json.NewDecoder(resp.Body).Decode(out)
}

func (a autoscalerAPI) pool(ctx context.Context) (api.Status, api.PoolStatus, error) {
	var st api.Status
	if err := a.get(ctx, "/v1/status", &st); err != nil {
		return st, api.PoolStatus{}, err
	}
	for _, p := range st.Pools {
		if p.Pool == "cpu" {
			return st, p, nil
		}
	}
	return st, api.PoolStatus{}, fmt.Errorf("no pool cpu in %+v", st)
}

// decisions returns the decisions oldest first.
func (a autoscalerAPI) decisions(ctx context.Context) ([]api.Decision, error) {
	var out struct {
		Decisions []api.Decision `json:"decisions"`
	}
	if err := a.get(ctx, "/v1/decisions?page_size=1000", &out); err != nil {
		return nil, err
	}
	ds := out.Decisions
	for i, j := 0, len(ds)-1; i < j; i, j = i+1, j-1 {
		ds[i], ds[j] = ds[j], ds[i]
	}
	return ds, nil
}

// A burst of runs against one worker scales the pool up to its max, the queue drains,
// then after the sustained idle window the pool returns to its min; every run succeeds
// and no decision flaps. Everything is real but the executor's work (a sleep).
func TestBurstScalesUpThenBackDown(t *testing.T) {
	start := time.Now()
	dir := t.TempDir()
	dbURL := pgtest.NewDatabase(t)
	ctx := t.Context()

	// Gateway (it migrates the database) and scheduler.
	gwHTTP, gwGRPC, schedAddr, listen := proctest.FreeAddr(t), proctest.FreeAddr(t), proctest.FreeAddr(t), proctest.FreeAddr(t)
	gw := startProc(t, dir, "gateway", bins.gateway, nil,
		"DATABASE_URL="+dbURL, "GATEWAY_HTTP_ADDR="+gwHTTP, "GATEWAY_GRPC_ADDR="+gwGRPC)
	gw.Await(60*time.Second, "gateway healthy", proctest.HTTPOK("http://"+gwHTTP+"/healthz"))
	sched := startProc(t, dir, "scheduler", bins.scheduler, nil,
		"DATABASE_URL="+dbURL, "SCHEDULER_ID=scheduler-1", "SCHEDULER_GRPC_ADDR="+schedAddr,
		"SCHEDULER_LEASE_TTL=5s", "SCHEDULER_HEARTBEAT_INTERVAL=500ms", "SCHEDULER_POLL_INTERVAL=200ms")
	sched.Await(30*time.Second, "scheduler listening", proctest.Listening(schedAddr))
	db, err := store.Open(ctx, dbURL)
	require.NoError(t, err)
	t.Cleanup(db.Close)

	// The autoscaler, its policy, and a process driver of worker-agents for pool cpu.
	script := filepath.Join(dir, "sleeper.py")
	proctest.WriteExecutable(t, script, []byte(sleeper))
	policyFile, driverFile := filepath.Join(dir, "policy.yaml"), filepath.Join(dir, "driver.yaml")
	require.NoError(t, os.WriteFile(policyFile, []byte(policyYAML), 0o600))
	require.NoError(t, os.WriteFile(driverFile, fmt.Appendf(nil, `kind: process
process:
  stop_timeout: 30s
  pools:
    cpu:
      binary: %s
      env:
        WORKER_POOL: cpu
        WORKER_SLOTS: cpu=2
        SCHEDULER_ADDR: %s
        WORKER_WORKDIR: %s
        WORKER_DRAIN_GRACE: 10s
`, bins.worker, schedAddr, dir), 0o600))
	as := startProc(t, dir, "autoscaler", bins.autoscaler, []string{"run",
		"--policy", policyFile, "--driver", driverFile,
		"--scheduler-addr", schedAddr, "--gateway-addrs", gwGRPC, "--listen", listen})
	auto := autoscalerAPI{base: "http://" + listen}

	// It starts the pool's min_replicas worker, which registers.
	as.Await(60*time.Second, "the first worker ready", func() (bool, string) {
		_, p, err := auto.pool(ctx)
		if err != nil {
			return false, err.Error()
		}
		return p.Current == minReplicas && p.Ready == minReplicas, fmt.Sprintf("%+v", p)
	})
	ready := time.Now()

	var tl timeline
	samplerCtx, stopSampler := context.WithCancel(ctx)
	samplerDone := make(chan struct{})
	go func() {
		defer close(samplerDone)
		tick := time.NewTicker(200 * time.Millisecond)
		defer tick.Stop()
		for {
			if _, p, err := auto.pool(samplerCtx); err == nil {
				tl.add(sample{at: time.Since(ready), current: p.Current, desired: p.Desired, ready: p.Ready,
					draining: p.Draining, queue: p.QueueDepth, used: p.SlotsUsed, total: p.SlotsTotal})
			}
			select {
			case <-samplerCtx.Done():
				return
			case <-tick.C:
			}
		}
	}()
	defer func() {
		stopSampler()
		<-samplerDone
		t.Logf("replicas over time (from the first worker ready):\n%s", tl.String())
	}()

	// The burst, through the gateway's public gRPC API.
	conn, err := grpc.NewClient(gwGRPC, grpc.WithTransportCredentials(insecure.NewCredentials()))
	require.NoError(t, err)
	t.Cleanup(func() { conn.Close() })
	_, err = agentserverv1.NewAssistantServiceClient(conn).CreateAssistant(ctx, &agentserverv1.CreateAssistantRequest{
		AssistantId: "sleeper",
		Assistant: &agentserverv1.Assistant{
			Flow:     fmt.Sprintf("executors:\n  - name: sleep\n    command: [\"python3\", %q]\n", script),
			SlotType: "cpu",
		},
	})
	require.NoError(t, err)
	req := &agentserverv1.BatchCreateRunsRequest{}
	for i := range burst {
		in, err := structpb.NewStruct(map[string]any{"i": i, "ms": 75})
		require.NoError(t, err)
		req.Requests = append(req.Requests, &agentserverv1.CreateRunRequest{Run: &agentserverv1.Run{Assistant: "assistants/sleeper", Input: in}})
	}
	burstAt := time.Now()
	resp, err := agentserverv1.NewRunServiceClient(conn).BatchCreateRuns(ctx, req)
	require.NoError(t, err)
	require.Len(t, resp.GetRuns(), burst)

	// What the autoscaler reads, read the same way: the queue the burst built (at least
	// 500 × 75 ms over at most 8 slots, seconds of work) and the gateway's latency window
	// (the two calls above at least).
	stats, err := metrics.NewSchedulerStats([]string{schedAddr}, 0)
	require.NoError(t, err)
	t.Cleanup(func() { _ = stats.Close() })
	cluster, err := stats.ClusterStats(ctx)
	require.NoError(t, err)
	require.Positive(t, cluster.QueueDepth["cpu"], "queued cpu runs: %+v", cluster)
	require.GreaterOrEqual(t, cluster.Pools["cpu"].Ready, 1)
	require.Equal(t, 2*cluster.Pools["cpu"].Ready, cluster.Pools["cpu"].Slots["cpu"].Total, "cpu=2 per worker")
	gws, err := metrics.NewGatewayStats([]string{gwGRPC}, 0, nil)
	require.NoError(t, err)
	t.Cleanup(func() { _ = gws.Close() })
	lat, err := gws.Latencies(ctx)
	require.NoError(t, err)
	require.Len(t, lat, 1)
	require.GreaterOrEqual(t, lat[0].Count, int64(2), "CreateAssistant and BatchCreateRuns were measured")
	require.Positive(t, lat[0].P95)
	t.Logf("gateway latency window right after the burst: %d requests, p95 %s", lat[0].Count, lat[0].P95)

	// Up to max while the queue drains.
	proctest.Eventually(t, 60*time.Second, "the pool at max_replicas", func() (bool, string) {
		_, p, err := auto.pool(ctx)
		if err != nil {
			return false, err.Error()
		}
		return p.Current == maxReplicas && p.Ready == maxReplicas, fmt.Sprintf("%+v", p)
	})
	atMax := time.Now()
	proctest.Eventually(t, 90*time.Second, "every run terminal", func() (bool, string) {
		var open int
		err := db.Pool().QueryRow(ctx, `SELECT count(*) FROM runs WHERE state IN ($1, $2, $3)`,
			store.StateQueued, store.StateRunning, store.StateInterrupted).Scan(&open)
		if err != nil {
			return false, err.Error()
		}
		return open == 0, fmt.Sprintf("%d runs not terminal", open)
	})
	drained := time.Now()

	// Back to min once idle for the sustained window, every decision applied.
	var atMinEvals uint64
	proctest.Eventually(t, 60*time.Second, "the pool back at min_replicas", func() (bool, string) {
		st, p, err := auto.pool(ctx)
		if err != nil {
			return false, err.Error()
		}
		atMinEvals = st.Evaluations
		return p.Current == minReplicas && p.Desired == minReplicas && !p.Scaling && p.Ready == minReplicas && p.Draining == 0,
			fmt.Sprintf("%+v", p)
	})
	atMin := time.Now()
	decisions, err := auto.decisions(ctx)
	require.NoError(t, err)
	// And it stays there: a dozen more evaluations (3 s) make no decision.
	proctest.Eventually(t, 30*time.Second, "a dozen more evaluations", func() (bool, string) {
		st, _, err := auto.pool(ctx)
		if err != nil {
			return false, err.Error()
		}
		return st.Evaluations >= atMinEvals+12, fmt.Sprintf("%d evaluations", st.Evaluations)
	})
	after, err := auto.decisions(ctx)
	require.NoError(t, err)
	require.Equal(t, decisions, after, "no decision once back at min")

	// Every run succeeded, on several workers.
	var succeeded, total, workers int
	require.NoError(t, db.Pool().QueryRow(ctx, `SELECT count(*) FILTER (WHERE state = $1), count(*),
		count(DISTINCT worker_id) FROM runs`, store.StateSucceeded).Scan(&succeeded, &total, &workers))
	require.Equal(t, burst, total)
	require.Equal(t, burst, succeeded, "every run SUCCEEDED")
	require.Greater(t, workers, 1, "the burst was shared by the workers the pool grew")

	// The decisions: min_replicas 0 → 1, then up to max, then down to min; each starts
	// where the previous ended; the direction reverses once (no flapping).
	var lines []string
	for _, d := range decisions {
		lines = append(lines, fmt.Sprintf("  #%d +%5.1fs %-26s %d → %d  %-7s %s", d.ID, d.Time.Sub(ready).Seconds(),
			d.Rule, d.From, d.To, d.Outcome, d.Reason))
	}
	t.Logf("decisions (time from the first worker ready):\n%s", strings.Join(lines, "\n"))
	require.NotEmpty(t, decisions)
	require.Equal(t, "min_replicas", decisions[0].Rule)
	require.Equal(t, 0, decisions[0].From)
	require.Equal(t, minReplicas, decisions[0].To)
	reversals, peak := 0, 0
	for i, d := range decisions {
		require.Equal(t, "applied", d.Outcome, "decision %d: %s", d.ID, d.Error)
		peak = max(peak, d.To)
		if i == 0 {
			continue
		}
		prev := decisions[i-1]
		require.Equal(t, prev.To, d.From, "decision %d starts where %d ended", d.ID, prev.ID)
		if (prev.To > prev.From) != (d.To > d.From) {
			reversals++
		}
		if d.To > d.From {
			require.Contains(t, []string{"queue_depth", "utilization_high"}, d.Rule)
		} else {
			require.Equal(t, "utilization_low_sustained", d.Rule)
		}
	}
	require.Equal(t, maxReplicas, peak, "scaled up to max_replicas")
	require.Equal(t, minReplicas, decisions[len(decisions)-1].To, "back to min_replicas")
	require.Equal(t, 1, reversals, "up, then down: the direction reversed once")

	// Stopping the autoscaler drains its last worker; it exits 0 and no worker is left.
	as.Signal(syscall.SIGTERM)
	require.Equal(t, 0, as.Wait(60*time.Second).ExitCode(), "the autoscaler exits 0")
	proctest.Eventually(t, 30*time.Second, "no live worker", func() (bool, string) {
		var live int
		err := db.Pool().QueryRow(ctx, `SELECT count(*) FROM workers WHERE state <> $1`, store.WorkerLost).Scan(&live)
		if err != nil {
			return false, err.Error()
		}
		return live == 0, fmt.Sprintf("%d live workers", live)
	})

	t.Logf("figures: %d runs, all SUCCEEDED, on %d workers; %d decisions; start-up %s; burst → max_replicas %s; "+
		"burst → queue drained %s; drained → min_replicas %s; whole test %s",
		total, workers, len(decisions), ready.Sub(start).Round(10*time.Millisecond), atMax.Sub(burstAt).Round(10*time.Millisecond),
		drained.Sub(burstAt).Round(10*time.Millisecond), atMin.Sub(drained).Round(10*time.Millisecond),
		time.Since(start).Round(10*time.Millisecond))
}
