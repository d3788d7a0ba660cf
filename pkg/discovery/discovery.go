package discovery

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"net"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Defaults applied by Register to a zero Interval or DeregisterAfter: a check
// every 10 seconds, and removal from the catalog after 3 failed checks.
const (
	DefaultCheckInterval   = 10 * time.Second
	DefaultDeregisterAfter = 3 * DefaultCheckInterval
)

// ErrInvalidRegistration is wrapped by the error Register returns when a
// Registration is incomplete or inconsistent; nothing is registered then.
var ErrInvalidRegistration = errors.New("invalid registration")

// Discovery registers this process's services and resolves its peers. Static
// and Consul implement it; both are safe for concurrent use.
type Discovery interface {
	// Register announces an instance of a service with a health check. The
	// returned Handle deregisters it. A TTL check is kept passing by a
	// goroutine until Deregister is called or ctx ends; ctx bounds nothing
	// else, so pass the process's lifetime context, not a request's.
	Register(ctx context.Context, r Registration) (*Handle, error)

	// Resolve returns the instances of service whose health checks pass,
	// sorted by ID. An unknown service has no instances and no error.
	Resolve(ctx context.Context, service string) ([]Instance, error)

	// Watch calls fn with the passing instances of service (sorted by ID) at
	// once and then every time that set changes, until ctx ends; it then
	// returns nil. Calls to fn are sequential; fn may keep the slice but must
	// not modify it. Errors talking to the registry are logged and retried
	// with backoff, keeping the last set delivered, so Watch returns an error
	// only for an invalid service name.
	Watch(ctx context.Context, service string, fn func([]Instance)) error
}

// Instance is one resolved instance of a service.
type Instance struct {
	// ID identifies the instance within its service.
	ID string
	// Service is the service name the instance registered under.
	Service string
	// Address is the host or IP to dial.
	Address string
	// Port is the port to dial.
	Port int
	// Tags are the instance's tags (for example a worker pool or slot type).
	Tags []string
	// Meta is the instance's metadata.
	Meta map[string]string
}

// Addr returns "host:port", ready to dial.
func (i Instance) Addr() string { return net.JoinHostPort(i.Address, strconv.Itoa(i.Port)) }

// HasTag reports whether the instance carries tag.
func (i Instance) HasTag(tag string) bool { return slices.Contains(i.Tags, tag) }

func (i Instance) equal(o Instance) bool {
	return i.ID == o.ID && i.Service == o.Service && i.Address == o.Address && i.Port == o.Port &&
		slices.Equal(i.Tags, o.Tags) && maps.Equal(i.Meta, o.Meta)
}

func sameInstances(a, b []Instance) bool {
	return slices.EqualFunc(a, b, Instance.equal)
}

func sortInstances(is []Instance) {
	slices.SortFunc(is, func(a, b Instance) int { return strings.Compare(a.ID, b.ID) })
}

// Check says how the registry decides whether an instance is healthy. Use
// CheckGRPC, CheckTTL or CheckHTTP; the zero Check is invalid.
type Check struct {
	kind checkKind
	path string // CheckHTTP: path on the instance, or a full URL
}

type checkKind int

const (
	checkUnset checkKind = iota
	checkGRPC
	checkTTL
	checkHTTP
)

var (
	// CheckGRPC has the registry call the standard gRPC health protocol
	// (grpc.health.v1.Health/Check, overall server status) on Address:Port
	// every Interval. For services with a gRPC listener.
	CheckGRPC = Check{kind: checkGRPC}

	// CheckTTL has the instance itself report that it is alive: Register
	// starts a goroutine that marks the check passing three times per
	// Interval, and the check turns critical when Interval passes without
	// one. For processes the registry cannot reach (behind NAT, no
	// listener), and for a crashed process it works like any other check.
	CheckTTL = Check{kind: checkTTL}
)

// CheckHTTP has the registry GET path on the instance every Interval; a 2xx
// answer is passing. path is either a path ("/healthz", dialled at
// http://Address:Port) or a full URL, for a health endpoint on another
// listener than the registered port.
func CheckHTTP(path string) Check { return Check{kind: checkHTTP, path: path} }

// String returns "grpc", "ttl", "http <path>", or "unset".
func (c Check) String() string {
	switch c.kind {
	case checkGRPC:
		return "grpc"
	case checkTTL:
		return "ttl"
	case checkHTTP:
		return "http " + c.path
	}
	return "unset"
}

