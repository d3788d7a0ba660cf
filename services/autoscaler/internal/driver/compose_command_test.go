package driver

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/agentserver/agentserver/pkg/proctest"
)

// recorder is a Runner that records command lines and answers from a script.
type recorder struct {
	mu   sync.Mutex
	cmds []Cmd
	out  []byte
	err  error
}

func (r *recorder) Run(_ context.Context, c Cmd) ([]byte, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.cmds = append(r.cmds, c)
	return r.out, r.err
}

func TestComposeRunsTheExactCommand(t *testing.T) {
	t.Parallel()
	rec := &recorder{}
	c, err := NewCompose(ComposeConfig{
		Files:    []string{"docker-compose.yml"},
		Services: map[string]string{"cpu": "worker", "gpu": "worker-gpu"},
		Runner:   rec,
	})
	require.NoError(t, err)
	require.NoError(t, c.Scale(t.Context(), "cpu", 5))
	require.NoError(t, c.Scale(t.Context(), "gpu", 0))
	require.Equal(t, []Cmd{
		{Path: "docker", Args: strings.Fields("compose -f docker-compose.yml up -d --scale worker=5 --no-recreate worker")},
		{Path: "docker", Args: strings.Fields("compose -f docker-compose.yml up -d --scale worker-gpu=0 --no-recreate worker-gpu")},
	}, rec.cmds)
}

func TestComposeProjectFilesAndTimeout(t *testing.T) {
	t.Parallel()
	rec := &recorder{}
	c, err := NewCompose(ComposeConfig{
		Binary:      "/usr/bin/docker",
		Files:       []string{"docker-compose.yml", "docker-compose.storage.yml"},
		Project:     "agentserver",
		Services:    map[string]string{"cpu": "worker"},
		StopTimeout: 90500 * time.Millisecond,
		Runner:      rec,
	})
	require.NoError(t, err)
	require.NoError(t, c.Scale(t.Context(), "cpu", 3))
	require.Equal(t, "/usr/bin/docker compose -p agentserver -f docker-compose.yml -f docker-compose.storage.yml up -d --scale worker=3 --no-recreate --timeout 91 worker",
		rec.cmds[0].String())
}

func TestComposeCurrentCountsRunningContainers(t *testing.T) {
	t.Parallel()
	rec := &recorder{out: []byte("3f1c0a\n9b2e7d\n\n77aa01\n")}
	c, err := NewCompose(ComposeConfig{Files: []string{"dc.yml"}, Services: map[string]string{"cpu": "worker"}, Runner: rec})
	require.NoError(t, err)
	n, err := c.Current(t.Context(), "cpu")
	require.NoError(t, err)
	require.Equal(t, 3, n)
	require.Equal(t, "docker compose -f dc.yml ps --quiet --status running worker", rec.cmds[0].String())

	rec.out = nil
	n, err = c.Current(t.Context(), "cpu")
	require.NoError(t, err)
	require.Zero(t, n)
}

func TestComposeErrors(t *testing.T) {
	t.Parallel()
	_, err := NewCompose(ComposeConfig{Services: map[string]string{"cpu": "worker"}})
	require.ErrorContains(t, err, "file: required")
	_, err = NewCompose(ComposeConfig{Files: []string{"dc.yml"}})
	require.ErrorContains(t, err, "services:")
	rec := &recorder{err: errors.New("exit status 1: no such service: worker")}
	c, err := NewCompose(ComposeConfig{Files: []string{"dc.yml"}, Services: map[string]string{"cpu": "worker"}, Runner: rec})
	require.NoError(t, err)
	require.ErrorContains(t, c.Scale(t.Context(), "cpu", 2), "compose driver: scaling cpu to 2: exit status 1: no such service: worker")
	require.ErrorIs(t, c.Scale(t.Context(), "gpu", 2), ErrUnknownPool)
	_, err = c.Current(t.Context(), "gpu")
	require.ErrorIs(t, err, ErrUnknownPool)
}

// writeScript writes an executable shell script.
func writeScript(t *testing.T, dir, name, body string) string {
	t.Helper()
	path := filepath.Join(dir, name)
	proctest.WriteExecutable(t, path, []byte("#!/bin/sh\nset -eu\n"+body))
	return path
}

