package main

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"google.golang.org/grpc"

	schedulerv1 "github.com/agentserver/agentserver/gen/agentserver/scheduler/v1"
	agentserverv1 "github.com/agentserver/agentserver/gen/agentserver/v1"
	"github.com/agentserver/agentserver/pkg/proctest"
)

// syncBuffer is a bytes.Buffer safe for a writer and a poller.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func execute(ctx context.Context, stdout, stderr io.Writer, args ...string) error {
	cmd := newRootCmd(stdout, stderr)
	cmd.SetArgs(args)
	return cmd.ExecuteContext(ctx)
}

func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestSimulateWritesTheSameReportTwice(t *testing.T) {
	t.Parallel()
	var outs []string
	var files []map[string]string
	for range 2 {
		dir := filepath.Join(t.TempDir(), "report")
		var stdout bytes.Buffer
		require.NoError(t, execute(t.Context(), &stdout, io.Discard, "simulate",
			"--trace", "../../examples/trace.csv", "--policy", "../../examples/policy.yaml", "--seed", "3", "--out", dir))
		got := map[string]string{}
		for _, name := range []string{"summary.txt", "report.svg", "series.csv", "decisions.csv"} {
			data, err := os.ReadFile(filepath.Join(dir, name))
			require.NoError(t, err)
			got[name] = string(data)
		}
		files = append(files, got)
		// The paths differ between the runs; the summary does not.
		outs = append(outs, stdout.String()[:strings.Index(stdout.String(), "wrote ")])
		require.Contains(t, stdout.String(), "wrote "+filepath.Join(dir, "report.svg"))
	}
	require.Equal(t, files[0], files[1])
	require.Equal(t, outs[0], outs[1])
	require.Contains(t, outs[0], "trace     trace.csv: 303 rows")
	require.Contains(t, outs[0], "seed 3")
}

func TestSimulateFlagsAndInputErrors(t *testing.T) {
	t.Parallel()
	err := execute(t.Context(), io.Discard, io.Discard, "simulate", "--policy", "../../examples/policy.yaml")
	require.ErrorContains(t, err, `required flag(s) "trace" not set`)

	dir := t.TempDir()
	bad := filepath.Join(dir, "policy.yaml")
	require.NoError(t, os.WriteFile(bad, []byte("pools:\n  - name: cpu\n    min_replicas: 3\n    max_replicas: 2\n"), 0o600))
	err = execute(t.Context(), io.Discard, io.Discard, "simulate", "--trace", "../../examples/trace.csv", "--policy", bad)
	require.ErrorContains(t, err, "pools[0].max_replicas (line 4): must be >= min_replicas (3)")
}

func TestRunNeedsAMetricsSource(t *testing.T) {
	t.Parallel()
	err := execute(t.Context(), io.Discard, io.Discard, "run",
		"--policy", "../../examples/policy.yaml", "--driver", "../../examples/driver-compose.yaml")
	require.ErrorContains(t, err, "no metrics source configured: pass --scheduler-addr")
	err = execute(t.Context(), io.Discard, io.Discard, "run", "--driver", "x")
	require.ErrorContains(t, err, "--policy: required")

	run := func(args ...string) error {
		return execute(t.Context(), io.Discard, io.Discard, append([]string{"run",
			"--policy", "../../examples/policy.yaml", "--driver", "../../examples/driver-compose.yaml", "--listen", ""}, args...)...)
	}
	require.ErrorContains(t, run("--metrics-url", "http://x", "--scheduler-addr", "localhost:9091"),
		"--metrics-url and --scheduler-addr/--gateway-addrs are alternatives")
	require.ErrorContains(t, run("--gateway-addrs", "localhost:9090"), "--scheduler-addr: required with --gateway-addrs")
	// The example policy scales gateways: their latency is needed.
	require.ErrorContains(t, run("--scheduler-addr", "localhost:9091"),
		`--gateway-addrs: required: the policy scales the gateways ("gateway")`)
	require.ErrorContains(t, run("--scheduler-addr", "localhost:9091", "--gateway-addrs", "a:1", "--rpc-timeout", "-1s"),
		"--rpc-timeout: must be > 0")
}

func TestRunRejectsDriverThatMissesAPool(t *testing.T) {
	t.Parallel()
	// The example policy has cpu, gpu and gateways; the compose example maps cpu only.
	err := execute(t.Context(), io.Discard, io.Discard, "run", "--metrics-url", "http://127.0.0.1:1/unused",
		"--policy", "../../examples/policy.yaml", "--driver", "../../examples/driver-compose.yaml", "--listen", "")
	require.ErrorContains(t, err, `does not cover the policy: policy pool "gpu"`)
}

