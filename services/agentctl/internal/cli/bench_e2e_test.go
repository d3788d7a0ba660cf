package cli

import (
	"bytes"
	"cmp"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	agentserverv1 "github.com/agentserver/agentserver/gen/agentserver/v1"
	"github.com/agentserver/agentserver/pkg/pgtest"
	"github.com/agentserver/agentserver/services/agentserver/dev"
)

func TestMain(m *testing.M) { pgtest.Main(m) }

// noopFlow builds the Go no-op executor of examples/noop into a temporary directory and
// returns a flow file that runs it; without a Go toolchain it falls back to the Python twin.
func noopFlow(tb testing.TB) string {
	tb.Helper()
	return noopFlowWith(tb, "")
}

// noopFlowWith is noopFlow with extra lines for the executor (e.g. its concurrency).
func noopFlowWith(tb testing.TB, extra string) string {
	tb.Helper()
	root, err := filepath.Abs("../../../..")
	require.NoError(tb, err)
	src := filepath.Join(root, "examples", "noop")
	dir := tb.TempDir()
	require.NoError(tb, os.Chmod(dir, 0o755))
	command := fmt.Sprintf("[%q]", filepath.Join(dir, "noop"))
	build := exec.Command("go", "build", "-o", filepath.Join(dir, "noop"), ".")
	build.Dir = src
	build.Env = append(os.Environ(), "GOWORK=off")
	if out, err := build.CombinedOutput(); err != nil {
		tb.Logf("building the Go no-op executor failed (%v: %s); using noop.py", err, out)
		command = fmt.Sprintf("[\"python3\", %q]", filepath.Join(src, "noop.py"))
	}
	flow := filepath.Join(dir, "flow.yaml")
	require.NoError(tb, os.WriteFile(flow, []byte("executors:\n  - name: noop\n    command: "+command+"\n"+extra), 0o644))
	return flow
}

// startAllInOne runs the all-in-one server in this process on free loopback ports with a
// fresh database and returns its gRPC address.
func startAllInOne(tb testing.TB, slots string) string {
	tb.Helper()
	cfg := dev.Defaults()
	cfg.DatabaseURL = pgtest.NewDatabase(tb)
	cfg.Gateway.HTTPAddr = "127.0.0.1:0"
	cfg.Gateway.GRPCAddr = "127.0.0.1:0"
	cfg.Scheduler.GRPCAddr = "127.0.0.1:0"
	cfg.Worker.Slots = slots
	cfg.Worker.WorkDir = tb.TempDir()
	cfg.Worker.DrainGrace = 5 * time.Second
	ctx, cancel := context.WithCancel(context.Background())
	addrs := make(chan dev.Addrs, 1)
	done := make(chan error, 1)
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	go func() { done <- dev.Run(ctx, cfg, log, func(a dev.Addrs) { addrs <- a }) }()
	var a dev.Addrs
	select {
	case a = <-addrs:
	case err := <-done:
		cancel()
		tb.Fatalf("all-in-one did not start: %v", err)
	}
	tb.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			require.NoError(tb, err, "clean shutdown")
		case <-time.After(30 * time.Second):
			tb.Error("all-in-one did not stop within 30s")
		}
	})
	return a.GRPC.String()
}

// runBench runs agentctl bench in-process against addr and decodes its JSON report.
func runBench(tb testing.TB, addr string, args ...string) (*BenchReport, string) {
	tb.Helper()
	var stdout, stderr bytes.Buffer
	code := Main(tb.Context(), append([]string{"--addr", addr, "bench", "--json", "--pids", "agentserver=" + strconv.Itoa(os.Getpid())}, args...), Env{
		Stdin: strings.NewReader(""), Stdout: &stdout, Stderr: &stderr,
		Getenv: func(string) string { return "" },
	})
	require.Equal(tb, ExitOK, code, "stderr: %s\nstdout: %s", stderr.String(), stdout.String())
	var r BenchReport
	require.NoError(tb, json.Unmarshal(stdout.Bytes(), &r), stdout.String())
	return &r, stdout.String()
}

