package cli

import (
	"encoding/json"
	"fmt"
	"os"
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
)

func TestPercentileNearestRank(t *testing.T) {
	t.Parallel()
	hundred := make([]float64, 100)
	for i := range hundred {
		hundred[i] = float64(i + 1) // 1..100
	}
	for _, tc := range []struct {
		data []float64
		p    float64
		want float64
	}{
		{nil, 50, 0},
		{[]float64{7}, 50, 7},
		{[]float64{7}, 99, 7},
		{[]float64{1, 2}, 50, 1},
		{[]float64{1, 2}, 51, 2},
		{[]float64{1, 2, 3, 4}, 75, 3},
		{hundred, 50, 50},
		{hundred, 95, 95},
		{hundred, 99, 99},
		{hundred, 99.5, 100},
		{hundred, 100, 100},
		{hundred, 0, 1},
	} {
		require.Equal(t, tc.want, percentile(tc.data, tc.p), "p%g of %d samples", tc.p, len(tc.data))
	}
}

func TestSummarizeSortsAndCounts(t *testing.T) {
	t.Parallel()
	p := summarize([]float64{5, 1, 4, 2, 3})
	require.Equal(t, Percentiles{P50: 3, P95: 5, P99: 5, Max: 5, N: 5}, p)
	require.Equal(t, Percentiles{}, summarize(nil))
}

func TestRate(t *testing.T) {
	t.Parallel()
	require.Equal(t, 500.0, rate(1000, 2*time.Second))
	require.InDelta(t, 3333.33, rate(10, 3*time.Millisecond), 0.01)
	require.Zero(t, rate(10, 0))
	require.Zero(t, rate(10, -time.Second))
}

func TestLatenciesFromServerTimestamps(t *testing.T) {
	t.Parallel()
	t0 := time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)
	at := func(msec int) time.Time { return t0.Add(time.Duration(msec) * time.Millisecond) }
	runs := []runTimes{
		{create: at(0), start: at(2), end: at(5), succeeded: true},
		{create: at(10), start: at(14), end: at(20), succeeded: true},
		{create: at(20), start: at(21), end: at(1000), succeeded: true},
		{create: at(30), start: at(31), end: at(40)}, // failed: no completion
		{create: at(40)}, // never started
	}
	completed, window, toStart, toComplete := latencies(runs, time.Time{})
	require.Equal(t, 3, completed)
	require.Equal(t, time.Second, window, "first create_time to last end_time")
	require.Equal(t, Percentiles{P50: 1, P95: 4, P99: 4, Max: 4, N: 4}, toStart)
	require.Equal(t, Percentiles{P50: 10, P95: 980, P99: 980, Max: 980, N: 3}, toComplete)

	// A held burn-down counts from the release: runs that ended before it are left out of
	// the throughput (not of the latencies).
	completed, window, _, _ = latencies(runs, at(10))
	require.Equal(t, 2, completed)
	require.Equal(t, 990*time.Millisecond, window)
	require.InDelta(t, 2.0202, rate(completed, window), 0.0001)

	completed, window, _, _ = latencies(nil, time.Time{})
	require.Zero(t, completed)
	require.Zero(t, window)
}

func TestBenchReportJSONShape(t *testing.T) {
	t.Parallel()
	r := &BenchReport{
		Mode: benchModeConcurrency, Assistant: "assistants/a", Concurrency: 8, DurationS: 10,
		Created: 10, Completed: 9, ThroughputPerS: 900.5, WindowS: 0.01,
		EnqueueToStartMS:    Percentiles{P50: 1, P95: 2, P99: 3, Max: 4, N: 10},
		EnqueueToCompleteMS: Percentiles{P50: 5, P95: 6, P99: 7, Max: 8, N: 9},
		Errors:              1, ErrorKinds: map[string]int{"run ended FAILED": 1},
		CPU:     []ProcessCPU{{Name: "postgres", PIDs: []int{1, 2}, UserS: 1, SysS: 0.5, CPUS: 1.5, Cores: 0.15, PerRunUS: 166666}},
		Machine: &MachineCPU{CPUs: 2, BusyS: 1.8, BusyCores: 0.18, PerRunUS: 200000},
	}
	b, err := json.Marshal(r)
	require.NoError(t, err)
	var m map[string]any
	require.NoError(t, json.Unmarshal(b, &m))
	require.Equal(t, 900.5, m["throughput_per_s"])
	require.Equal(t, 1.0, m["errors"])
	for _, key := range []string{"enqueue_to_start_ms", "enqueue_to_complete_ms"} {
		p, ok := m[key].(map[string]any)
		require.True(t, ok, "%s is an object", key)
		for _, q := range []string{"p50", "p95", "p99", "max"} {
			require.IsType(t, 0.0, p[q], "%s.%s is a number", key, q)
		}
	}
	require.Equal(t, 7.0, m["enqueue_to_complete_ms"].(map[string]any)["p99"])
	cpu := m["cpu"].([]any)[0].(map[string]any)
	require.Equal(t, "postgres", cpu["name"])
	require.Equal(t, 1.5, cpu["cpu_s"])
	require.Equal(t, map[string]any{"cpus": 2.0, "busy_s": 1.8, "busy_cores": 0.18, "per_run_us": 200000.0}, m["machine"])
	require.NotContains(t, m, "gateway_ms", "absent when the gateway did not answer")

	r.GatewayMS = &GatewayLatency{WindowS: 60, P50: 0.5, P95: 1.5, P99: 2.25, N: 65536}
	b, err = json.Marshal(r)
	require.NoError(t, err)
	m = nil
	require.NoError(t, json.Unmarshal(b, &m))
	require.Equal(t, map[string]any{"window_s": 60.0, "p50": 0.5, "p95": 1.5, "p99": 2.25, "n": 65536.0}, m["gateway_ms"])
}

