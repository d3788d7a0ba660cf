package policy

import (
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

func TestParseAppliesDefaults(t *testing.T) {
	t.Parallel()
	cfg, err := Parse([]byte(`
pools:
  - name: cpu
    max_replicas: 10
gateways:
  max_replicas: 3
  latency_p95_target: 500ms
`))
	require.NoError(t, err)
	require.Equal(t, DefaultInterval, cfg.Interval)
	require.Equal(t, []PoolConfig{{
		Name: "cpu", SlotType: "cpu", MinReplicas: 1, MaxReplicas: 10, SlotsPerWorker: 4,
		ScaleUp: ScaleUp{QueueDepth: 4, Utilization: 0.8, Sustained: 30 * time.Second, Cooldown: time.Minute,
			Step: Step{Count: 1}},
		ScaleDown: ScaleDown{Utilization: 0.2, Sustained: 5 * time.Minute, Cooldown: 2 * time.Minute,
			Step: Step{Count: 1}},
	}}, cfg.Pools)
	require.Equal(t, &GatewayConfig{
		Name: "gateway", MinReplicas: 1, MaxReplicas: 3, LatencyP95Target: 500 * time.Millisecond,
		Up:        GatewayAction{Sustained: 30 * time.Second, Cooldown: time.Minute, Step: Step{Count: 1}},
		Down:      GatewayAction{Sustained: 5 * time.Minute, Cooldown: 2 * time.Minute, Step: Step{Count: 1}},
		DownRatio: 0.5,
	}, cfg.Gateway)
}

func TestParseReadsEveryField(t *testing.T) {
	t.Parallel()
	cfg, err := Parse([]byte(`
interval: 5s
pools:
  - name: gpu-a100
    slot_type: gpu
    min_replicas: 0
    max_replicas: 4
    slots_per_worker: 1
    scale_up: {queue_depth: 0, utilization: 0.9, sustained: 0s, cooldown: 10s, step: 2, step_percent: 50}
    scale_down: {utilization: 0.1, sustained: 1m, cooldown: 20s, step: 3, step_percent: 25}
gateways:
  name: gw
  min_replicas: 2
  max_replicas: 8
  latency_p95_target: 250ms
  scale_up: {sustained: 1s, cooldown: 2s, step: 2}
  scale_down: {latency_ratio: 0.25, sustained: 3s, cooldown: 4s, step_percent: 10}
`))
	require.NoError(t, err)
	require.Equal(t, Config{
		Interval: 5 * time.Second,
		Pools: []PoolConfig{{
			Name: "gpu-a100", SlotType: "gpu", MinReplicas: 0, MaxReplicas: 4, SlotsPerWorker: 1,
			ScaleUp: ScaleUp{QueueDepth: 0, Utilization: 0.9, Sustained: 0, Cooldown: 10 * time.Second,
				Step: Step{Count: 2, Percent: 50}},
			ScaleDown: ScaleDown{Utilization: 0.1, Sustained: time.Minute, Cooldown: 20 * time.Second,
				Step: Step{Count: 3, Percent: 25}},
		}},
		Gateway: &GatewayConfig{
			Name: "gw", MinReplicas: 2, MaxReplicas: 8, LatencyP95Target: 250 * time.Millisecond,
			Up:        GatewayAction{Sustained: time.Second, Cooldown: 2 * time.Second, Step: Step{Count: 2}},
			Down:      GatewayAction{Sustained: 3 * time.Second, Cooldown: 4 * time.Second, Step: Step{Count: 1, Percent: 10}},
			DownRatio: 0.25,
		},
	}, cfg)
}

func TestParseExample(t *testing.T) {
	t.Parallel()
	data, err := os.ReadFile(filepath.Join("..", "..", "examples", "policy.yaml"))
	require.NoError(t, err)
	cfg, err := Parse(data)
	require.NoError(t, err)
	require.NotEmpty(t, cfg.Pools)
}

func TestParseReportsFieldRuleAndLine(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name string
		yaml string
		want []string
	}{
		{
			name: "max below min",
			yaml: `
pools:
  - name: cpu
    max_replicas: 3
  - name: gpu
    min_replicas: 2
    max_replicas: 1
`,
			want: []string{"pools[1].max_replicas (line 7): must be >= min_replicas (2)"},
		},
		{
			name: "max missing",
			yaml: "pools:\n  - name: cpu\n",
			want: []string{"pools[0].max_replicas (line 2): required"},
		},
		{
			name: "down threshold above up threshold",
			yaml: `
pools:
  - name: cpu
    max_replicas: 3
    scale_up: {utilization: 0.5}
    scale_down: {utilization: 0.6}
`,
			want: []string{"pools[0].scale_down.utilization (line 6): must be < scale_up.utilization (0.5), or the pool would flap"},
		},
		{
			name: "several problems at once",
			yaml: `
interval: 0s
pools:
  - name: CPU
    min_replicas: -1
    max_replicas: 0
    slots_per_worker: 0
    scale_up: {queue_depth: -1, utilization: 1.5, sustained: -1s, step: 0, step_percent: 2000}
    scale_down: {cooldown: -1s}
`,
			want: []string{
				"interval (line 2): must be > 0 (e.g. 15s)",
				`pools[0].name (line 4): must be lower-case letters, digits, '.', '_' or '-', starting and ending with a letter or digit (got "CPU")`,
				"pools[0].min_replicas (line 5): must be >= 0 (got -1)",
				"pools[0].max_replicas (line 6): must be >= 1 (got 0)",
				"pools[0].slots_per_worker (line 7): must be >= 1 (got 0)",
				"pools[0].scale_up.queue_depth (line 8): must be >= 0 (got -1)",
				"pools[0].scale_up.utilization (line 8): must be in (0, 1] (got 1.5)",
				"pools[0].scale_up.sustained (line 8): must be >= 0 (got -1s)",
				"pools[0].scale_up.step (line 8): must be >= 1 (got 0)",
				"pools[0].scale_up.step_percent (line 8): must be in [0, 1000] (got 2000)",
				"pools[0].scale_down.cooldown (line 9): must be >= 0 (got -1s)",
			},
		},
		{
			name: "duplicate pool and gateway names",
			yaml: `
pools:
  - {name: cpu, max_replicas: 2}
  - {name: cpu, max_replicas: 2}
gateways: {name: cpu, max_replicas: 2, latency_p95_target: 1s}
`,
			want: []string{
				`pools[1].name (line 4): duplicates pools[0].name ("cpu")`,
				`gateways.name (line 5): duplicates pools[0].name ("cpu"); the driver could not tell them apart`,
			},
		},
		{
			name: "gateway",
			yaml: `
gateways:
  min_replicas: 3
  max_replicas: 2
  scale_down: {latency_ratio: 1}
`,
			want: []string{
				"gateways.latency_p95_target (line 2): required (e.g. 500ms)",
				"gateways.max_replicas (line 4): must be >= min_replicas (3)",
				"gateways.scale_down.latency_ratio (line 5): must be in [0, 1) so that scale-down sits below the target (got 1)",
			},
		},
		{
			name: "nothing to scale",
			yaml: "interval: 10s\n",
			want: []string{"pools: at least one pool or the gateways must be configured"},
		},
		{
			name: "unknown field",
			yaml: "pools:\n  - name: cpu\n    max_replica: 3\n",
			want: []string{"line 3: field max_replica not found"},
		},
		{
			name: "bad duration",
			yaml: "interval: soon\npools: [{name: cpu, max_replicas: 1}]\n",
			want: []string{"line 1: cannot unmarshal !!str `soon`"},
		},
		{
			name: "empty",
			yaml: "",
			want: []string{"policy: empty document"},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			_, err := Parse([]byte(tc.yaml))
			require.Error(t, err)
			for _, w := range tc.want {
				require.Contains(t, err.Error(), w)
			}
		})
	}
}

func TestValidateReturnsFieldErrors(t *testing.T) {
	t.Parallel()
	err := Config{Interval: time.Second, Pools: []PoolConfig{{Name: "cpu", SlotType: "cpu", MaxReplicas: 1,
		SlotsPerWorker: 4, ScaleUp: ScaleUp{Utilization: 0.8, Step: Step{Count: 1}},
		ScaleDown: ScaleDown{Utilization: 0.2, Step: Step{Count: 0}}}}}.Validate()
	var fe *FieldError
	require.ErrorAs(t, err, &fe)
	require.Equal(t, "pools[0].scale_down.step", fe.Path)
	require.Equal(t, "pools[0].scale_down.step: must be >= 1 (got 0)", err.Error())

	_, err = NewEngine(Config{})
	require.True(t, errors.As(err, &fe))
}
