// Package announce wires one service process into discovery: the settings every
// agentserver service shares (discovery mode, advertised host, check interval, removal
// delay), the choice between static addresses and Consul, and the registration that
// lasts while the process serves.
//
// It never chooses what a service registers (name, port, check, tags: the service's main
// does that) and talks to Consul only through package discovery.
package announce

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/agentserver/agentserver/pkg/config"
	"github.com/agentserver/agentserver/pkg/discovery"
)

// Discovery modes.
const (
	// ModeStatic uses fixed addresses (host:port or static:///a,b targets) and
	// registers nothing: the single-host and split modes.
	ModeStatic = "static"
	// ModeConsul registers the process with the local Consul agent and resolves
	// consul:///<service> targets through it: the distributed mode.
	ModeConsul = "consul"
)

// Service names under which agentserver's services register.
const (
	Gateway   = "agentserver-gateway"
	Scheduler = "agentserver-scheduler"
	Worker    = "agentserver-worker"
)

// Config is the discovery settings of a process.
type Config struct {
	// Mode is ModeStatic or ModeConsul; empty means ModeConsul when CONSUL_HTTP_ADDR
	// is set, ModeStatic otherwise.
	Mode string
	// AdvertiseHost is the host or IP peers (and Consul's checks) dial to reach this
	// process; empty means DefaultHost().
	AdvertiseHost string
	// CheckInterval is how often Consul checks the process (the TTL of a TTL check).
	CheckInterval time.Duration
	// DeregisterAfter is how long a failing process stays in Consul's catalog. It
	// leaves the healthy set, which is what peers resolve, at its first failed check.
	DeregisterAfter time.Duration
}

// Defaults returns the defaults: mode from the environment, a check every 10 s,
// removal after 3 failed checks.
func Defaults() Config {
	return Config{CheckInterval: discovery.DefaultCheckInterval, DeregisterAfter: discovery.DefaultDeregisterAfter}
}

// Bind registers the discovery settings on set, with cfg's values as defaults.
func Bind(set *config.Set, cfg *Config) {
	set.String(&cfg.Mode, "discovery", "AGENTSERVER_DISCOVERY", cfg.Mode,
		"service discovery: static or consul (default: consul when CONSUL_HTTP_ADDR is set, else static)")
	set.String(&cfg.AdvertiseHost, "advertise-host", "AGENTSERVER_ADVERTISE_HOST", cfg.AdvertiseHost,
		"host or IP that peers and Consul dial to reach this process (default: the first non-loopback IP, else 127.0.0.1)")
	set.Duration(&cfg.CheckInterval, "check-interval", "AGENTSERVER_CHECK_INTERVAL", cfg.CheckInterval,
		"how often Consul checks this process (consul mode)")
	set.Duration(&cfg.DeregisterAfter, "deregister-after", "AGENTSERVER_DEREGISTER_AFTER", cfg.DeregisterAfter,
		"how long a failing process stays in Consul's catalog; Consul enforces at least 1m (consul mode)")
}

// EffectiveMode returns Mode, or the mode the environment implies when it is empty.
func (c Config) EffectiveMode() string {
	if c.Mode != "" {
		return c.Mode
	}
	if os.Getenv("CONSUL_HTTP_ADDR") != "" {
		return ModeConsul
	}
	return ModeStatic
}

// Validate reports the first setting a person must fix.
func (c Config) Validate() error {
	switch m := c.EffectiveMode(); m {
	case ModeStatic, ModeConsul:
	default:
		return fmt.Errorf("discovery mode %q: want %s or %s (AGENTSERVER_DISCOVERY)", m, ModeStatic, ModeConsul)
	}
	if c.CheckInterval <= 0 {
		return fmt.Errorf("check interval (%s) must be positive (AGENTSERVER_CHECK_INTERVAL)", c.CheckInterval)
	}
	if c.DeregisterAfter <= 0 {
		return fmt.Errorf("deregister-after (%s) must be positive (AGENTSERVER_DEREGISTER_AFTER)", c.DeregisterAfter)
	}
	if ip := net.ParseIP(c.AdvertiseHost); ip != nil && ip.IsUnspecified() {
		return fmt.Errorf("advertise host %s is a wildcard: give an address peers can dial (AGENTSERVER_ADVERTISE_HOST)", c.AdvertiseHost)
	}
	return nil
}

// Host returns the advertised host: AdvertiseHost, or DefaultHost().
func (c Config) Host() string {
	if c.AdvertiseHost != "" {
		return c.AdvertiseHost
	}
	return DefaultHost()
}

// DefaultHost returns the first IPv4 address of an up, non-loopback interface (else its
// first global IPv6 address), or 127.0.0.1 when there is none.
func DefaultHost() string {
	ifaces, err := net.Interfaces()
	if err != nil {
		return "127.0.0.1"
	}
	var v6 string
	for _, ifc := range ifaces {
		if ifc.Flags&net.FlagUp == 0 || ifc.Flags&net.FlagLoopback != 0 {
			continue
		}
		addrs, err := ifc.Addrs()
		if err != nil {
			continue
		}
		for _, a := range addrs {
			ipn, ok := a.(*net.IPNet)
			if !ok || !ipn.IP.IsGlobalUnicast() {
				continue
			}
			if ip4 := ipn.IP.To4(); ip4 != nil {
				return ip4.String()
			}
			if v6 == "" {
				v6 = ipn.IP.String()
			}
		}
	}
	if v6 != "" {
		return v6
	}
	return "127.0.0.1"
}