func TestParseProcStat(t *testing.T) {
	t.Parallel()
	line := "4242 (post gres) (x)) S 4100 4242 4242 0 -1 4194304 1289 0 0 0 250 75 12 3 20 0 1 0 8000 1000 200\n"
	st, err := parseProcStat([]byte(line))
	require.NoError(t, err)
	require.Equal(t, procStat{pid: 4242, ppid: 4100, comm: "post gres) (x)", utime: 250, stime: 75, cutime: 12, cstime: 3}, st)

	_, err = parseProcStat([]byte("12 (short) S 1 2"))
	require.Error(t, err)
	_, err = parseProcStat([]byte("no parens"))
	require.Error(t, err)
}

func TestCPUSamplerGroupsProcessTrees(t *testing.T) {
	t.Parallel()
	root := t.TempDir()
	write := func(pid, ppid int, comm string, utime, stime, cutime int) {
		dir := filepath.Join(root, itoa(pid))
		require.NoError(t, os.MkdirAll(dir, 0o755))
		line := itoa(pid) + " (" + comm + ") S " + itoa(ppid) + " 0 0 0 -1 0 0 0 0 0 " +
			itoa(utime) + " " + itoa(stime) + " " + itoa(cutime) + " 0 20 0 1 0 0 0 0\n"
		require.NoError(t, os.WriteFile(filepath.Join(dir, "stat"), []byte(line), 0o644))
	}
	write(1, 0, "init", 0, 0, 0)
	write(10, 1, "agentserver", 100, 50, 20) // 20 ticks of reaped executors
	write(11, 10, "noop", 7, 3, 0)           // an executor
	write(12, 10, "postgres", 200, 100, 0)   // agentserver dev's private postmaster
	write(13, 12, "postgres", 40, 10, 0)     // a backend
	write(20, 1, "bash", 1, 1, 0)
	write(30, 1, "agentctl", 5, 5, 0)

	// Exact run times where the kernel gives them: the executor ran 104 ms, more than
	// its whole ticks (10) say; the agentserver's main thread ran less than its ticks
	// (all threads) say, so its ticks count; the backend has none.
	schedstat := func(pid int, ns string) {
		require.NoError(t, os.WriteFile(filepath.Join(root, itoa(pid), "schedstat"), []byte(ns+" 900 7\n"), 0o644))
	}
	schedstat(10, "500000000")
	schedstat(11, "104000000")
	schedstat(12, "3000000000")
	schedstat(30, "100000000")

	s := &cpuSampler{procRoot: root, self: 30}
	got, err := s.sample()
	require.NoError(t, err)
	require.Equal(t, map[string]cpuTimes{
		// 150 ticks of its own, 20 ticks of reaped executors.
		"agentserver":          {user: 120, sys: 50, cpuNS: 1_700_000_000, pids: []int{10}},
		"agentserver-children": {user: 7, sys: 3, cpuNS: 104_000_000, pids: []int{11}},
		// The postmaster's 3 s (more than its 300 ticks), the backend's 50 ticks.
		"postgres": {user: 240, sys: 110, cpuNS: 3_500_000_000, pids: []int{12, 13}},
		"agentctl": {user: 5, sys: 5, cpuNS: 100_000_000, pids: []int{30}},
	}, sortPIDs(got))

	// Explicit roots: only those groups, named as given.
	s.roots = map[string][]int{"server": {10}}
	got, err = s.sample()
	require.NoError(t, err)
	require.Equal(t, []int{10}, got["server"].pids)
	require.Equal(t, []int{11}, got["server-children"].pids)
	require.Equal(t, uint64(240), got["postgres"].user)

	// Usage between two samples, per group: CPU from cpuNS, user and sys from the ticks.
	before := map[string]cpuTimes{"postgres": {user: 100, sys: 10, cpuNS: 1_100_000_000}}
	after := map[string]cpuTimes{
		"postgres": {user: 300, sys: 110, cpuNS: 4_100_000_000, pids: []int{13, 12}},
		// New in the window (counted from zero), and ran less than a tick.
		"fresh": {cpuNS: 3_000_000, pids: []int{40}},
	}
	usage := cpuUsage(before, after, 2, 1000)
	require.Equal(t, []ProcessCPU{
		{Name: "fresh", PIDs: []int{40}, CPUS: 0.003, Cores: 0.0015, PerRunUS: 3},
		{Name: "postgres", PIDs: []int{12, 13}, UserS: 2, SysS: 1, CPUS: 3, Cores: 1.5, PerRunUS: 3000},
	}, usage)
}