// run end to end: statistics over HTTP, a command driver backed by a script, decisions
// and status served over HTTP, a clean stop when the context ends.
func TestRunScalesThroughTheCommandDriver(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	calls := filepath.Join(dir, "calls.log")
	script := filepath.Join(dir, "scale.sh")
	proctest.WriteExecutable(t, script, []byte("#!/bin/sh\necho \"$POOL=$COUNT\" >> "+calls+"\n"))
	driverFile := filepath.Join(dir, "driver.yaml")
	require.NoError(t, os.WriteFile(driverFile, []byte("kind: command\ncommand:\n  pools: [cpu]\n  scale: ["+script+"]\n"), 0o600))
	policyFile := filepath.Join(dir, "policy.yaml")
	require.NoError(t, os.WriteFile(policyFile, []byte("interval: 20ms\npools:\n  - {name: cpu, min_replicas: 2, max_replicas: 4}\n"), 0o600))
	stats := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		_, _ = w.Write([]byte(`{"queue_depth": {"cpu": 0}, "pools": {}}`))
	}))
	t.Cleanup(stats.Close)

	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	stdout := &syncBuffer{}
	done := make(chan error, 1)
	go func() {
		done <- execute(ctx, stdout, io.Discard, "run", "--policy", policyFile, "--driver", driverFile,
			"--metrics-url", stats.URL, "--listen", "127.0.0.1:0")
	}()
	eventually(t, "the min_replicas decision to run the script", func() bool {
		data, _ := os.ReadFile(calls)
		return string(data) == "cpu=2\n"
	})
	var addr string
	eventually(t, "the HTTP address", func() bool {
		m := regexp.MustCompile(`serving (http://\S+)/v1/status`).FindStringSubmatch(stdout.String())
		if m != nil {
			addr = m[1]
		}
		return m != nil
	})
	var decisions struct {
		Decisions []struct {
			Pool, Rule, Outcome string
			From, To            int
		}
	}
	eventually(t, "the decision to be applied", func() bool {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, addr+"/v1/decisions", nil)
		require.NoError(t, err)
		resp, err := http.DefaultClient.Do(req)
		require.NoError(t, err)
		defer resp.Body.Close()
		require.NoError(t, json.NewDecoder(resp.Body).Decode(&decisions))
		return len(decisions.Decisions) == 1 && decisions.Decisions[0].Outcome == "applied"
	})
	d := decisions.Decisions[0]
	require.Equal(t, "cpu", d.Pool)
	require.Equal(t, "min_replicas", d.Rule)
	require.Equal(t, 0, d.From)
	require.Equal(t, 2, d.To)

	cancel()
	require.NoError(t, <-done)
	data, err := os.ReadFile(calls)
	require.NoError(t, err)
	require.Equal(t, "cpu=2\n", string(data), "the count stuck: no further decision")
}

// schedulerStandIn serves GetClusterStats with fixed figures.
type schedulerStandIn struct {
	schedulerv1.UnimplementedSchedulerServiceServer
}

func (schedulerStandIn) GetClusterStats(context.Context, *schedulerv1.GetClusterStatsRequest) (*schedulerv1.GetClusterStatsResponse, error) {
	return &schedulerv1.GetClusterStatsResponse{
		SlotTypes: []*schedulerv1.SlotTypeStats{{SlotType: "cpu", Queued: 10}},
		Pools: []*schedulerv1.PoolStats{{Pool: "cpu", WorkersReady: 1,
			Slots: []*agentserverv1.SlotInventory{{Type: "cpu", Total: 2, Used: 2}}}},
	}, nil
}

// run reads the cluster over gRPC: a dead scheduler address first, then a stand-in
// scheduler whose queue makes the pool grow.
func TestRunReadsTheSchedulersOverGRPC(t *testing.T) {
	t.Parallel()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	srv := grpc.NewServer()
	schedulerv1.RegisterSchedulerServiceServer(srv, schedulerStandIn{})
	go func() { _ = srv.Serve(lis) }()
	t.Cleanup(srv.Stop)
	dead, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	deadAddr := dead.Addr().String()
	require.NoError(t, dead.Close())

	dir := t.TempDir()
	calls := filepath.Join(dir, "calls.log")
	script := filepath.Join(dir, "scale.sh")
	proctest.WriteExecutable(t, script, []byte("#!/bin/sh\necho \"$POOL=$COUNT\" >> "+calls+"\n"))
	driverFile := filepath.Join(dir, "driver.yaml")
	require.NoError(t, os.WriteFile(driverFile, []byte("kind: command\ncommand:\n  pools: [cpu]\n  scale: ["+script+"]\n  initial: {cpu: 1}\n"), 0o600))
	policyFile := filepath.Join(dir, "policy.yaml")
	require.NoError(t, os.WriteFile(policyFile, []byte(`interval: 20ms
pools:
  - name: cpu
    max_replicas: 2
    slots_per_worker: 2
    scale_up: {queue_depth: 4, sustained: 0s, cooldown: 0s}
`), 0o600))

	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	done := make(chan error, 1)
	go func() {
		done <- execute(ctx, io.Discard, io.Discard, "run", "--policy", policyFile, "--driver", driverFile,
			"--scheduler-addr", deadAddr+","+lis.Addr().String(), "--listen", "")
	}()
	eventually(t, "the queue_depth decision to run the script", func() bool {
		data, _ := os.ReadFile(calls)
		return string(data) == "cpu=2\n"
	})
	cancel()
	require.NoError(t, <-done)
}
