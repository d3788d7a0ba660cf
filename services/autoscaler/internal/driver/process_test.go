package driver

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/agentserver/agentserver/services/autoscaler/internal/standin"
)

// The process driver is tested against a stand-in for the worker-agent (package
// standin): this test binary itself, re-executed with standin.Env set.
func TestMain(m *testing.M) {
	if standin.Active() {
		os.Exit(standin.Main())
	}
	os.Exit(m.Run())
}

// eventually polls cond until it holds or the deadline passes.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func exists(path string) bool {
	_, err := os.Stat(path)
	return err == nil
}

func marker(dir string, pid int, what string) string { return standin.Marker(dir, pid, what) }

// newStandInDriver returns a process driver whose pools run the stand-in.
func newStandInDriver(t *testing.T, stopTimeout time.Duration, pools map[string][]string) (*Process, string) {
	t.Helper()
	self, err := os.Executable()
	require.NoError(t, err)
	dir := t.TempDir()
	cfg := ProcessConfig{Pools: map[string]ProcessPool{}, StopTimeout: stopTimeout, Output: os.Stderr}
	for name, env := range pools {
		cfg.Pools[name] = ProcessPool{
			Binary: self,
			Args:   []string{"-test.run=^$"},
			Env: append([]string{standin.Env + "=1", standin.EnvDir + "=" + dir,
				standin.EnvEcho + "=" + EnvPool + "," + EnvReplica + ",EXTRA"}, env...),
		}
	}
	p, err := NewProcess(cfg)
	require.NoError(t, err)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		_ = p.Shutdown(ctx)
	})
	return p, dir
}

func waitStarted(t *testing.T, dir string, pids []int) {
	t.Helper()
	for _, pid := range pids {
		eventually(t, fmt.Sprintf("stand-in %d to start", pid), func() bool { return exists(marker(dir, pid, "started")) })
	}
}

func TestProcessScaleUpStartsWorkersWithPoolEnvironment(t *testing.T) {
	t.Parallel()
	p, dir := newStandInDriver(t, time.Minute, map[string][]string{"cpu": {"EXTRA=x1"}})
	ctx := t.Context()
	require.NoError(t, p.Scale(ctx, "cpu", 3))
	n, err := p.Current(ctx, "cpu")
	require.NoError(t, err)
	require.Equal(t, 3, n)
	pids := p.PIDs("cpu")
	require.Len(t, pids, 3)
	waitStarted(t, dir, pids)
	for i, pid := range pids {
		got, err := os.ReadFile(marker(dir, pid, "started"))
		require.NoError(t, err)
		require.Equal(t, fmt.Sprintf("AUTOSCALER_POOL=cpu AUTOSCALER_REPLICA=%d EXTRA=x1", i), string(got))
	}
	// Scaling to the current count changes nothing.
	require.NoError(t, p.Scale(ctx, "cpu", 3))
	require.Equal(t, pids, p.PIDs("cpu"))
}

func TestProcessScaleDownDrainsNewestAndWaits(t *testing.T) {
	t.Parallel()
	p, dir := newStandInDriver(t, time.Minute, map[string][]string{"cpu": {standin.EnvHold + "=1"}})
	ctx := t.Context()
	require.NoError(t, p.Scale(ctx, "cpu", 3))
	pids := p.PIDs("cpu")
	waitStarted(t, dir, pids)

	done := make(chan error, 1)
	go func() { done <- p.Scale(ctx, "cpu", 1) }()
	// The two newest get SIGTERM and drain; the oldest keeps running.
	for _, pid := range pids[1:] {
		eventually(t, "drain to start", func() bool { return exists(marker(dir, pid, "draining")) })
	}
	require.False(t, exists(marker(dir, pids[0], "draining")))
	// While they drain they no longer count, and Scale has not returned: they still run.
	n, err := p.Current(ctx, "cpu")
	require.NoError(t, err)
	require.Equal(t, 1, n)
	require.Equal(t, pids[:1], p.PIDs("cpu"))
	select {
	case err := <-done:
		t.Fatalf("Scale returned before the workers exited: %v", err)
	default:
	}
	// Their runs finish: they exit 0 and Scale returns.
	for _, pid := range pids[1:] {
		require.NoError(t, os.WriteFile(marker(dir, pid, "release"), nil, 0o600))
	}
	require.NoError(t, <-done)
	for _, pid := range pids[1:] {
		require.True(t, exists(marker(dir, pid, "exited")))
	}
	// A new worker takes the lowest free replica index.
	require.NoError(t, p.Scale(ctx, "cpu", 2))
	newest := p.PIDs("cpu")[1]
	waitStarted(t, dir, []int{newest})
	got, err := os.ReadFile(marker(dir, newest, "started"))
	require.NoError(t, err)
	require.Contains(t, string(got), "AUTOSCALER_REPLICA=1 ")
	// Let the held workers finish when the test's cleanup drains them.
	for _, pid := range p.PIDs("cpu") {
		require.NoError(t, os.WriteFile(marker(dir, pid, "release"), nil, 0o600))
	}
}