// The whole machine's CPU comes from /proc/stat's first line (busy: user, nice, system,
// irq, softirq, steal; not idle or iowait, nor guest, which user includes), over the
// window and per run; the CPUs are its cpuN lines.
func TestMachineCPUFromProcStat(t *testing.T) {
	t.Parallel()
	root := t.TempDir()
	stat := func(user, nice, system, idle, iowait, irq, softirq, steal int) {
		content := fmt.Sprintf("cpu  %d %d %d %d %d %d %d %d 400 0\n", user, nice, system, idle, iowait, irq, softirq, steal) +
			"cpu0 1 0 1 1 0 0 0 0 0 0\ncpu1 1 0 1 1 0 0 0 0 0 0\nintr 12345 0 0\nctxt 999\n"
		require.NoError(t, os.WriteFile(filepath.Join(root, "stat"), []byte(content), 0o644))
	}
	s := &cpuSampler{procRoot: root}
	stat(1000, 10, 300, 5000, 40, 5, 25, 2)
	before, err := s.machine()
	require.NoError(t, err)
	require.Equal(t, machineTimes{busy: 1342, idle: 5040, cpus: 2}, before)
	// 3 s later: 480 more busy ticks of 600 (2 CPUs), 60 of them system, 20 softirq.
	stat(1400, 10, 360, 5100, 60, 5, 45, 2)
	after, err := s.machine()
	require.NoError(t, err)
	m := machineUsage(before, after, 3, 10_000)
	require.Equal(t, 2, m.CPUs)
	require.InDelta(t, 4.8, m.BusyS, 1e-9)
	require.InDelta(t, 1.6, m.BusyCores, 1e-9)
	require.InDelta(t, 480, m.PerRunUS, 1e-9)

	for _, bad := range []string{"intr 1 2\n", "cpu  1 2 3\n", "cpu  1 2 x 4 5 6 7 8\n"} {
		_, err := parseMachineStat([]byte(bad))
		require.Error(t, err, "%q", bad)
	}
}

func sortPIDs(m map[string]cpuTimes) map[string]cpuTimes {
	for k, v := range m {
		slices.Sort(v.pids)
		m[k] = v
	}
	return m
}

func itoa(i int) string { return strconv.Itoa(i) }

func TestParsePIDs(t *testing.T) {
	t.Parallel()
	got, err := parsePIDs("agentserver=10, postgres=12,postgres=13")
	require.NoError(t, err)
	require.Equal(t, map[string][]int{"agentserver": {10}, "postgres": {12, 13}}, got)
	got, err = parsePIDs("")
	require.NoError(t, err)
	require.Nil(t, got)
	for _, bad := range []string{"agentserver", "=1", "x=0", "x=abc"} {
		_, err := parsePIDs(bad)
		require.Error(t, err, bad)
	}
}

func TestBenchUsageErrors(t *testing.T) {
	t.Parallel()
	h := newHarness(t, &fakeAPI{})
	flow := writeFile(t, "flow.yaml", testFlow)
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"bench", "--flow", flow}, "exactly one of --rate, --concurrency or --burndown"},
		{[]string{"bench", "--flow", flow, "--rate", "10", "--concurrency", "2"}, "exactly one of"},
		{[]string{"bench", "--rate", "10"}, "give --assistant"},
		{[]string{"bench", "--flow", flow, "--assistant", "a", "--rate", "10"}, "not both"},
		{[]string{"bench", "--flow", flow, "--rate", "0"}, "--rate must be positive"},
		{[]string{"bench", "--flow", flow, "--burndown", "10", "--batch-size", "1001"}, "--batch-size must be between 1 and 1000"},
		{[]string{"bench", "--flow", flow, "--concurrency", "2", "--duration", "0s"}, "--duration must be positive"},
		{[]string{"bench", "--flow", flow, "--concurrency", "2", "--pids", "x"}, "--pids"},
		{[]string{"bench", "--flow", flow, "--concurrency", "2", "--threads", "-1"}, "--threads must not be negative"},
		{[]string{"bench", "--flow", flow, "--concurrency", "2", "--input", "[1]"}, "--input"},
	} {
		res := h.run(tc.args...)
		require.Equal(t, ExitUsage, res.code, "%v: %s", tc.args, res.stderr)
		require.Contains(t, res.stderr, tc.want, tc.args)
	}
	require.Empty(t, h.fake.methods(), "nothing is sent on a usage error")
}

