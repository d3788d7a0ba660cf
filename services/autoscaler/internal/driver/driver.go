// Package driver owns how the autoscaler changes the number of replicas of a pool: local
// worker-agent processes (Process), a Docker Compose service (Compose) or a user command
// for anything else (Command).
//
// A driver applies counts it is given; it must never decide them (that is the policy's
// job) and must never stop a worker without draining it first: a scale-down asks the
// removed workers to stop taking work and finish or hand back their runs (SIGTERM for a
// worker-agent) and waits for them, so no run is lost.
package driver

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os/exec"
	"strings"
)

// Driver changes and reports the replica count of pools.
//
// Scale to a lower count drains the replicas it removes before they stop, and returns
// once they have stopped (or the driver gave up on them, with an error). Scale and
// Current are safe for concurrent use, including for the same pool; calls of Scale for
// one pool are applied one after another.
type Driver interface {
	// Current returns the replicas of pool the driver runs now: those still starting are
	// counted, those being drained away are not.
	Current(ctx context.Context, pool string) (int, error)
	// Scale sets the replicas of pool to n, draining any it removes.
	Scale(ctx context.Context, pool string, n int) error
}

// ErrUnknownPool is returned for a pool the driver has no configuration for.
var ErrUnknownPool = errors.New("pool not configured in the driver")

// Cmd is a command a Runner executes.
type Cmd struct {
	// Path is the program, looked up in PATH when it has no slash.
	Path string
	// Args are the arguments after the program name.
	Args []string
	// Env is added to the autoscaler's environment ("KEY=value").
	Env []string
	// Dir is the working directory; empty for the autoscaler's own.
	Dir string
}

// String renders the command line for messages.
func (c Cmd) String() string {
	return strings.Join(append([]string{c.Path}, c.Args...), " ")
}

// Runner executes a command to completion and returns its standard output. Compose and
// Command run everything through one, so tests can record the exact command lines.
type Runner interface {
	// Run runs c and returns its standard output; a non-zero exit is an error.
	Run(ctx context.Context, c Cmd) ([]byte, error)
}

// ExecRunner runs commands as child processes; a failure's error includes the command's
// standard error.
type ExecRunner struct{}

// Run implements Runner.
func (ExecRunner) Run(ctx context.Context, c Cmd) ([]byte, error) {
	cmd := exec.CommandContext(ctx, c.Path, c.Args...)
	cmd.Dir = c.Dir
	if len(c.Env) > 0 {
		cmd.Env = append(cmd.Environ(), c.Env...)
	}
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		msg := strings.TrimSpace(stderr.String())
		if len(msg) > 2000 {
			msg = msg[len(msg)-2000:]
		}
		if msg != "" {
			return stdout.Bytes(), fmt.Errorf("running %s: %w: %s", c, err, msg)
		}
		return stdout.Bytes(), fmt.Errorf("running %s: %w", c, err)
	}
	return stdout.Bytes(), nil
}
