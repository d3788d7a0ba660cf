// Package api owns the autoscaler's HTTP surface: its decisions and status as JSON
// (GET /v1/decisions, GET /v1/status; the JSON shapes of the future ListDecisions and
// GetStatus RPCs), Prometheus metrics of desired and current replicas (GET /metrics) and
// liveness (GET /healthz).
//
// It only reads the controller's state; it must never change replicas or the policy.
package api

import (
	"encoding/json"
	"fmt"
	"net/http"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/agentserver/agentserver/services/autoscaler/internal/controller"
	"github.com/agentserver/agentserver/services/autoscaler/internal/policy"
)

// State is what the API serves; *controller.Controller implements it.
type State interface {
	// Decisions returns the recorded decisions, oldest first.
	Decisions() []controller.Record
	// Status returns the current state of every pool.
	Status() controller.Status
}

// Decision is the JSON form of a recorded decision.
type Decision struct {
	// ID numbers decisions from 1.
	ID uint64 `json:"id"`
	// Time the decision was made (RFC 3339).
	Time time.Time `json:"time"`
	// Pool scaled.
	Pool string `json:"pool"`
	// Rule that fired.
	Rule string `json:"rule"`
	// From replicas.
	From int `json:"from"`
	// To replicas.
	To int `json:"to"`
	// Reason for people.
	Reason string `json:"reason"`
	// Inputs the rule saw.
	Inputs Inputs `json:"inputs"`
	// Outcome: applying, applied or failed.
	Outcome string `json:"outcome"`
	// Error of a failed decision.
	Error string `json:"error,omitempty"`
	// Finished is when the driver returned.
	Finished *time.Time `json:"finished,omitempty"`
}

// Inputs is the JSON form of policy.Inputs.
type Inputs struct {
	// QueueDepth observed.
	QueueDepth int `json:"queue_depth"`
	// SlotsTotal observed.
	SlotsTotal int `json:"slots_total"`
	// SlotsUsed observed.
	SlotsUsed int `json:"slots_used"`
	// Workers observed.
	Workers int `json:"workers"`
	// Ready observed.
	Ready int `json:"ready"`
	// Draining observed.
	Draining int `json:"draining"`
	// Replicas the driver reported.
	Replicas int `json:"replicas"`
	// Starting replicas (not registered yet).
	Starting int `json:"starting"`
	// Utilization derived; absent when unknown.
	Utilization *float64 `json:"utilization,omitempty"`
	// LatencyP95MS of the gateways, in milliseconds (gateway decisions).
	LatencyP95MS *float64 `json:"latency_p95_ms,omitempty"`
}

// PoolStatus is the JSON form of controller.PoolStatus.
type PoolStatus struct {
	// Pool name.
	Pool string `json:"pool"`
	// Gateway is true for the gateways.
	Gateway bool `json:"gateway,omitempty"`
	// MinReplicas of the policy.
	MinReplicas int `json:"min_replicas"`
	// MaxReplicas of the policy.
	MaxReplicas int `json:"max_replicas"`
	// Current replicas at the last evaluation.
	Current int `json:"current"`
	// Desired replicas.
	Desired int `json:"desired"`
	// Scaling while a decision is applied.
	Scaling bool `json:"scaling"`
	// Observed is false when the last evaluation had no data.
	Observed bool `json:"observed"`
	// Error says why there was no data.
	Error string `json:"error,omitempty"`
	// QueueDepth last observed.
	QueueDepth int `json:"queue_depth"`
	// SlotsTotal last observed.
	SlotsTotal int `json:"slots_total"`
	// SlotsUsed last observed.
	SlotsUsed int `json:"slots_used"`
	// Ready workers last observed.
	Ready int `json:"ready"`
	// Draining workers last observed.
	Draining int `json:"draining"`
	// LatencyP95MS of the gateways.
	LatencyP95MS *float64 `json:"latency_p95_ms,omitempty"`
	// LastDecision of the pool.
	LastDecision *Decision `json:"last_decision,omitempty"`
}