func TestBenchReportText(t *testing.T) {
	t.Parallel()
	r := &BenchReport{
		Mode: benchModeRate, Assistant: "assistants/a", OfferedRatePerS: 500, DurationS: 20,
		Created: 10000, Completed: 9999, ThroughputPerS: 499.95, WindowS: 20.0004, CreateRatePerS: 500,
		EnqueueToStartMS:    Percentiles{P50: 2.5, P95: 4, P99: 6.25, Max: 30, N: 10000},
		EnqueueToCompleteMS: Percentiles{P50: 5, P95: 8, P99: 12, Max: 40, N: 9999},
		Errors:              1, ErrorKinds: map[string]int{"run ended FAILED": 1},
		CPU:     []ProcessCPU{{Name: "postgres", PIDs: []int{1, 2}, CPUS: 3, Cores: 0.15, PerRunUS: 300}},
		Machine: &MachineCPU{CPUs: 2, BusyS: 8, BusyCores: 0.4, PerRunUS: 800},
	}
	var out strings.Builder
	require.NoError(t, r.printText(&out))
	require.NotContains(t, out.String(), "gateway handler")
	r.GatewayMS = &GatewayLatency{WindowS: 60, P50: 0.5, P95: 1.5, P99: 2.25, N: 10003}
	out.Reset()
	require.NoError(t, r.printText(&out))
	for _, want := range []string{
		"workload:    500 runs/s offered for 20s, one CreateRun per run\n",
		"gateway handler   0.50  1.50  2.25   -      10003\n",
		"runs:        10000 created, 9999 completed, 1 errors\n",
		"throughput:  499.9 runs/s over 20s (server clock)\n",
		"enqueue→start     2.50  4.00  6.25   30.00  10000\n",
		"postgres          3.00     0.15   300 µs   2\n",
		"machine (2 CPUs)  8.00     0.40   800 µs   all, and the kernel\n",
		"       1  run ended FAILED\n",
	} {
		require.Contains(t, out.String(), want)
	}
}

// TestBenchTrackPacesItsReads: while runs are created back to back and each settles at once,
// the tracker follows at most one run per benchTrackEvery, instead of one WaitRun (and the
// server's reads behind it) per run created.
func TestBenchTrackPacesItsReads(t *testing.T) {
	f := &fakeAPI{waits: []*agentserverv1.Run{{State: agentserverv1.Run_SUCCEEDED}}}
	conn, err := grpc.NewClient(startFake(t, f), grpc.WithTransportCredentials(insecure.NewCredentials()))
	require.NoError(t, err)
	t.Cleanup(func() { conn.Close() })
	b := &benchRun{a: &app{cfg: Config{Timeout: time.Minute}}, runs: agentserverv1.NewRunServiceClient(conn), errKinds: map[string]int{}}

	createsDone := make(chan struct{})
	tracked := make(chan struct{})
	go func() {
		defer close(tracked)
		b.track(t.Context(), createsDone)
	}()
	const window = 5 * benchTrackEvery
	start := time.Now()
	for i := 0; time.Since(start) < window; i++ {
		b.mu.Lock()
		b.created = append(b.created, createdRun{name: "runs/r" + strconv.Itoa(i)})
		b.mu.Unlock()
		time.Sleep(100 * time.Microsecond)
	}
	close(createsDone)
	<-tracked

	waits := len(f.requests("WaitRun"))
	elapsed := time.Since(start)
	require.GreaterOrEqual(t, waits, 2, "the tracker follows the newest run")
	// One per benchTrackEvery, plus the first and the last; the runs created meanwhile
	// (thousands) are not followed one by one.
	require.LessOrEqual(t, waits, int(elapsed/benchTrackEvery)+2, "%d WaitRun calls in %v", waits, elapsed)
	require.Equal(t, int64(b.createdCount()), b.finished.Load(), "the newest run settled: every run counts as finished")
}