func requireSane(t *testing.T, r *BenchReport, created int) {
	t.Helper()
	if created > 0 {
		require.Equal(t, created, r.Created)
	}
	require.Positive(t, r.Created)
	require.Zero(t, r.Errors, "error kinds: %v", r.ErrorKinds)
	require.Positive(t, r.ThroughputPerS)
	for _, p := range []Percentiles{r.EnqueueToStartMS, r.EnqueueToCompleteMS} {
		require.Equal(t, r.Created, p.N)
		require.True(t, 0 <= p.P50 && p.P50 <= p.P95 && p.P95 <= p.P99 && p.P99 <= p.Max, "%+v", p)
	}
	require.LessOrEqual(t, r.EnqueueToStartMS.P50, r.EnqueueToCompleteMS.P50)
}

// One short run of each workload through the real all-in-one: gateway, PostgreSQL queue,
// scheduler, worker and a no-op executor process.
func TestBenchAgainstAllInOne(t *testing.T) {
	addr := startAllInOne(t, "cpu=8")
	flow := noopFlow(t)

	t.Run("concurrency", func(t *testing.T) {
		r, _ := runBench(t, addr, "--flow", flow, "--concurrency", "4", "--duration", "1s", "--max-runs", "200")
		requireSane(t, r, 0)
		require.Equal(t, benchModeConcurrency, r.Mode)
		require.LessOrEqual(t, r.Created, 200)
		var names []string
		for _, c := range r.CPU {
			names = append(names, c.Name)
		}
		require.Contains(t, names, "agentserver", "the server's CPU (this process, given with --pids)")
	})
	t.Run("concurrency on threads", func(t *testing.T) {
		r, _ := runBench(t, addr, "--flow", flow, "--concurrency", "4", "--threads", "3", "--duration", "1s", "--max-runs", "60")
		requireSane(t, r, 0)
		require.Equal(t, 3, r.Threads)
		conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
		require.NoError(t, err)
		defer conn.Close()
		client := agentserverv1.NewRunServiceClient(conn)
		list, err := client.ListRuns(t.Context(), &agentserverv1.ListRunsRequest{Assistant: r.Assistant, PageSize: 1000})
		require.NoError(t, err)
		// The seq of a run's first event of a state in its log: the log's order is the order
		// things happened in (its timestamps are transactions' start times: a claim that
		// began before the previous run's end committed can take the run it promoted).
		seqOf := func(run *agentserverv1.Run, state string) int64 {
			events, err := client.ListRunEvents(t.Context(), &agentserverv1.ListRunEventsRequest{Name: run.GetName(), PageSize: 100})
			require.NoError(t, err)
			for _, e := range events.GetEvents() {
				if e.GetType() == "state" && e.GetData().GetFields()["state"].GetStringValue() == state {
					return e.GetSeq()
				}
			}
			t.Fatalf("%s has no %s event", run.GetName(), state)
			return 0
		}
		require.Len(t, list.GetRuns(), r.Created)
		byThread := map[string][]*agentserverv1.Run{}
		for _, run := range list.GetRuns() {
			byThread[run.GetThread()] = append(byThread[run.GetThread()], run)
		}
		require.Len(t, byThread, 3, "every run on one of the 3 threads")
		for thread, runs := range byThread {
			require.NotEmpty(t, thread)
			// Multitask enqueue: a thread's runs ran one at a time. In the order they ran
			// (their RUNNING events'), each started after the one before it ended.
			type span struct {
				name             string
				running, succeed int64
			}
			spans := make([]span, len(runs))
			for i, run := range runs {
				spans[i] = span{run.GetName(), seqOf(run, "RUNNING"), seqOf(run, "SUCCEEDED")}
			}
			slices.SortFunc(spans, func(a, b span) int { return cmp.Compare(a.running, b.running) })
			for i := 1; i < len(spans); i++ {
				require.Greater(t, spans[i].running, spans[i-1].succeed,
					"%s: %s started before %s ended", thread, spans[i].name, spans[i-1].name)
			}
		}
	})
	t.Run("rate", func(t *testing.T) {
		r, _ := runBench(t, addr, "--flow", flow, "--rate", "50", "--duration", "1s")
		requireSane(t, r, 50)
		require.Equal(t, 50.0, r.OfferedRatePerS)
		// The gateway's own latency of the unary calls of its last minute: this bench's
		// creates among them.
		g := r.GatewayMS
		require.NotNil(t, g, "the gateway's GetLatency answered")
		require.Equal(t, 60.0, g.WindowS)
		require.GreaterOrEqual(t, g.N, int64(r.Created))
		require.True(t, 0 < g.P50 && g.P50 <= g.P95 && g.P95 <= g.P99, "%+v", g)
	})
	t.Run("burndown", func(t *testing.T) {
		r, _ := runBench(t, addr, "--flow", flow, "--burndown", "300", "--batch-size", "100")
		requireSane(t, r, 300)
		require.Nil(t, r.GatewayMS, "three batch calls are no measure of the gateway's window")
		// Held until all were queued: the burn-down starts from a full queue.
		require.LessOrEqual(t, r.Completed, 300)
		require.Positive(t, r.Completed)
	})
	t.Run("burndown through executors of concurrency 4", func(t *testing.T) {
		// The 8 slots' runs share 2 executor processes, 4 requests in flight on each.
		r, _ := runBench(t, addr, "--flow", noopFlowWith(t, "    concurrency: 4\n"), "--burndown", "300", "--batch-size", "100")
		requireSane(t, r, 300)
		require.Positive(t, r.Completed)
	})
	t.Run("burndown of an existing assistant", func(t *testing.T) {
		// Created by a first bench, then given a limit of its own.
		r, _ := runBench(t, addr, "--flow", flow, "--assistant-id", "warm", "--concurrency", "2", "--duration", "1s", "--max-runs", "20")
		requireSane(t, r, 0)
		cli := func(args ...string) string {
			var stdout, stderr bytes.Buffer
			code := Main(t.Context(), append([]string{"--addr", addr, "-o", "json"}, args...), Env{
				Stdin: strings.NewReader(""), Stdout: &stdout, Stderr: &stderr, Getenv: func(string) string { return "" },
			})
			require.Equal(t, ExitOK, code, "stderr: %s", stderr.String())
			return stdout.String()
		}
		get := func() map[string]any {
			var asst map[string]any
			require.NoError(t, json.Unmarshal([]byte(cli("assistants", "get", "warm")), &asst))
			return asst
		}
		cli("assistants", "update", "warm", "--concurrency-limit", "50")
		before := get()

		r, _ = runBench(t, addr, "--assistant", "warm", "--burndown", "300", "--batch-size", "100")
		requireSane(t, r, 300)
		require.LessOrEqual(t, r.Completed, 300, "counted from the release")
		require.Positive(t, r.Completed)
		after := get()
		require.EqualValues(t, 50, after["concurrencyLimit"], "the assistant got its own limit back: %v", after)
		version := func(a map[string]any) int {
			v, err := strconv.Atoi(fmt.Sprint(a["version"]))
			require.NoError(t, err, "version %v", a["version"])
			return v
		}
		require.Equal(t, version(before)+2, version(after), "two updates: held at a limit of 1, then released")
	})
}

// BenchmarkEndToEnd drives the in-process all-in-one with agentctl bench so that
// `go test -cpuprofile` sees the whole server path (gateway, store, scheduler, worker) under
// load; PostgreSQL and the executors are other processes. Size it with
// AGENTSERVER_BENCH_ARGS (default: 8 concurrent creators for 10 s):
//
//	go test -run '^$' -bench EndToEnd -benchtime 1x -cpuprofile cpu.out ./internal/cli/
func BenchmarkEndToEnd(b *testing.B) {
	addr := startAllInOne(b, "cpu=64")
	flow := noopFlow(b)
	args := strings.Fields(os.Getenv("AGENTSERVER_BENCH_ARGS"))
	if len(args) == 0 {
		args = []string{"--concurrency", "8", "--duration", "10s"}
	}
	for b.Loop() {
		r, out := runBench(b, addr, append([]string{"--flow", flow}, args...)...)
		b.Log(out)
		b.ReportMetric(r.ThroughputPerS, "runs/s")
		b.ReportMetric(r.EnqueueToStartMS.P99, "start-p99-ms")
	}
}