// Registration describes one instance of a service to register.
type Registration struct {
	// Service is the service name peers resolve (for example "scheduler").
	Service string
	// ID identifies this instance; it must be unique within the service. When
	// empty, Register uses "<service>-<hostname>-<port>" (or the process id
	// instead of the port when Port is 0), which is stable across restarts so
	// a restarted process replaces its old registration.
	ID string
	// Address is the host or IP peers dial. It is required for gRPC and HTTP
	// path checks, since the registry dials it too. Never a wildcard such as
	// 0.0.0.0: advertise an address that others can reach.
	Address string
	// Port is the port peers dial.
	Port int
	// Tags are free-form labels peers may filter on (pool, slot types, …).
	Tags []string
	// Meta is free-form key/value metadata.
	Meta map[string]string
	// Check is the instance's health check. Required.
	Check Check
	// Interval is how often the check runs (for TTL checks: the TTL). Zero
	// means DefaultCheckInterval.
	Interval time.Duration
	// DeregisterAfter is how long the check may stay critical before the
	// registry removes the instance from its catalog. Zero means
	// DefaultDeregisterAfter; Consul raises anything below one minute to one
	// minute (see the package documentation).
	DeregisterAfter time.Duration
}

// withDefaults returns r with its defaults filled in, or an error wrapping
// ErrInvalidRegistration.
func (r Registration) withDefaults() (Registration, error) {
	invalid := func(format string, args ...any) (Registration, error) {
		return Registration{}, fmt.Errorf("%w of service %q: %s", ErrInvalidRegistration, r.Service, fmt.Sprintf(format, args...))
	}
	if err := validServiceName(r.Service); err != nil {
		return invalid("%v", err)
	}
	if r.Port < 0 || r.Port > 65535 {
		return invalid("Port %d is out of range 0-65535", r.Port)
	}
	switch r.Check.kind {
	case checkUnset:
		return invalid("Check is required: use CheckGRPC, CheckTTL or CheckHTTP(path)")
	case checkGRPC:
		if r.Address == "" || r.Port == 0 {
			return invalid("a gRPC check needs Address and Port")
		}
	case checkHTTP:
		full := strings.HasPrefix(r.Check.path, "http://") || strings.HasPrefix(r.Check.path, "https://")
		if !full && !strings.HasPrefix(r.Check.path, "/") {
			return invalid("CheckHTTP(%q): want a path starting with / or a full http(s) URL", r.Check.path)
		}
		if !full && (r.Address == "" || r.Port == 0) {
			return invalid("an HTTP check on a path needs Address and Port")
		}
	}
	if ip := net.ParseIP(r.Address); ip != nil && ip.IsUnspecified() {
		return invalid("Address %s is a wildcard; advertise an address peers can reach", r.Address)
	}
	if r.Interval < 0 || r.DeregisterAfter < 0 {
		return invalid("Interval and DeregisterAfter must not be negative")
	}
	if r.Interval == 0 {
		r.Interval = DefaultCheckInterval
	}
	if r.DeregisterAfter == 0 {
		r.DeregisterAfter = DefaultDeregisterAfter
	}
	if r.ID == "" {
		host, err := os.Hostname()
		if err != nil || host == "" {
			host = "localhost"
		}
		suffix := r.Port
		if suffix == 0 {
			suffix = os.Getpid()
		}
		r.ID = fmt.Sprintf("%s-%s-%d", r.Service, host, suffix)
	}
	r.Tags = slices.Clone(r.Tags)
	r.Meta = maps.Clone(r.Meta)
	return r, nil
}

func (r Registration) instance() Instance {
	return Instance{ID: r.ID, Service: r.Service, Address: r.Address, Port: r.Port, Tags: r.Tags, Meta: r.Meta}
}

// validServiceName accepts the names Consul's DNS interface can serve: ASCII
// letters, digits and dashes.
func validServiceName(s string) error {
	if s == "" {
		return errors.New("service name is empty")
	}
	for _, c := range s {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-') {
			return fmt.Errorf("service name %q: only letters, digits and '-' are allowed", s)
		}
	}
	return nil
}

// Handle is a registered instance. Deregister it on clean shutdown.
type Handle struct {
	service, id string
	stop        context.CancelFunc // stops the TTL heartbeat, if any
	done        <-chan struct{}    // closed when the heartbeat has stopped
	deregister  func(context.Context) error

	mu   sync.Mutex
	gone bool
}

// Service returns the registered service name.
func (h *Handle) Service() string { return h.service }

// ID returns the registered instance ID (the defaulted one when
// Registration.ID was empty).
func (h *Handle) ID() string { return h.id }

// Deregister stops the TTL heartbeat (if any) and removes the instance from
// the registry at once, so peers stop routing to it before the process exits.
// Call it with a context that is not already cancelled (for example
// context.WithoutCancel of the shutdown context with a timeout). Once it has
// succeeded, further calls return nil; after a failure it may be retried.
func (h *Handle) Deregister(ctx context.Context) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.gone {
		return nil
	}
	if h.stop != nil {
		h.stop()
		<-h.done
	}
	if err := h.deregister(ctx); err != nil {
		return fmt.Errorf("deregistering %s instance %s: %w", h.service, h.id, err)
	}
	h.gone = true
	return nil
}
