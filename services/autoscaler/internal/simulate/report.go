package simulate

import (
	"bytes"
	"encoding/csv"
	"encoding/xml"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/agentserver/agentserver/services/autoscaler/internal/policy"
)

// Report file names WriteReport creates.
const (
	// SummaryFile is the text summary.
	SummaryFile = "summary.txt"
	// PlotFile is the SVG plot.
	PlotFile = "report.svg"
	// SeriesFile holds every sample as CSV.
	SeriesFile = "series.csv"
	// DecisionsFile holds every decision as CSV.
	DecisionsFile = "decisions.csv"
)

// Labels name the inputs in a report's header.
type Labels struct {
	// Trace is the trace file's name.
	Trace string
	// Policy is the policy file's name.
	Policy string
}

// WriteReport writes the summary, the plot and the CSV files into dir (created if
// needed) and returns their paths.
func (r *Result) WriteReport(dir string, l Labels) ([]string, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("report directory: %w", err)
	}
	files := []struct {
		name string
		data []byte
	}{
		{SummaryFile, []byte(r.Summary(l))},
		{PlotFile, r.SVG(l)},
		{SeriesFile, r.SeriesCSV()},
		{DecisionsFile, r.DecisionsCSV()},
	}
	var paths []string
	for _, f := range files {
		p := filepath.Join(dir, f.name)
		if err := os.WriteFile(p, f.data, 0o644); err != nil {
			return nil, fmt.Errorf("writing report: %w", err)
		}
		paths = append(paths, p)
	}
	return paths, nil
}

// dur formats a duration rounded to a tenth of a second.
func dur(d time.Duration) string { return d.Round(100 * time.Millisecond).String() }

func secs(d time.Duration) string { return strconv.FormatFloat(d.Seconds(), 'f', 1, 64) }

func f2(v float64) string { return strconv.FormatFloat(v, 'f', 2, 64) }

// Summary renders the text summary.
func (r *Result) Summary(l Labels) string {
	var b strings.Builder
	o := r.Options
	fmt.Fprintf(&b, "autoscaler simulation report\n\n")
	fmt.Fprintf(&b, "trace     %s: %d rows, %d runs, last arrival at %s\n", l.Trace, r.Rows, r.Runs, dur(r.LastArrival))
	fmt.Fprintf(&b, "policy    %s: evaluated every %s\n", l.Policy, r.Policy.Interval)
	fmt.Fprintf(&b, "model     seed %d; run durations ±%s%%; worker start-up %s; FIFO queue per slot type;\n",
		o.Seed, strconv.FormatFloat(*o.Jitter*100, 'f', -1, 64), *o.StartupDelay)
	fmt.Fprintf(&b, "          runs go to the oldest ready worker with a free slot; scale-down drains the newest\n")
	fmt.Fprintf(&b, "          workers (no new work, running runs finish); pools start at min_replicas, ready\n")
	if r.Policy.Gateway != nil {
		fmt.Fprintf(&b, "          gateways are not simulated (a trace carries no request latency)\n")
	}
	fmt.Fprintf(&b, "simulated %s; ", dur(r.End))
	if r.Settled {
		fmt.Fprintf(&b, "settled: every run finished and every pool is back at min_replicas\n")
	} else {
		fmt.Fprintf(&b, "NOT settled within %s of the last arrival\n", o.MaxTail)
	}
	for _, p := range r.Pools {
		c := p.Config
		fmt.Fprintf(&b, "\npool %s (slot type %s, slots per worker %d, replicas %d..%d)\n",
			c.Name, c.SlotType, c.SlotsPerWorker, c.MinReplicas, c.MaxReplicas)
		fmt.Fprintf(&b, "  runs               %d arrived, %d completed\n", p.Runs, p.Completed)
		if p.PeakQueue > 0 {
			fmt.Fprintf(&b, "  peak queue         %d runs at %s\n", p.PeakQueue, dur(p.PeakQueueAt))
		} else {
			fmt.Fprintf(&b, "  peak queue         0 runs\n")
		}
		fmt.Fprintf(&b, "  queueing latency   p50 %s  p95 %s  p99 %s  max %s\n", dur(p.P50), dur(p.P95), dur(p.P99), dur(p.Max))
		fmt.Fprintf(&b, "  replicas           peak %d, final %d\n", p.PeakReplicas, p.FinalReplicas)
		fmt.Fprintf(&b, "  replica-seconds    %s (%s replica-hours)\n",
			strconv.FormatFloat(p.ReplicaSeconds, 'f', 1, 64), f2(p.ReplicaSeconds/3600))
		fmt.Fprintf(&b, "  slot utilisation   %s\n", f2(p.Utilization))
		var up, down int
		byRule := map[policy.Rule]int{}
		for _, d := range r.Decisions {
			if d.Pool != c.Name {
				continue
			}
			if d.Up() {
				up++
			} else {
				down++
			}
			byRule[d.Rule]++
		}
		rules := make([]string, 0, len(byRule))
		for rule, n := range byRule {
			rules = append(rules, fmt.Sprintf("%s %d", rule, n))
		}
		sort.Strings(rules)
		fmt.Fprintf(&b, "  decisions          %d (up %d, down %d)", up+down, up, down)
		if len(rules) > 0 {
			fmt.Fprintf(&b, ": %s", strings.Join(rules, ", "))
		}
		b.WriteString("\n")
	}
	fmt.Fprintf(&b, "\ndecisions (%d)\n", len(r.Decisions))
	for _, d := range r.Decisions {
		fmt.Fprintf(&b, "  %9s  %-10s %-26s %3d -> %-3d %s\n", dur(d.Time.Sub(Epoch)), d.Pool, d.Rule, d.From, d.To, d.Reason)
	}
	return b.String()
}

