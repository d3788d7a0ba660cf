package driver

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"time"
)

// ComposeConfig configures a Compose driver.
type ComposeConfig struct {
	// Binary is the docker CLI; empty means "docker".
	Binary string
	// Files are the compose files (-f), in order; at least one.
	Files []string
	// Project is the compose project name (-p); empty lets compose choose.
	Project string
	// Services maps each pool to its compose service (e.g. "cpu" → "worker").
	Services map[string]string
	// StopTimeout, when positive, is passed as `up --timeout` (seconds, rounded up): how
	// long compose waits after SIGTERM before it kills a removed container. Zero leaves
	// the service's stop_grace_period in charge.
	StopTimeout time.Duration
	// Runner runs the docker CLI; nil means ExecRunner.
	Runner Runner
}

// Compose scales Docker Compose services:
//
//	docker compose -f FILE up -d --scale SERVICE=N --no-recreate SERVICE
//
// Compose removes containers on scale-down with `docker stop`: SIGTERM, then the
// service's stop_grace_period (or StopTimeout) for the worker-agent to drain, then
// SIGKILL. Set stop_grace_period above the worker's drain grace.
type Compose struct {
	cfg   ComposeConfig
	locks map[string]*sync.Mutex
}

// NewCompose returns a Compose driver.
func NewCompose(cfg ComposeConfig) (*Compose, error) {
	if len(cfg.Files) == 0 {
		return nil, errors.New("compose driver: file: required (the compose file that defines the pool services)")
	}
	if len(cfg.Services) == 0 {
		return nil, errors.New("compose driver: services: map at least one pool to its compose service")
	}
	if cfg.Binary == "" {
		cfg.Binary = "docker"
	}
	if cfg.Runner == nil {
		cfg.Runner = ExecRunner{}
	}
	c := &Compose{cfg: cfg, locks: map[string]*sync.Mutex{}}
	for pool, svc := range cfg.Services {
		if svc == "" {
			return nil, fmt.Errorf("compose driver: services.%s: empty service name", pool)
		}
		c.locks[pool] = new(sync.Mutex)
	}
	return c, nil
}

// base is `compose [-p PROJECT] -f FILE...`.
func (c *Compose) base() []string {
	args := []string{"compose"}
	if c.cfg.Project != "" {
		args = append(args, "-p", c.cfg.Project)
	}
	for _, f := range c.cfg.Files {
		args = append(args, "-f", f)
	}
	return args
}

func (c *Compose) service(pool string) (string, error) {
	svc, ok := c.cfg.Services[pool]
	if !ok {
		return "", fmt.Errorf("compose driver: %q: %w", pool, ErrUnknownPool)
	}
	return svc, nil
}

// ScaleCmd is the command Scale runs for pool and n.
func (c *Compose) ScaleCmd(pool string, n int) (Cmd, error) {
	svc, err := c.service(pool)
	if err != nil {
		return Cmd{}, err
	}
	args := append(c.base(), "up", "-d", "--scale", svc+"="+strconv.Itoa(n), "--no-recreate")
	if c.cfg.StopTimeout > 0 {
		secs := int((c.cfg.StopTimeout + time.Second - 1) / time.Second)
		args = append(args, "--timeout", strconv.Itoa(secs))
	}
	return Cmd{Path: c.cfg.Binary, Args: append(args, svc)}, nil
}

// CurrentCmd is the command Current runs for pool: it lists the ids of the service's
// running containers, one a line.
func (c *Compose) CurrentCmd(pool string) (Cmd, error) {
	svc, err := c.service(pool)
	if err != nil {
		return Cmd{}, err
	}
	return Cmd{Path: c.cfg.Binary, Args: append(c.base(), "ps", "--quiet", "--status", "running", svc)}, nil
}

// Current implements Driver: the running containers of the pool's service.
func (c *Compose) Current(ctx context.Context, pool string) (int, error) {
	cmd, err := c.CurrentCmd(pool)
	if err != nil {
		return 0, err
	}
	out, err := c.cfg.Runner.Run(ctx, cmd)
	if err != nil {
		return 0, fmt.Errorf("compose driver: %s: %w", pool, err)
	}
	n := 0
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		if strings.TrimSpace(sc.Text()) != "" {
			n++
		}
	}
	return n, nil
}

// Scale implements Driver.
func (c *Compose) Scale(ctx context.Context, pool string, n int) error {
	if n < 0 {
		return fmt.Errorf("compose driver: %s: negative replica count %d", pool, n)
	}
	cmd, err := c.ScaleCmd(pool, n)
	if err != nil {
		return err
	}
	mu := c.locks[pool]
	mu.Lock()
	defer mu.Unlock()
	if _, err := c.cfg.Runner.Run(ctx, cmd); err != nil {
		return fmt.Errorf("compose driver: scaling %s to %d: %w", pool, n, err)
	}
	return nil
}