func TestCommandRunsUserScriptWithPoolAndCount(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	log := filepath.Join(dir, "calls.log")
	state := filepath.Join(dir, "state")
	// A stand-in for kubectl & co: records its arguments and environment and keeps
	// each pool's count in a file the current command reads back.
	scale := writeScript(t, dir, "scale.sh", `
printf 'args=%s|POOL=%s|COUNT=%s|TOKEN=%s\n' "$*" "$POOL" "$COUNT" "$TOKEN" >> `+log+`
echo "$COUNT" > `+state+`.$POOL
`)
	current := writeScript(t, dir, "current.sh", `cat `+state+`."$1" 2>/dev/null || echo 0`)
	c, err := NewCommand(CommandConfig{
		Pools:   []string{"cpu", "gpu"},
		Scale:   []string{scale, "deployment/worker-{pool}", "--replicas={count}"},
		Current: []string{current, "{pool}"},
		Env:     []string{"TOKEN=s3cret"},
	})
	require.NoError(t, err)
	ctx := t.Context()
	n, err := c.Current(ctx, "cpu")
	require.NoError(t, err)
	require.Zero(t, n)
	require.NoError(t, c.Scale(ctx, "cpu", 4))
	require.NoError(t, c.Scale(ctx, "gpu", 1))
	require.NoError(t, c.Scale(ctx, "cpu", 2))
	got, err := os.ReadFile(log)
	require.NoError(t, err)
	require.Equal(t, ""+
		"args=deployment/worker-cpu --replicas=4|POOL=cpu|COUNT=4|TOKEN=s3cret\n"+
		"args=deployment/worker-gpu --replicas=1|POOL=gpu|COUNT=1|TOKEN=s3cret\n"+
		"args=deployment/worker-cpu --replicas=2|POOL=cpu|COUNT=2|TOKEN=s3cret\n", string(got))
	n, err = c.Current(ctx, "cpu")
	require.NoError(t, err)
	require.Equal(t, 2, n)
	n, err = c.Current(ctx, "gpu")
	require.NoError(t, err)
	require.Equal(t, 1, n)
}

func TestCommandWithoutCurrentRemembersCounts(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	scale := writeScript(t, dir, "scale.sh", "exit 0\n")
	c, err := NewCommand(CommandConfig{Pools: []string{"cpu"}, Scale: []string{scale}, Initial: map[string]int{"cpu": 3}})
	require.NoError(t, err)
	n, err := c.Current(t.Context(), "cpu")
	require.NoError(t, err)
	require.Equal(t, 3, n)
	require.NoError(t, c.Scale(t.Context(), "cpu", 5))
	n, err = c.Current(t.Context(), "cpu")
	require.NoError(t, err)
	require.Equal(t, 5, n)
}

func TestCommandFailures(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	fail := writeScript(t, dir, "fail.sh", "echo 'deployment not found' >&2\nexit 3\n")
	garbage := writeScript(t, dir, "garbage.sh", "echo lots\n")
	c, err := NewCommand(CommandConfig{Pools: []string{"cpu"}, Scale: []string{fail}, Current: []string{garbage}, Initial: map[string]int{}})
	require.NoError(t, err)
	err = c.Scale(t.Context(), "cpu", 2)
	require.ErrorContains(t, err, "command driver: scaling cpu to 2: running "+fail+": exit status 3: deployment not found")
	_, err = c.Current(t.Context(), "cpu")
	require.ErrorContains(t, err, `printed "lots", want a count >= 0`)
	require.ErrorIs(t, c.Scale(t.Context(), "gpu", 1), ErrUnknownPool)

	slow := writeScript(t, dir, "slow.sh", "exec sleep 60\n")
	c, err = NewCommand(CommandConfig{Pools: []string{"cpu"}, Scale: []string{slow}, Timeout: 100 * time.Millisecond})
	require.NoError(t, err)
	require.ErrorContains(t, c.Scale(t.Context(), "cpu", 1), "killed")

	_, err = NewCommand(CommandConfig{Pools: []string{"cpu"}})
	require.ErrorContains(t, err, "scale: required")
	_, err = NewCommand(CommandConfig{Scale: []string{"true"}})
	require.ErrorContains(t, err, "pools: list at least one pool")
	_, err = NewCommand(CommandConfig{Pools: []string{"cpu"}, Scale: []string{"true"}, Initial: map[string]int{"gpu": 1}})
	require.ErrorContains(t, err, "initial.gpu: pool not listed in pools")
}