// SeriesCSV renders every sample: one row per pool per evaluation.
func (r *Result) SeriesCSV() []byte {
	var b bytes.Buffer
	w := csv.NewWriter(&b)
	_ = w.Write([]string{"time_s", "pool", "replicas", "ready", "draining", "queue_depth", "utilization", "latency_p95_s"})
	if len(r.Pools) > 0 {
		for i := range r.Pools[0].Samples {
			for _, p := range r.Pools {
				s := p.Samples[i]
				_ = w.Write([]string{secs(s.At), p.Config.Name, strconv.Itoa(s.Replicas), strconv.Itoa(s.Ready),
					strconv.Itoa(s.Draining), strconv.Itoa(s.Queue), strconv.FormatFloat(s.Utilization, 'f', 3, 64),
					secs(s.LatencyP95)})
			}
		}
	}
	w.Flush()
	return b.Bytes()
}

// DecisionsCSV renders every decision.
func (r *Result) DecisionsCSV() []byte {
	var b bytes.Buffer
	w := csv.NewWriter(&b)
	_ = w.Write([]string{"time_s", "pool", "rule", "from", "to", "queue_depth", "utilization", "reason"})
	for _, d := range r.Decisions {
		_ = w.Write([]string{secs(d.Time.Sub(Epoch)), d.Pool, string(d.Rule), strconv.Itoa(d.From), strconv.Itoa(d.To),
			strconv.Itoa(d.Inputs.QueueDepth), strconv.FormatFloat(d.Inputs.Utilization, 'f', 3, 64), d.Reason})
	}
	w.Flush()
	return b.Bytes()
}

// palette colours pools in plots, in policy order.
var palette = []string{"#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf"}

// The plot's geometry, in SVG user units.
const (
	plotWidth  = 1000.0
	plotLeft   = 70.0
	plotRight  = 30.0
	plotTop    = 78.0
	panelH     = 150.0
	panelGap   = 50.0
	plotBottom = 40.0
)

type svgWriter struct {
	b      bytes.Buffer
	x0, x1 float64 // plot area, user units
	tEnd   float64 // seconds at x1
}

func (w *svgWriter) printf(format string, args ...any) { fmt.Fprintf(&w.b, format, args...) }

func num(v float64) string { return strconv.FormatFloat(v, 'f', 1, 64) }

func esc(s string) string {
	var b strings.Builder
	_ = xml.EscapeText(&b, []byte(s))
	return b.String()
}

func (w *svgWriter) x(t time.Duration) float64 {
	if w.tEnd <= 0 {
		return w.x0
	}
	return w.x0 + (w.x1-w.x0)*t.Seconds()/w.tEnd
}

// niceCeil rounds v up to 1, 2, 2.5 or 5 times a power of ten; at least min.
func niceCeil(v, min float64) float64 {
	if v <= min {
		return min
	}
	p := math.Pow(10, math.Floor(math.Log10(v)))
	for _, m := range []float64{1, 2, 2.5, 5, 10} {
		if m*p >= v-1e-9 {
			return m * p
		}
	}
	return 10 * p
}