// Status is the JSON form of controller.Status.
type Status struct {
	// LastEvaluation time; absent before the first.
	LastEvaluation *time.Time `json:"last_evaluation,omitempty"`
	// Evaluations since start.
	Evaluations uint64 `json:"evaluations"`
	// Error of the last evaluation.
	Error string `json:"error,omitempty"`
	// Pools in policy order.
	Pools []PoolStatus `json:"pools"`
}

func ms(d time.Duration) *float64 {
	v := float64(d) / float64(time.Millisecond)
	return &v
}

func decisionJSON(r controller.Record) Decision {
	d := Decision{
		ID: r.ID, Time: r.Time, Pool: r.Pool, Rule: string(r.Rule), From: r.From, To: r.To, Reason: r.Reason,
		Outcome: string(r.Outcome), Error: r.Error,
		Inputs: Inputs{QueueDepth: r.Inputs.QueueDepth, SlotsTotal: r.Inputs.SlotsTotal, SlotsUsed: r.Inputs.SlotsUsed,
			Workers: r.Inputs.Workers, Ready: r.Inputs.Ready, Draining: r.Inputs.Draining,
			Replicas: r.Inputs.Replicas, Starting: r.Inputs.Starting},
	}
	if r.Inputs.HasUtilization {
		u := r.Inputs.Utilization
		d.Inputs.Utilization = &u
	}
	if r.Rule == policy.RuleLatencyP95 || r.Rule == policy.RuleLatencyP95LowSustained {
		d.Inputs.LatencyP95MS = ms(r.Inputs.LatencyP95)
	}
	if !r.Finished.IsZero() {
		f := r.Finished
		d.Finished = &f
	}
	return d
}

// maxPageSize bounds one page of decisions.
const maxPageSize = 1000

// Handler serves the API for s.
func Handler(s State) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		_, _ = w.Write([]byte("ok\n"))
	})
	mux.HandleFunc("GET /v1/decisions", func(w http.ResponseWriter, r *http.Request) {
		size := 100
		if v := r.URL.Query().Get("page_size"); v != "" {
			n, err := strconv.Atoi(v)
			if err != nil || n < 0 {
				writeError(w, http.StatusBadRequest, "page_size: must be a count >= 0 (default 100, at most 1000)")
				return
			}
			if n > 0 {
				size = min(n, maxPageSize)
			}
		}
		pool := r.URL.Query().Get("pool")
		all := s.Decisions()
		out := []Decision{}
		for i := len(all) - 1; i >= 0 && len(out) < size; i-- { // newest first
			if pool == "" || all[i].Pool == pool {
				out = append(out, decisionJSON(all[i]))
			}
		}
		writeJSON(w, map[string]any{"decisions": out})
	})
	mux.HandleFunc("GET /v1/status", func(w http.ResponseWriter, _ *http.Request) {
		writeJSON(w, statusJSON(s.Status()))
	})
	mux.HandleFunc("GET /metrics", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
		_, _ = w.Write([]byte(Metrics(s.Status())))
	})
	return mux
}

func statusJSON(st controller.Status) Status {
	out := Status{Evaluations: st.Evaluations, Error: st.Error, Pools: []PoolStatus{}}
	if !st.LastEvaluation.IsZero() {
		t := st.LastEvaluation
		out.LastEvaluation = &t
	}
	for _, p := range st.Pools {
		ps := PoolStatus{
			Pool: p.Pool, Gateway: p.Gateway, MinReplicas: p.MinReplicas, MaxReplicas: p.MaxReplicas,
			Current: p.Current, Desired: p.Desired, Scaling: p.Scaling, Observed: p.Observed, Error: p.Error,
			QueueDepth: p.Metrics.QueueDepth, SlotsTotal: p.Metrics.SlotsTotal, SlotsUsed: p.Metrics.SlotsUsed,
			Ready: p.Metrics.Ready, Draining: p.Metrics.Draining,
		}
		if p.Gateway {
			ps.LatencyP95MS = ms(p.LatencyP95)
		}
		if p.LastDecision != nil {
			d := decisionJSON(*p.LastDecision)
			ps.LastDecision = &d
		}
		out.Pools = append(out.Pools, ps)
	}
	return out
}

