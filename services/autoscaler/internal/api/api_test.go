package api

import (
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/agentserver/agentserver/services/autoscaler/internal/controller"
	"github.com/agentserver/agentserver/services/autoscaler/internal/policy"
)

var t0 = time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)

type state struct {
	records []controller.Record
	status  controller.Status
}

func (s state) Decisions() []controller.Record { return s.records }
func (s state) Status() controller.Status      { return s.status }

func fixture() state {
	r1 := controller.Record{ID: 1, Outcome: controller.OutcomeApplied, Finished: t0.Add(time.Second), Decision: policy.Decision{
		Time: t0, Pool: "cpu", Rule: policy.RuleQueueDepth, From: 1, To: 2, Reason: "queue depth 9 > 4 for 30s; +1",
		Inputs: policy.Inputs{QueueDepth: 9, SlotsTotal: 4, SlotsUsed: 4, Workers: 1, Ready: 1, Replicas: 1, Utilization: 1, HasUtilization: true},
	}}
	r2 := controller.Record{ID: 2, Outcome: controller.OutcomeApplying, Decision: policy.Decision{
		Time: t0.Add(time.Minute), Pool: "gateway", Rule: policy.RuleLatencyP95, From: 1, To: 2,
		Inputs: policy.Inputs{Replicas: 1, LatencyP95: 750 * time.Millisecond},
	}}
	r3 := controller.Record{ID: 3, Outcome: controller.OutcomeFailed, Error: "boom", Finished: t0.Add(3 * time.Minute), Decision: policy.Decision{
		Time: t0.Add(2 * time.Minute), Pool: "cpu", Rule: policy.RuleUtilizationLowSustained, From: 2, To: 1,
	}}
	return state{
		records: []controller.Record{r1, r2, r3},
		status: controller.Status{
			LastEvaluation: t0.Add(2 * time.Minute), Evaluations: 9,
			Pools: []controller.PoolStatus{
				{Pool: "cpu", MinReplicas: 1, MaxReplicas: 10, Current: 2, Desired: 1, Scaling: false, Observed: true,
					Metrics: policy.PoolMetrics{QueueDepth: 0, SlotsTotal: 8, SlotsUsed: 1, Ready: 2}, LastDecision: &r3},
				{Pool: "gateway", Gateway: true, MinReplicas: 1, MaxReplicas: 3, Current: 1, Desired: 2, Scaling: true,
					Observed: true, LatencyP95: 750 * time.Millisecond, LastDecision: &r2},
			},
			DecisionCounts: map[string]map[policy.Rule]uint64{
				"cpu":     {policy.RuleQueueDepth: 1, policy.RuleUtilizationLowSustained: 1},
				"gateway": {policy.RuleLatencyP95: 1},
			},
		},
	}
}

func get(t *testing.T, srv *httptest.Server, path string) (int, string) {
	t.Helper()
	req, err := http.NewRequestWithContext(t.Context(), http.MethodGet, srv.URL+path, nil)
	require.NoError(t, err)
	resp, err := srv.Client().Do(req)
	require.NoError(t, err)
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	return resp.StatusCode, string(body)
}

func TestDecisionsNewestFirstWithFilterAndPageSize(t *testing.T) {
	t.Parallel()
	srv := httptest.NewServer(Handler(fixture()))
	t.Cleanup(srv.Close)

	code, body := get(t, srv, "/v1/decisions")
	require.Equal(t, http.StatusOK, code)
	var got struct{ Decisions []Decision }
	require.NoError(t, json.Unmarshal([]byte(body), &got))
	require.Len(t, got.Decisions, 3)
	require.Equal(t, []uint64{3, 2, 1}, []uint64{got.Decisions[0].ID, got.Decisions[1].ID, got.Decisions[2].ID})
	require.Equal(t, "failed", got.Decisions[0].Outcome)
	require.Equal(t, "boom", got.Decisions[0].Error)
	require.Nil(t, got.Decisions[1].Finished)
	require.Equal(t, 750.0, *got.Decisions[1].Inputs.LatencyP95MS)
	require.Equal(t, 1.0, *got.Decisions[2].Inputs.Utilization)
	require.Nil(t, got.Decisions[0].Inputs.Utilization)
	require.Contains(t, body, `"rule": "queue_depth"`)
	require.Contains(t, body, `"reason": "queue depth 9 > 4 for 30s; +1"`)

	_, body = get(t, srv, "/v1/decisions?pool=cpu&page_size=1")
	require.NoError(t, json.Unmarshal([]byte(body), &got))
	require.Len(t, got.Decisions, 1)
	require.Equal(t, uint64(3), got.Decisions[0].ID)

	code, body = get(t, srv, "/v1/decisions?page_size=-1")
	require.Equal(t, http.StatusBadRequest, code)
	require.Contains(t, body, "page_size: must be a count >= 0")
}

func TestStatus(t *testing.T) {
	t.Parallel()
	srv := httptest.NewServer(Handler(fixture()))
	t.Cleanup(srv.Close)
	code, body := get(t, srv, "/v1/status")
	require.Equal(t, http.StatusOK, code)
	var st Status
	require.NoError(t, json.Unmarshal([]byte(body), &st))
	require.Equal(t, uint64(9), st.Evaluations)
	require.Len(t, st.Pools, 2)
	require.Equal(t, "cpu", st.Pools[0].Pool)
	require.Equal(t, 8, st.Pools[0].SlotsTotal)
	require.Equal(t, uint64(3), st.Pools[0].LastDecision.ID)
	require.Nil(t, st.Pools[0].LatencyP95MS)
	require.True(t, st.Pools[1].Gateway)
	require.True(t, st.Pools[1].Scaling)
	require.Equal(t, 750.0, *st.Pools[1].LatencyP95MS)

	code, body = get(t, srv, "/healthz")
	require.Equal(t, http.StatusOK, code)
	require.Equal(t, "ok\n", body)
}

func TestMetrics(t *testing.T) {
	t.Parallel()
	srv := httptest.NewServer(Handler(fixture()))
	t.Cleanup(srv.Close)
	code, body := get(t, srv, "/metrics")
	require.Equal(t, http.StatusOK, code)
	for _, line := range []string{
		"# TYPE autoscaler_replicas_desired gauge",
		`autoscaler_replicas_desired{pool="cpu"} 1`,
		`autoscaler_replicas_current{pool="cpu"} 2`,
		`autoscaler_replicas_desired{pool="gateway"} 2`,
		`autoscaler_scaling{pool="gateway"} 1`,
		`autoscaler_replicas_max{pool="cpu"} 10`,
		`autoscaler_decisions_total{pool="cpu",rule="queue_depth"} 1`,
		`autoscaler_decisions_total{pool="cpu",rule="utilization_low_sustained"} 1`,
		`autoscaler_decisions_total{pool="gateway",rule="latency_p95"} 1`,
		"autoscaler_evaluations_total 9",
		"autoscaler_last_evaluation_timestamp_seconds 1767225720",
	} {
		require.Contains(t, body, line+"\n")
	}
}
