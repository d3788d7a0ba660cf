package discovery

import (
	"context"
	"fmt"
	"net"
	"strconv"
	"sync"
)

// Static is a Discovery over fixed addresses, for the single-host and split
// deployment modes. Resolve returns the addresses it was built with plus the
// instances registered through it in this process, so the services of an
// all-in-one process can register and resolve each other without Consul.
// Static runs no health checks: every instance it knows is considered
// passing. Its zero value is not usable; build one with NewStatic.
type Static struct {
	mu      sync.Mutex
	fixed   map[string][]Instance          // service -> instances from NewStatic
	local   map[string]map[string]Instance // service -> id -> registered here
	changed chan struct{}                  // closed and replaced on every change
}

var _ Discovery = (*Static)(nil)

// NewStatic returns a Static that resolves each service name in addrs to the
// given "host:port" addresses (in that order of IDs: "<service>-0", …).
func NewStatic(addrs map[string][]string) (*Static, error) {
	s := &Static{
		fixed:   make(map[string][]Instance, len(addrs)),
		local:   make(map[string]map[string]Instance),
		changed: make(chan struct{}),
	}
	for svc, list := range addrs {
		if err := validServiceName(svc); err != nil {
			return nil, fmt.Errorf("static discovery: %w", err)
		}
		for i, a := range list {
			host, port, err := splitHostPort(a)
			if err != nil {
				return nil, fmt.Errorf("static discovery: service %s: %w", svc, err)
			}
			s.fixed[svc] = append(s.fixed[svc], Instance{
				ID: fmt.Sprintf("%s-%d", svc, i), Service: svc, Address: host, Port: port,
			})
		}
	}
	return s, nil
}

// splitHostPort parses "host:port" with a non-empty host and a port in 1-65535.
func splitHostPort(a string) (string, int, error) {
	host, p, err := net.SplitHostPort(a)
	if err != nil {
		return "", 0, fmt.Errorf("address %q: want host:port: %w", a, err)
	}
	port, err := strconv.Atoi(p)
	if err != nil || port < 1 || port > 65535 || host == "" {
		return "", 0, fmt.Errorf("address %q: want host:port with a port in 1-65535", a)
	}
	return host, port, nil
}

// Register records the instance in this process (no check is run; the
// instance counts as passing until Deregister) and wakes the watchers of its
// service. Registering an ID again replaces the earlier instance.
func (s *Static) Register(_ context.Context, r Registration) (*Handle, error) {
	r, err := r.withDefaults()
	if err != nil {
		return nil, err
	}
	s.mu.Lock()
	if s.local[r.Service] == nil {
		s.local[r.Service] = make(map[string]Instance)
	}
	s.local[r.Service][r.ID] = r.instance()
	s.notifyLocked()
	s.mu.Unlock()

	return &Handle{service: r.Service, id: r.ID, deregister: func(context.Context) error {
		s.mu.Lock()
		defer s.mu.Unlock()
		delete(s.local[r.Service], r.ID)
		s.notifyLocked()
		return nil
	}}, nil
}

func (s *Static) notifyLocked() {
	close(s.changed)
	s.changed = make(chan struct{})
}

// Resolve returns the fixed and locally registered instances of service.
func (s *Static) Resolve(_ context.Context, service string) ([]Instance, error) {
	if err := validServiceName(service); err != nil {
		return nil, fmt.Errorf("resolving: %w", err)
	}
	is, _ := s.snapshot(service)
	return is, nil
}

func (s *Static) snapshot(service string) ([]Instance, <-chan struct{}) {
	s.mu.Lock()
	defer s.mu.Unlock()
	is := make([]Instance, 0, len(s.fixed[service])+len(s.local[service]))
	is = append(is, s.fixed[service]...)
	for _, i := range s.local[service] {
		is = append(is, i)
	}
	sortInstances(is)
	return is, s.changed
}

// Watch calls fn with the instances of service at once and again whenever an
// instance of it is registered or deregistered through s, until ctx ends.
func (s *Static) Watch(ctx context.Context, service string, fn func([]Instance)) error {
	if err := validServiceName(service); err != nil {
		return fmt.Errorf("watching: %w", err)
	}
	var last []Instance
	for first := true; ; first = false {
		is, changed := s.snapshot(service)
		if first || !sameInstances(is, last) {
			fn(is)
			last = is
		}
		select {
		case <-ctx.Done():
			return nil
		case <-changed:
		}
	}
}
