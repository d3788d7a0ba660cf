package discovery

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"strconv"
	"time"

	"github.com/hashicorp/consul/api"
)

// ConsulConfig configures a Consul discovery client. The zero value talks to
// the agent named by the standard environment (CONSUL_HTTP_ADDR, default
// 127.0.0.1:8500; CONSUL_HTTP_TOKEN; CONSUL_HTTP_SSL; CONSUL_CACERT; …).
type ConsulConfig struct {
	// Address overrides CONSUL_HTTP_ADDR when not empty ("host:port", or a
	// URL such as "https://host:8501" or "unix:///path").
	Address string
	// Token overrides CONSUL_HTTP_TOKEN when not empty.
	Token string
	// WaitTime bounds each blocking query of Watch; zero means 5 minutes.
	// Consul caps it at 10 minutes.
	WaitTime time.Duration
	// Logger receives watch and heartbeat errors (which are retried); nil
	// means slog.Default().
	Logger *slog.Logger
}

// Consul is a Discovery backed by a Consul agent. Build one with NewConsul.
type Consul struct {
	client   *api.Client
	waitTime time.Duration
	log      *slog.Logger
}

var _ Discovery = (*Consul)(nil)

// NewConsul returns a Consul discovery client configured from the
// environment through api.DefaultConfig, with cfg's overrides. It does not
// contact the agent: the first Register or Resolve does.
func NewConsul(cfg ConsulConfig) (*Consul, error) {
	ac := api.DefaultConfig()
	if cfg.Address != "" {
		ac.Address = cfg.Address
	}
	if cfg.Token != "" {
		ac.Token = cfg.Token
	}
	client, err := api.NewClient(ac)
	if err != nil {
		return nil, fmt.Errorf("consul client for %s: %w", ac.Address, err)
	}
	c := &Consul{client: client, waitTime: cfg.WaitTime, log: cfg.Logger}
	if c.waitTime <= 0 {
		c.waitTime = 5 * time.Minute
	}
	if c.log == nil {
		c.log = slog.Default()
	}
	c.log = c.log.With("component", "discovery", "consul", ac.Address)
	return c, nil
}

// Client returns the underlying Consul API client, for what this package does
// not wrap (KV, sessions, the catalog).
func (c *Consul) Client() *api.Client { return c.client }

// Register registers the instance with the local Consul agent together with
// its check, which Consul runs (gRPC, HTTP) or expects (TTL) every Interval,
// and which removes the instance DeregisterAfter after it turns critical.
// Register the instance once it is ready to serve.
//
// A gRPC or HTTP check starts critical and passes at its first run, which
// Consul staggers randomly within the first Interval: a new instance joins
// the healthy set within one Interval. A TTL check starts passing and is
// kept passing by a goroutine until Deregister or the end of ctx; if the
// agent lost the registration (an agent restart, or a pause long enough to
// be reaped), the goroutine registers the instance again.
func (c *Consul) Register(ctx context.Context, r Registration) (*Handle, error) {
	r, err := r.withDefaults()
	if err != nil {
		return nil, err
	}
	reg := c.agentRegistration(r)
	if err := c.register(ctx, reg); err != nil {
		return nil, err
	}
	h := &Handle{
		service: r.Service,
		id:      r.ID,
		deregister: func(ctx context.Context) error {
			return c.client.Agent().ServiceDeregisterOpts(r.ID, (&api.QueryOptions{}).WithContext(ctx))
		},
	}
	if r.Check.kind == checkTTL {
		hctx, stop := context.WithCancel(ctx)
		done := make(chan struct{})
		h.stop, h.done = stop, done
		go func() {
			defer close(done)
			c.heartbeat(hctx, reg, r.Interval)
		}()
	}
	return h, nil
}

func (c *Consul) register(ctx context.Context, reg *api.AgentServiceRegistration) error {
	opts := api.ServiceRegisterOpts{ReplaceExistingChecks: true}.WithContext(ctx)
	if err := c.client.Agent().ServiceRegisterOpts(reg, opts); err != nil {
		return fmt.Errorf("registering %s instance %s with consul: %w", reg.Name, reg.ID, err)
	}
	return nil
}

func checkID(serviceID string) string { return "service:" + serviceID }

func (c *Consul) agentRegistration(r Registration) *api.AgentServiceRegistration {
	check := &api.AgentServiceCheck{
		CheckID:                        checkID(r.ID),
		Name:                           r.Service + " " + r.Check.String(),
		DeregisterCriticalServiceAfter: r.DeregisterAfter.String(),
	}
	// A probe may take at most one interval (and Consul's usual 5 s at most
	// beyond that), so a hung instance fails its check within the interval.
	timeout := min(r.Interval, 5*time.Second).String()
	hostPort := net.JoinHostPort(r.Address, strconv.Itoa(r.Port))
	switch r.Check.kind {
	case checkGRPC:
		check.GRPC = hostPort
		check.Interval, check.Timeout = r.Interval.String(), timeout
	case checkHTTP:
		check.HTTP = r.Check.path
		if check.HTTP[0] == '/' {
			check.HTTP = "http://" + hostPort + r.Check.path
		}
		check.Interval, check.Timeout = r.Interval.String(), timeout
	case checkTTL:
		check.TTL = r.Interval.String()
		// Visible at once; the first heartbeat follows within a third of the
		// TTL.
		check.Status = api.HealthPassing
	}
	return &api.AgentServiceRegistration{
		ID:      r.ID,
		Name:    r.Service,
		Address: r.Address,
		Port:    r.Port,
		Tags:    r.Tags,
		Meta:    r.Meta,
		Check:   check,
	}
}

