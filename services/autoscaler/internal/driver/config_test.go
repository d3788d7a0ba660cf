package driver

import (
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

func TestLoadEachKind(t *testing.T) {
	t.Parallel()
	l, err := Load([]byte(`
kind: process
process:
  stop_timeout: 90s
  pools:
    cpu:
      binary: /usr/local/bin/worker-agent
      args: [--labels, zone=a]
      env: {WORKER_SLOTS: "cpu=4", WORKER_POOL: cpu}
`), Options{})
	require.NoError(t, err)
	p := l.Driver.(*Process)
	require.Equal(t, 90*time.Second, p.cfg.StopTimeout)
	require.Equal(t, ProcessPool{Binary: "/usr/local/bin/worker-agent", Args: []string{"--labels", "zone=a"},
		Env: []string{"WORKER_POOL=cpu", "WORKER_SLOTS=cpu=4"}}, p.cfg.Pools["cpu"])
	require.NoError(t, l.Shutdown(t.Context()))

	l, err = Load([]byte(`
kind: compose
compose: {files: [docker-compose.yml], services: {cpu: worker}}
`), Options{})
	require.NoError(t, err)
	cmd, err := l.Driver.(*Compose).ScaleCmd("cpu", 4)
	require.NoError(t, err)
	require.Equal(t, "docker compose -f docker-compose.yml up -d --scale worker=4 --no-recreate worker", cmd.String())

	l, err = Load([]byte(`
kind: command
command:
  pools: [cpu]
  scale: [kubectl, scale, "deployment/worker-{pool}", "--replicas={count}"]
  env: {KUBECONFIG: /etc/kube/config}
`), Options{})
	require.NoError(t, err)
	c := l.Driver.(*Command).ScaleCmd("cpu", 3)
	require.Equal(t, "kubectl scale deployment/worker-cpu --replicas=3", c.String())
	require.Equal(t, []string{"KUBECONFIG=/etc/kube/config", "POOL=cpu", "COUNT=3"}, c.Env)
}

func TestLoadExamples(t *testing.T) {
	t.Parallel()
	for _, name := range []string{"driver-process.yaml", "driver-compose.yaml", "driver-command.yaml"} {
		data, err := os.ReadFile(filepath.Join("..", "..", "examples", name))
		require.NoError(t, err)
		_, err = Load(data, Options{})
		require.NoError(t, err, name)
	}
}

func TestLoadErrors(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct{ yaml, want string }{
		{"", "driver config: empty"},
		{"process: {}\n", "kind: required"},
		{"kind: nomad\n", `kind: must be process, compose or command (got "nomad")`},
		{"kind: process\n", "process: required when kind is process"},
		{"kind: process\nprocess: {pools: {cpu: {}}}\n", "pools.cpu.binary: required"},
		{"kind: process\nprocess: {pools: {cpu: {binary: x, enviroment: {}}}}\n", "field enviroment not found"},
		{"kind: compose\ncompose: {services: {cpu: worker}}\n", "file: required"},
		{"kind: command\ncommand: {pools: [cpu]}\n", "scale: required"},
	} {
		_, err := Load([]byte(tc.yaml), Options{})
		require.ErrorContains(t, err, tc.want, tc.yaml)
	}
}
