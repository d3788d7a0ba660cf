package simulate

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/agentserver/agentserver/services/autoscaler/internal/policy"
)

func examplePolicy(t *testing.T) policy.Config {
	t.Helper()
	data, err := os.ReadFile(filepath.Join("..", "..", "examples", "policy.yaml"))
	require.NoError(t, err)
	cfg, err := policy.Parse(data)
	require.NoError(t, err)
	return cfg
}

func exampleTrace(t *testing.T) []Arrival {
	t.Helper()
	f, err := os.Open(filepath.Join("..", "..", "examples", "trace.csv"))
	require.NoError(t, err)
	defer f.Close()
	trace, err := ParseTrace(f)
	require.NoError(t, err)
	return trace
}

func readDir(t *testing.T, dir string) map[string][]byte {
	t.Helper()
	out := map[string][]byte{}
	for _, name := range []string{SummaryFile, PlotFile, SeriesFile, DecisionsFile} {
		data, err := os.ReadFile(filepath.Join(dir, name))
		require.NoError(t, err)
		out[name] = data
	}
	return out
}

func TestSameInputsGiveByteIdenticalReports(t *testing.T) {
	t.Parallel()
	cfg, trace := examplePolicy(t), exampleTrace(t)
	labels := Labels{Trace: "trace.csv", Policy: "policy.yaml"}
	report := func(seed uint64) map[string][]byte {
		res, err := Run(cfg, trace, Options{Seed: seed})
		require.NoError(t, err)
		dir := t.TempDir()
		_, err = res.WriteReport(dir, labels)
		require.NoError(t, err)
		return readDir(t, dir)
	}
	a, b := report(7), report(7)
	for name := range a {
		require.Equal(t, string(a[name]), string(b[name]), name)
	}
	// The seed matters (the durations' jitter), so determinism is not vacuous.
	require.NotEqual(t, string(a[SeriesFile]), string(report(8)[SeriesFile]))
}

// The scenario in the model: a burst of 500 runs against one worker grows the
// pool to its max, the queue drains, every run completes, and after the sustained idle
// window the pool returns to min without ever reversing direction in between.
func TestBurstScalesUpThenBackDownToMin(t *testing.T) {
	t.Parallel()
	cfg, err := policy.Parse([]byte(`
interval: 15s
pools:
  - name: cpu
    min_replicas: 1
    max_replicas: 10
    scale_up: {sustained: 30s, cooldown: 30s, step: 2, step_percent: 50}
    scale_down: {sustained: 5m, cooldown: 1m, step: 1, step_percent: 25}
`))
	require.NoError(t, err)
	trace, err := ParseTrace(strings.NewReader("time_s,runs,duration_s,slot_type\n0,500,30,cpu\n"))
	require.NoError(t, err)
	res, err := Run(cfg, trace, Options{Seed: 1})
	require.NoError(t, err)

	require.True(t, res.Settled)
	p := res.Pools[0]
	require.Equal(t, 500, p.Runs)
	require.Equal(t, 500, p.Completed)
	require.Equal(t, 10, p.PeakReplicas)
	require.Equal(t, 1, p.FinalReplicas)
	require.Greater(t, p.PeakQueue, 450)
	require.Positive(t, p.P95)

	// Up to max, then down to min: one change of direction, and every scale-down
	// happened after the queue had drained.
	var drained time.Duration
	for _, s := range p.Samples {
		if s.Queue == 0 && drained == 0 && s.At > 0 {
			drained = s.At
		}
	}
	require.NotZero(t, drained)
	reversals := 0
	for i, d := range res.Decisions {
		require.Equal(t, "cpu", d.Pool)
		if i > 0 && d.Up() != res.Decisions[i-1].Up() {
			reversals++
		}
		if d.Up() {
			require.Contains(t, []policy.Rule{policy.RuleQueueDepth, policy.RuleUtilizationHigh}, d.Rule)
		} else {
			require.Equal(t, policy.RuleUtilizationLowSustained, d.Rule)
			require.GreaterOrEqual(t, d.Time.Sub(Epoch), drained+5*time.Minute)
		}
	}
	require.Equal(t, 1, reversals)
	require.True(t, res.Decisions[0].Up())
	last := res.Decisions[len(res.Decisions)-1]
	require.Equal(t, 1, last.To)

	// Scaling helped: with one worker, 500 runs of ~30s on 4 slots take ~62 minutes.
	require.Less(t, p.Max, 15*time.Minute)

	summary := res.Summary(Labels{Trace: "burst.csv", Policy: "inline"})
	require.Contains(t, summary, "runs               500 arrived, 500 completed")
	require.Contains(t, summary, "replicas           peak 10, final 1")
	require.Contains(t, summary, "settled: every run finished")
}

func TestStartupDelayAndScaleFromZero(t *testing.T) {
	t.Parallel()
	cfg, err := policy.Parse([]byte(`
interval: 10s
pools:
  - name: gpu
    min_replicas: 0
    max_replicas: 2
    slots_per_worker: 1
    scale_up: {queue_depth: 3, utilization: 1, sustained: 0s, cooldown: 0s}
    scale_down: {sustained: 1m, cooldown: 0s}
`))
	require.NoError(t, err)
	trace, err := ParseTrace(strings.NewReader("time_s,runs,duration_s,slot_type\n5,1,60,gpu\n"))
	require.NoError(t, err)
	delay := 45 * time.Second
	jitter := 0.0
	res, err := Run(cfg, trace, Options{StartupDelay: &delay, Jitter: &jitter})
	require.NoError(t, err)
	require.True(t, res.Settled)
	p := res.Pools[0]
	require.Equal(t, 1, p.Completed)
	// Queued at 5.x s, seen at the 10s evaluation, worker ready 45s later.
	require.Greater(t, p.Max, 49*time.Second)
	require.Less(t, p.Max, 50*time.Second)
	require.Equal(t, 0, p.FinalReplicas)
	require.Len(t, res.Decisions, 2)
	require.Equal(t, policy.RuleQueueDepth, res.Decisions[0].Rule)
	require.Equal(t, policy.RuleUtilizationLowSustained, res.Decisions[1].Rule)
}