func TestProcessKillsWorkerThatOutlivesStopTimeout(t *testing.T) {
	t.Parallel()
	p, dir := newStandInDriver(t, 200*time.Millisecond, map[string][]string{"hung": {standin.EnvIgnoreTerm + "=1"}})
	ctx := t.Context()
	require.NoError(t, p.Scale(ctx, "hung", 1))
	pid := p.PIDs("hung")[0]
	waitStarted(t, dir, []int{pid})
	err := p.Scale(ctx, "hung", 0)
	require.ErrorContains(t, err, fmt.Sprintf("hung replica 0 (pid %d) did not exit within 200ms of SIGTERM; killed", pid))
	require.ErrorIs(t, syscall.Kill(pid, 0), syscall.ESRCH, "the process is gone")
	require.False(t, exists(marker(dir, pid, "exited")))
}

func TestProcessForgetsWorkerThatExitsOnItsOwn(t *testing.T) {
	t.Parallel()
	p, dir := newStandInDriver(t, time.Minute, map[string][]string{"cpu": nil})
	ctx := t.Context()
	require.NoError(t, p.Scale(ctx, "cpu", 2))
	pids := p.PIDs("cpu")
	waitStarted(t, dir, pids)
	require.NoError(t, syscall.Kill(pids[0], syscall.SIGKILL))
	eventually(t, "the crashed worker to be forgotten", func() bool {
		n, err := p.Current(ctx, "cpu")
		return err == nil && n == 1
	})
	require.Equal(t, pids[1:], p.PIDs("cpu"))
}

func TestProcessScaleReturnsWhenContextEndsDuringDrain(t *testing.T) {
	t.Parallel()
	p, dir := newStandInDriver(t, time.Minute, map[string][]string{"cpu": {standin.EnvHold + "=1"}})
	require.NoError(t, p.Scale(t.Context(), "cpu", 1))
	pid := p.PIDs("cpu")[0]
	waitStarted(t, dir, []int{pid})
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- p.Scale(ctx, "cpu", 0) }()
	eventually(t, "drain to start", func() bool { return exists(marker(dir, pid, "draining")) })
	cancel()
	err := <-done
	require.ErrorIs(t, err, context.Canceled)
	require.ErrorContains(t, err, "still draining")
	// The drain goes on and completes after Scale gave up waiting.
	require.NoError(t, os.WriteFile(marker(dir, pid, "release"), nil, 0o600))
	eventually(t, "the worker to exit", func() bool { return exists(marker(dir, pid, "exited")) })
}

func TestProcessShutdownDrainsEveryPool(t *testing.T) {
	t.Parallel()
	p, dir := newStandInDriver(t, time.Minute, map[string][]string{"cpu": nil, "gpu": nil})
	ctx := t.Context()
	require.NoError(t, p.Scale(ctx, "cpu", 2))
	require.NoError(t, p.Scale(ctx, "gpu", 1))
	pids := append(p.PIDs("cpu"), p.PIDs("gpu")...)
	waitStarted(t, dir, pids)
	require.NoError(t, p.Shutdown(ctx))
	for _, pid := range pids {
		require.True(t, exists(marker(dir, pid, "exited")), "pid %d drained", pid)
	}
	for _, pool := range []string{"cpu", "gpu"} {
		n, err := p.Current(ctx, pool)
		require.NoError(t, err)
		require.Zero(t, n)
	}
}

func TestProcessErrors(t *testing.T) {
	t.Parallel()
	_, err := NewProcess(ProcessConfig{})
	require.ErrorContains(t, err, "no pools configured")
	_, err = NewProcess(ProcessConfig{Pools: map[string]ProcessPool{"cpu": {}}})
	require.ErrorContains(t, err, "pools.cpu.binary: required")

	p, err := NewProcess(ProcessConfig{Pools: map[string]ProcessPool{
		"cpu": {Binary: filepath.Join(t.TempDir(), "no-such-worker-agent")},
	}})
	require.NoError(t, err)
	_, err = p.Current(t.Context(), "gpu")
	require.ErrorIs(t, err, ErrUnknownPool)
	require.ErrorIs(t, p.Scale(t.Context(), "gpu", 1), ErrUnknownPool)
	err = p.Scale(t.Context(), "cpu", 1)
	require.ErrorContains(t, err, "starting cpu worker")
	require.True(t, errors.Is(err, os.ErrNotExist) || strings.Contains(err.Error(), "no such file"))
	require.ErrorContains(t, p.Scale(t.Context(), "cpu", -1), "negative replica count")
}
