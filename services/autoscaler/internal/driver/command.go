package driver

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Environment variables and placeholders of the Command driver.
const (
	// EnvCommandPool carries the pool name to the user's commands.
	EnvCommandPool = "POOL"
	// EnvCommandCount carries the desired replica count to the scale command.
	EnvCommandCount = "COUNT"
	// PlaceholderPool in an argument is replaced by the pool name.
	PlaceholderPool = "{pool}"
	// PlaceholderCount in an argument of the scale command is replaced by the count.
	PlaceholderCount = "{count}"
)

// DefaultCommandTimeout bounds one run of a user command.
const DefaultCommandTimeout = 10 * time.Minute

// CommandConfig configures a Command driver.
type CommandConfig struct {
	// Pools lists the pools the commands manage.
	Pools []string
	// Scale is the command that sets a pool's replicas (argv; no shell unless you name
	// one). "{pool}" and "{count}" in arguments are replaced, and POOL and COUNT are set
	// in its environment. It must drain the replicas it removes (e.g. Kubernetes sends
	// SIGTERM and waits terminationGracePeriodSeconds) and should return once they are
	// gone.
	Scale []string
	// Current, optional, prints a pool's current replica count (POOL and "{pool}" are
	// set as for Scale). Without it the driver remembers the counts it set, starting
	// from Initial, and assumes nothing else changes them.
	Current []string
	// Initial is each pool's replica count when there is no Current command; missing
	// pools start at 0.
	Initial map[string]int
	// Env is added to the commands' environment ("KEY=value").
	Env []string
	// Timeout bounds one run of a command; zero means DefaultCommandTimeout.
	Timeout time.Duration
	// Runner runs the commands; nil means ExecRunner.
	Runner Runner
}

// Command delegates scaling to a user command: Kubernetes, Nomad, a cloud API.
type Command struct {
	cfg CommandConfig

	mu     sync.Mutex
	counts map[string]int
	locks  map[string]*sync.Mutex
}

// NewCommand returns a Command driver.
func NewCommand(cfg CommandConfig) (*Command, error) {
	if len(cfg.Scale) == 0 || cfg.Scale[0] == "" {
		return nil, errors.New("command driver: scale: required (the command that sets a pool's replica count)")
	}
	if len(cfg.Pools) == 0 {
		return nil, errors.New("command driver: pools: list at least one pool")
	}
	if len(cfg.Current) > 0 && cfg.Current[0] == "" {
		return nil, errors.New("command driver: current: empty program name")
	}
	if cfg.Timeout == 0 {
		cfg.Timeout = DefaultCommandTimeout
	}
	if cfg.Runner == nil {
		cfg.Runner = ExecRunner{}
	}
	c := &Command{cfg: cfg, counts: map[string]int{}, locks: map[string]*sync.Mutex{}}
	for _, p := range cfg.Pools {
		c.counts[p] = cfg.Initial[p]
		c.locks[p] = new(sync.Mutex)
	}
	for p, n := range cfg.Initial {
		if _, ok := c.locks[p]; !ok {
			return nil, fmt.Errorf("command driver: initial.%s: pool not listed in pools", p)
		}
		if n < 0 {
			return nil, fmt.Errorf("command driver: initial.%s: must be >= 0 (got %d)", p, n)
		}
	}
	return c, nil
}

// expand builds the command for pool from an argv template.
func (c *Command) expand(tmpl []string, pool string, count int, withCount bool) Cmd {
	r := strings.NewReplacer(PlaceholderPool, pool)
	env := append([]string{}, c.cfg.Env...)
	env = append(env, EnvCommandPool+"="+pool)
	if withCount {
		n := strconv.Itoa(count)
		r = strings.NewReplacer(PlaceholderPool, pool, PlaceholderCount, n)
		env = append(env, EnvCommandCount+"="+n)
	}
	args := make([]string, len(tmpl)-1)
	for i, a := range tmpl[1:] {
		args[i] = r.Replace(a)
	}
	return Cmd{Path: tmpl[0], Args: args, Env: env}
}

// ScaleCmd is the command Scale runs for pool and n.
func (c *Command) ScaleCmd(pool string, n int) Cmd { return c.expand(c.cfg.Scale, pool, n, true) }

func (c *Command) check(pool string) error {
	if _, ok := c.locks[pool]; !ok {
		return fmt.Errorf("command driver: %q: %w", pool, ErrUnknownPool)
	}
	return nil
}

// Current implements Driver.
func (c *Command) Current(ctx context.Context, pool string) (int, error) {
	if err := c.check(pool); err != nil {
		return 0, err
	}
	if len(c.cfg.Current) == 0 {
		c.mu.Lock()
		defer c.mu.Unlock()
		return c.counts[pool], nil
	}
	ctx, cancel := context.WithTimeout(ctx, c.cfg.Timeout)
	defer cancel()
	cmd := c.expand(c.cfg.Current, pool, 0, false)
	out, err := c.cfg.Runner.Run(ctx, cmd)
	if err != nil {
		return 0, fmt.Errorf("command driver: current count of %s: %w", pool, err)
	}
	s := strings.TrimSpace(string(out))
	n, err := strconv.Atoi(s)
	if err != nil || n < 0 {
		return 0, fmt.Errorf("command driver: current count of %s: %s printed %q, want a count >= 0", pool, cmd, s)
	}
	return n, nil
}

// Scale implements Driver.
func (c *Command) Scale(ctx context.Context, pool string, n int) error {
	if err := c.check(pool); err != nil {
		return err
	}
	if n < 0 {
		return fmt.Errorf("command driver: %s: negative replica count %d", pool, n)
	}
	c.locks[pool].Lock()
	defer c.locks[pool].Unlock()
	ctx, cancel := context.WithTimeout(ctx, c.cfg.Timeout)
	defer cancel()
	if _, err := c.cfg.Runner.Run(ctx, c.ScaleCmd(pool, n)); err != nil {
		return fmt.Errorf("command driver: scaling %s to %d: %w", pool, n, err)
	}
	c.mu.Lock()
	c.counts[pool] = n
	c.mu.Unlock()
	return nil
}