func TestExampleReportContents(t *testing.T) {
	t.Parallel()
	res, err := Run(examplePolicy(t), exampleTrace(t), Options{Seed: 1})
	require.NoError(t, err)
	require.True(t, res.Settled)
	l := Labels{Trace: "trace.csv", Policy: "policy.yaml"}
	summary := res.Summary(l)
	for _, want := range []string{"pool cpu (slot type cpu", "pool gpu (slot type gpu", "queueing latency   p50 ",
		"replica-seconds", "gateways are not simulated", "decisions ("} {
		require.Contains(t, summary, want)
	}
	svg := string(res.SVG(l))
	require.True(t, strings.HasPrefix(svg, `<svg xmlns="http://www.w3.org/2000/svg"`))
	require.True(t, strings.HasSuffix(svg, "</svg>\n"))
	require.Equal(t, 8, strings.Count(svg, "<polyline")-strings.Count(svg, "stroke-dasharray=\"2,3\""), "4 panels × 2 pools")
	require.Contains(t, svg, "Queue depth (runs)")
	series := strings.Split(strings.TrimSpace(string(res.SeriesCSV())), "\n")
	require.Equal(t, "time_s,pool,replicas,ready,draining,queue_depth,utilization,latency_p95_s", series[0])
	require.Len(t, series, 1+2*len(res.Pools[0].Samples))
	decisions := strings.Split(strings.TrimSpace(string(res.DecisionsCSV())), "\n")
	require.Len(t, decisions, 1+len(res.Decisions))
}

func TestParseTrace(t *testing.T) {
	t.Parallel()
	trace, err := ParseTrace(strings.NewReader("# comment\nslot_type, duration_s, time_s, runs, note\ncpu,30,10.5,3,x\ngpu,1.25,2,1,y\n"))
	require.NoError(t, err)
	require.Equal(t, []Arrival{
		{At: 2 * time.Second, Runs: 1, Duration: 1250 * time.Millisecond, SlotType: "gpu", Line: 4},
		{At: 10500 * time.Millisecond, Runs: 3, Duration: 30 * time.Second, SlotType: "cpu", Line: 3},
	}, trace)

	for _, tc := range []struct{ csv, want string }{
		{"", "trace: empty"},
		{"time_s,runs,slot_type\n", `header: missing column "duration_s"`},
		{"time_s,runs,duration_s,slot_type\n", "no rows after the header"},
		{"time_s,runs,duration_s,slot_type\nsoon,1,1,cpu\n", `trace line 2: time_s: want seconds, got "soon"`},
		{"time_s,runs,duration_s,slot_type\n-1,1,1,cpu\n", "trace line 2: time_s: must be >= 0 (got -1)"},
		{"time_s,runs,duration_s,slot_type\n1,1,0,cpu\n", "trace line 2: duration_s: must be > 0 (got 0)"},
		{"time_s,runs,duration_s,slot_type\n1,-2,1,cpu\n", `trace line 2: runs: want a count >= 0, got "-2"`},
		{"time_s,runs,duration_s,slot_type\n1,1,1,\n", "trace line 2: slot_type: required"},
		{"time_s,runs,duration_s,slot_type\n1,1,1\n", "trace line 2: slot_type: missing"},
		{"time_s,runs,duration_s,slot_type\n1,20000000,1,cpu\n", "more than 10000000 runs"},
	} {
		_, err := ParseTrace(strings.NewReader(tc.csv))
		require.ErrorContains(t, err, tc.want, tc.csv)
	}
}

func TestRunRejectsUnknownSlotTypeAndBadOptions(t *testing.T) {
	t.Parallel()
	cfg := examplePolicy(t)
	trace, err := ParseTrace(strings.NewReader("time_s,runs,duration_s,slot_type\n1,1,1,cpu\n2,1,1,tpu\n"))
	require.NoError(t, err)
	_, err = Run(cfg, trace, Options{})
	require.ErrorContains(t, err, `trace line 3: slot type "tpu" has no pool in the policy`)
	bad := 1.5
	_, err = Run(cfg, trace[:1], Options{Jitter: &bad})
	require.ErrorContains(t, err, "jitter must be in [0, 1)")
}

func TestPlotScales(t *testing.T) {
	t.Parallel()
	require.Equal(t, "0", tickLabel(0))
	require.Equal(t, "30s", tickLabel(30*time.Second))
	require.Equal(t, "10m", tickLabel(10*time.Minute))
	require.Equal(t, "1h30m", tickLabel(90*time.Minute))
	require.Equal(t, "2h", tickLabel(2*time.Hour))
	require.Equal(t, 12.0, countCeil(10))
	require.Equal(t, 4.0, countCeil(0))
	require.Equal(t, 500.0, countCeil(300))
	require.Equal(t, 1.0, niceCeil(0.3, 1))
	require.Equal(t, 2.5, niceCeil(2.1, 1))
	require.Equal(t, 10*time.Minute, timeStep(65*time.Minute))
}

func TestPercentile(t *testing.T) {
	t.Parallel()
	d := []time.Duration{5, 1, 4, 2, 3, 10, 9, 8, 7, 6}
	require.Equal(t, time.Duration(5), percentile(d, 50))
	require.Equal(t, time.Duration(10), percentile(d, 95))
	require.Equal(t, time.Duration(1), percentile(d, 1))
	require.Zero(t, percentile(nil, 95))
}