func writeJSON(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	enc := json.NewEncoder(w)
	enc.SetEscapeHTML(false) // reasons read "5 > 4"
	enc.SetIndent("", "  ")
	_ = enc.Encode(v)
}

func writeError(w http.ResponseWriter, code int, msg string) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	enc := json.NewEncoder(w)
	enc.SetEscapeHTML(false)
	_ = enc.Encode(map[string]any{"error": map[string]any{"code": code, "message": msg}})
}

// Metrics renders st in the Prometheus text format.
func Metrics(st controller.Status) string {
	var b strings.Builder
	gauge := func(name, help string, value func(controller.PoolStatus) float64) {
		fmt.Fprintf(&b, "# HELP %s %s\n# TYPE %s gauge\n", name, help, name)
		for _, p := range st.Pools {
			fmt.Fprintf(&b, "%s{pool=%q} %s\n", name, p.Pool, strconv.FormatFloat(value(p), 'g', -1, 64))
		}
	}
	b2f := func(v bool) float64 {
		if v {
			return 1
		}
		return 0
	}
	gauge("autoscaler_replicas_desired", "Replicas the autoscaler last asked for.", func(p controller.PoolStatus) float64 { return float64(p.Desired) })
	gauge("autoscaler_replicas_current", "Replicas the driver reported at the last evaluation.", func(p controller.PoolStatus) float64 { return float64(p.Current) })
	gauge("autoscaler_replicas_min", "min_replicas of the policy.", func(p controller.PoolStatus) float64 { return float64(p.MinReplicas) })
	gauge("autoscaler_replicas_max", "max_replicas of the policy.", func(p controller.PoolStatus) float64 { return float64(p.MaxReplicas) })
	gauge("autoscaler_scaling", "1 while a decision is being applied (e.g. a drain).", func(p controller.PoolStatus) float64 { return b2f(p.Scaling) })
	gauge("autoscaler_observed", "1 when the last evaluation had data for the pool.", func(p controller.PoolStatus) float64 { return b2f(p.Observed) })
	gauge("autoscaler_queue_depth", "Queued runs of the pool's slot type at the last evaluation.", func(p controller.PoolStatus) float64 { return float64(p.Metrics.QueueDepth) })

	fmt.Fprintf(&b, "# HELP autoscaler_decisions_total Decisions made, by pool and rule.\n# TYPE autoscaler_decisions_total counter\n")
	pools := make([]string, 0, len(st.DecisionCounts))
	for p := range st.DecisionCounts {
		pools = append(pools, p)
	}
	sort.Strings(pools)
	for _, p := range pools {
		rules := make([]string, 0, len(st.DecisionCounts[p]))
		for r := range st.DecisionCounts[p] {
			rules = append(rules, string(r))
		}
		sort.Strings(rules)
		for _, r := range rules {
			fmt.Fprintf(&b, "autoscaler_decisions_total{pool=%q,rule=%q} %d\n", p, r, st.DecisionCounts[p][policy.Rule(r)])
		}
	}
	fmt.Fprintf(&b, "# HELP autoscaler_evaluations_total Policy evaluations since start.\n# TYPE autoscaler_evaluations_total counter\nautoscaler_evaluations_total %d\n", st.Evaluations)
	if !st.LastEvaluation.IsZero() {
		fmt.Fprintf(&b, "# HELP autoscaler_last_evaluation_timestamp_seconds When the policy last ran.\n# TYPE autoscaler_last_evaluation_timestamp_seconds gauge\nautoscaler_last_evaluation_timestamp_seconds %d\n", st.LastEvaluation.Unix())
	}
	return b.String()
}