// timeStep picks a tick spacing giving at most ten ticks over end.
func timeStep(end time.Duration) time.Duration {
	for _, s := range []time.Duration{10 * time.Second, 30 * time.Second, time.Minute, 2 * time.Minute,
		5 * time.Minute, 10 * time.Minute, 15 * time.Minute, 30 * time.Minute, time.Hour, 2 * time.Hour,
		6 * time.Hour, 12 * time.Hour, 24 * time.Hour} {
		if end/s <= 10 {
			return s
		}
	}
	return 7 * 24 * time.Hour
}

func tickLabel(d time.Duration) string {
	h, m, sec := int(d/time.Hour), int(d%time.Hour/time.Minute), int(d%time.Minute/time.Second)
	var b strings.Builder
	if h > 0 {
		fmt.Fprintf(&b, "%dh", h)
	}
	if m > 0 {
		fmt.Fprintf(&b, "%dm", m)
	}
	if sec > 0 || b.Len() == 0 {
		fmt.Fprintf(&b, "%ds", sec)
	}
	if d == 0 {
		return "0"
	}
	return b.String()
}

// countCeil is niceCeil for counts: four grid intervals of whole numbers.
func countCeil(v float64) float64 {
	c := niceCeil(v, 4)
	if math.Mod(c, 4) != 0 {
		c = 4 * math.Ceil(c/4)
	}
	return c
}

type panel struct {
	title string
	yMax  float64
	value func(Sample) float64
	// dashed draws ready workers under replicas.
	dashed func(Sample) float64
	// marks draws threshold lines.
	marks []float64
	// percent formats y labels as fractions.
	fraction bool
}

// SVG renders the plot: replicas (and ready workers), queue depth, utilisation and
// queueing latency p95 over time, one colour per pool, decisions marked.
func (r *Result) SVG(l Labels) []byte {
	w := &svgWriter{x0: plotLeft, x1: plotWidth - plotRight, tEnd: r.End.Seconds()}
	var maxRep, maxQ, maxLat float64
	thresholds := map[float64]bool{}
	for _, p := range r.Pools {
		maxRep = math.Max(maxRep, float64(p.Config.MaxReplicas))
		thresholds[p.Config.ScaleUp.Utilization] = true
		thresholds[p.Config.ScaleDown.Utilization] = true
		for _, s := range p.Samples {
			maxQ = math.Max(maxQ, float64(s.Queue))
			maxLat = math.Max(maxLat, s.LatencyP95.Seconds())
		}
	}
	marks := make([]float64, 0, len(thresholds))
	for v := range thresholds {
		marks = append(marks, v)
	}
	sort.Float64s(marks)
	panels := []panel{
		{title: "Replicas (solid; ▲▼ decisions) and ready workers (dotted)", yMax: countCeil(maxRep),
			value: func(s Sample) float64 { return float64(s.Replicas) }, dashed: func(s Sample) float64 { return float64(s.Ready) }},
		{title: "Queue depth (runs)", yMax: countCeil(maxQ), value: func(s Sample) float64 { return float64(s.Queue) }},
		{title: "Slot utilisation of ready workers (dashed: policy thresholds)", yMax: 1,
			value: func(s Sample) float64 { return s.Utilization }, marks: marks, fraction: true},
		{title: "Queueing latency p95 (seconds)", yMax: niceCeil(maxLat, 1),
			value: func(s Sample) float64 { return s.LatencyP95.Seconds() }},
	}
	height := plotTop + float64(len(panels))*(panelH+panelGap) - panelGap + plotBottom
	w.printf(`<svg xmlns="http://www.w3.org/2000/svg" width="%s" height="%s" viewBox="0 0 %s %s" font-family="sans-serif" font-size="11">`+"\n",
		num(plotWidth), num(height), num(plotWidth), num(height))
	w.printf(`<rect width="100%%" height="100%%" fill="white"/>` + "\n")
	w.printf(`<text x="%s" y="20" font-size="14" font-weight="bold">%s</text>`+"\n", num(plotLeft),
		esc(fmt.Sprintf("autoscaler simulate: %s with %s (seed %d)", l.Trace, l.Policy, r.Options.Seed)))
	lx := plotLeft
	for i, p := range r.Pools {
		c := palette[i%len(palette)]
		w.printf(`<rect x="%s" y="32" width="10" height="10" fill="%s"/><text x="%s" y="41">%s</text>`+"\n",
			num(lx), c, num(lx+14), esc("pool "+p.Config.Name))
		lx += 24 + 7*float64(len(p.Config.Name)+5)
	}
	for i, pn := range panels {
		top := plotTop + float64(i)*(panelH+panelGap)
		w.panel(r, pn, top, i == 0)
	}
	// Time axis under the last panel.
	bottom := plotTop + float64(len(panels))*(panelH+panelGap) - panelGap
	w.printf(`<text x="%s" y="%s" text-anchor="middle">time since the start of the trace</text>`+"\n",
		num((w.x0+w.x1)/2), num(bottom+32))
	w.printf("</svg>\n")
	return w.b.Bytes()
}