// heartbeat marks a TTL check passing three times per TTL until ctx ends, so
// one lost or slow update does not flip the instance critical.
func (c *Consul) heartbeat(ctx context.Context, reg *api.AgentServiceRegistration, ttl time.Duration) {
	t := time.NewTicker(ttl / 3)
	defer t.Stop()
	id := checkID(reg.ID)
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		err := c.client.Agent().UpdateTTLOpts(id, "", api.HealthPassing, (&api.QueryOptions{}).WithContext(ctx))
		if err == nil || ctx.Err() != nil {
			continue
		}
		var se api.StatusError
		if !errors.As(err, &se) || se.Code != 404 {
			// Agent unreachable or overloaded: try again at the next tick.
			c.log.Warn("ttl heartbeat failed", "service", reg.Name, "id", reg.ID, "err", err)
			continue
		}
		// 404: the agent no longer knows the check. Register again (with
		// status passing) instead of staying invisible until restart.
		c.log.Warn("consul lost the registration; registering again", "service", reg.Name, "id", reg.ID, "err", err)
		if err := c.register(ctx, reg); err != nil && ctx.Err() == nil {
			c.log.Warn("re-registration failed", "service", reg.Name, "id", reg.ID, "err", err)
		}
	}
}

// Resolve returns the instances of service whose checks (and whose node's
// checks) all pass, sorted by ID.
func (c *Consul) Resolve(ctx context.Context, service string) ([]Instance, error) {
	if err := validServiceName(service); err != nil {
		return nil, fmt.Errorf("resolving: %w", err)
	}
	entries, _, err := c.client.Health().Service(service, "", true, (&api.QueryOptions{}).WithContext(ctx))
	if err != nil {
		return nil, fmt.Errorf("resolving %s through consul: %w", service, err)
	}
	return instances(entries), nil
}

func instances(entries []*api.ServiceEntry) []Instance {
	is := make([]Instance, 0, len(entries))
	for _, e := range entries {
		if e.Service == nil {
			continue
		}
		addr := e.Service.Address
		if addr == "" && e.Node != nil {
			// Registered without an address: Consul's convention is the node's.
			addr = e.Node.Address
		}
		is = append(is, Instance{
			ID:      e.Service.ID,
			Service: e.Service.Service,
			Address: addr,
			Port:    e.Service.Port,
			Tags:    e.Service.Tags,
			Meta:    e.Service.Meta,
		})
	}
	sortInstances(is)
	return is
}

// Watch follows the passing instances of service with blocking queries on
// /v1/health/service/<service>?passing, calling fn at once and after every
// change of the set, until ctx ends. Errors are logged and retried with
// jittered exponential backoff (250 ms doubling to 30 s) while fn keeps the
// last set it was given.
func (c *Consul) Watch(ctx context.Context, service string, fn func([]Instance)) error {
	return c.watch(ctx, service, fn, nil)
}

// watch is Watch with onErr, which the gRPC resolver uses to fail RPCs fast
// while it has no set yet.
func (c *Consul) watch(ctx context.Context, service string, fn func([]Instance), onErr func(error)) error {
	if err := validServiceName(service); err != nil {
		return fmt.Errorf("watching: %w", err)
	}
	var (
		index     uint64
		last      []Instance
		delivered bool
		failures  int
	)
	for ctx.Err() == nil {
		q := (&api.QueryOptions{
			WaitIndex: index,
			WaitTime:  c.waitTime,
			// Any server may answer: blocking queries from every process
			// would otherwise all land on the leader.
			AllowStale: true,
		}).WithContext(ctx)
		entries, meta, err := c.client.Health().Service(service, "", true, q)
		if err != nil {
			if ctx.Err() != nil {
				break
			}
			failures++
			c.log.Warn("watching service failed; retrying", "service", service, "failures", failures, "err", err)
			if onErr != nil {
				onErr(fmt.Errorf("watching %s through consul: %w", service, err))
			}
			if !sleep(ctx, backoff(failures)) {
				break
			}
			continue
		}
		failures = 0
		// Consul's rules for blocking queries: an index that goes backwards
		// (a snapshot restore, a stale server answering) restarts from 0,
		// which answers at once; an index of 0 is replaced by 1, or every
		// query would answer at once and the loop would spin.
		switch {
		case meta.LastIndex < index:
			index = 0
		case meta.LastIndex == 0:
			index = 1
		default:
			index = meta.LastIndex
		}
		is := instances(entries)
		if !delivered || !sameInstances(is, last) {
			fn(is)
			last, delivered = is, true
		}
	}
	return nil
}

// backoff returns the wait before retry number n (1-based): 250 ms doubling
// up to 30 s, with ±20 % jitter so that many watchers do not retry in step.
func backoff(n int) time.Duration {
	d := 30 * time.Second
	if n < 8 {
		d = min(d, 250*time.Millisecond<<(n-1))
	}
	return time.Duration(float64(d) * (0.8 + 0.4*rand.Float64()))
}

func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}