// Open returns the process's Discovery: a Consul client (configured from
// CONSUL_HTTP_ADDR, CONSUL_HTTP_TOKEN, ...) in consul mode, nil in static mode. A nil
// Discovery is what discovery.DialOptions expects when only static targets are allowed.
func Open(cfg Config, log *slog.Logger) (discovery.Discovery, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if cfg.EffectiveMode() != ModeConsul {
		return nil, nil
	}
	d, err := discovery.NewConsul(discovery.ConsulConfig{Logger: log})
	if err != nil {
		return nil, fmt.Errorf("consul discovery: %w", err)
	}
	return d, nil
}

// CheckTargets reports a target that needs Consul ("consul:///service") when d is nil,
// naming setting, the flag or variable that gave it, and the fix.
func CheckTargets(d discovery.Discovery, setting string, targets ...string) error {
	if d != nil {
		return nil
	}
	for _, t := range targets {
		if strings.HasPrefix(strings.TrimSpace(t), discovery.SchemeConsul+":") {
			return fmt.Errorf("%s: %q needs Consul discovery: set CONSUL_HTTP_ADDR (or --discovery consul), or give host:port addresses", setting, t)
		}
	}
	return nil
}

// Registration is this process's announced instance. A nil *Registration (static mode)
// is valid and does nothing.
type Registration struct {
	handle *discovery.Handle
	log    *slog.Logger
	once   sync.Once
}

// Register announces r through d with the process's check settings: r.Address defaults
// to cfg.Host(), r.Interval and r.DeregisterAfter to cfg's. With a nil d (static mode)
// it registers nothing and returns nil. ctx is the process's lifetime: a TTL check is
// kept passing until Deregister or the end of ctx. log (nil: slog.Default()) records the
// registration and its end.
func Register(ctx context.Context, d discovery.Discovery, cfg Config, r discovery.Registration, log *slog.Logger) (*Registration, error) {
	if d == nil {
		return nil, nil
	}
	if log == nil {
		log = slog.Default()
	}
	if r.Address == "" {
		r.Address = cfg.Host()
	}
	if r.Interval == 0 {
		r.Interval = cfg.CheckInterval
	}
	if r.DeregisterAfter == 0 {
		r.DeregisterAfter = cfg.DeregisterAfter
	}
	h, err := d.Register(ctx, r)
	if err != nil {
		return nil, err
	}
	log.Info("registered with discovery", "service", r.Service, "id", h.ID(), "address", r.Address, "port", r.Port,
		"check", r.Check.String(), "interval", r.Interval.String())
	if c, ok := d.(*discovery.Consul); ok {
		// Remove dead siblings from this agent after their DeregisterAfter: Consul's own
		// reaper would take a minute or more.
		go c.Reap(ctx, []string{Gateway, Scheduler, Worker}, h.ID(), r.DeregisterAfter, r.Interval, log)
	}
	return &Registration{handle: h, log: log}, nil
}

// Serve registers r as Register does and runs serve until it returns. When stop ends (the
// process was signalled) it deregisters first and then cancels serve's context, so that
// peers and load balancers stop routing to the instance before its listeners close; it
// deregisters when serve returns in any case. With a nil d (static mode) it only runs
// serve, whose context ends with stop.
func Serve(stop context.Context, d discovery.Discovery, cfg Config, r discovery.Registration, log *slog.Logger, serve func(context.Context) error) error {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	reg, err := Register(ctx, d, cfg, r, log)
	if err != nil {
		return err
	}
	defer reg.Deregister()
	go func() {
		select {
		case <-stop.Done():
			reg.Deregister()
			cancel()
		case <-ctx.Done():
		}
	}()
	return serve(ctx)
}

// ID returns the registered instance id ("" for a nil Registration).
func (r *Registration) ID() string {
	if r == nil {
		return ""
	}
	return r.handle.ID()
}

// Deregister removes the instance from discovery at once, so peers stop routing to it
// before the process stops serving. It waits at most 5 s and logs a failure (Consul's
// check removes the instance anyway). Safe to call more than once (a later call waits for
// the first and does nothing more) and on nil.
func (r *Registration) Deregister() {
	if r == nil {
		return
	}
	r.once.Do(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := r.handle.Deregister(ctx); err != nil {
			r.log.Warn("deregistering from discovery failed; the health check will remove this instance", "err", err)
			return
		}
		r.log.Info("deregistered from discovery", "service", r.handle.Service(), "id", r.handle.ID())
	})
}

// Port returns the TCP port of a listener's address (0 when it has none).
func Port(a net.Addr) int {
	if tcp, ok := a.(*net.TCPAddr); ok {
		return tcp.Port
	}
	_, p, err := net.SplitHostPort(a.String())
	if err != nil {
		return 0
	}
	n, _ := strconv.Atoi(p)
	return n
}