func (w *svgWriter) panel(r *Result, pn panel, top float64, decisions bool) {
	bottom := top + panelH
	y := func(v float64) float64 { return bottom - panelH*math.Min(v, pn.yMax)/pn.yMax }
	w.printf(`<text x="%s" y="%s" font-weight="bold">%s</text>`+"\n", num(w.x0), num(top-8), esc(pn.title))
	w.printf(`<rect x="%s" y="%s" width="%s" height="%s" fill="none" stroke="#999"/>`+"\n",
		num(w.x0), num(top), num(w.x1-w.x0), num(panelH))
	// Y grid and labels: four intervals.
	for k := 0; k <= 4; k++ {
		v := pn.yMax * float64(k) / 4
		yy := y(v)
		label := strconv.FormatFloat(v, 'f', -1, 64)
		if pn.fraction {
			label = f2(v)
		}
		if k > 0 && k < 4 {
			w.printf(`<line x1="%s" y1="%s" x2="%s" y2="%s" stroke="#eee"/>`+"\n", num(w.x0), num(yy), num(w.x1), num(yy))
		}
		w.printf(`<text x="%s" y="%s" text-anchor="end">%s</text>`+"\n", num(w.x0-6), num(yy+4), label)
	}
	// X ticks.
	step := timeStep(r.End)
	for t := time.Duration(0); t <= r.End; t += step {
		xx := w.x(t)
		w.printf(`<line x1="%s" y1="%s" x2="%s" y2="%s" stroke="#999"/>`+"\n", num(xx), num(bottom), num(xx), num(bottom+4))
		w.printf(`<text x="%s" y="%s" text-anchor="middle">%s</text>`+"\n", num(xx), num(bottom+16), tickLabel(t))
	}
	for _, m := range pn.marks {
		w.printf(`<line x1="%s" y1="%s" x2="%s" y2="%s" stroke="#888" stroke-dasharray="6,4"/>`+"\n",
			num(w.x0), num(y(m)), num(w.x1), num(y(m)))
	}
	for i, p := range r.Pools {
		c := palette[i%len(palette)]
		if pn.dashed != nil {
			w.polyline(p.Samples, r.End, pn.dashed, y, c, `stroke-dasharray="2,3" stroke-width="1"`)
		}
		w.polyline(p.Samples, r.End, pn.value, y, c, `stroke-width="1.6"`)
		if !decisions {
			continue
		}
		for _, d := range r.Decisions {
			if d.Pool != p.Config.Name {
				continue
			}
			xx, yy := w.x(d.Time.Sub(Epoch)), y(float64(d.To))
			if d.Up() {
				w.printf(`<path d="M%s %sl-4 7h8z" fill="%s"><title>%s</title></path>`+"\n", num(xx), num(yy-3), c, esc(d.Reason))
			} else {
				w.printf(`<path d="M%s %sl-4 -7h8z" fill="%s"><title>%s</title></path>`+"\n", num(xx), num(yy+3), c, esc(d.Reason))
			}
		}
	}
}

// polyline draws samples as steps: a value holds until the next sample.
func (w *svgWriter) polyline(samples []Sample, end time.Duration, value func(Sample) float64, y func(float64) float64, colour, attrs string) {
	if len(samples) == 0 {
		return
	}
	var pts strings.Builder
	for i, s := range samples {
		next := end
		if i+1 < len(samples) {
			next = samples[i+1].At
		}
		yy := num(y(value(s)))
		fmt.Fprintf(&pts, "%s,%s %s,%s ", num(w.x(s.At)), yy, num(w.x(next)), yy)
	}
	w.printf(`<polyline fill="none" stroke="%s" %s points="%s"/>`+"\n", colour, attrs, strings.TrimSpace(pts.String()))
}
