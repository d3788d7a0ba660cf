package discovery

import (
	"context"
	"fmt"
	"strings"
	"sync"

	"google.golang.org/grpc"
	"google.golang.org/grpc/resolver"
)

// URL schemes of the gRPC resolvers that DialOptions installs.
const (
	// SchemeConsul resolves "consul:///<service>" to the passing instances
	// of the service, following every change (backed by Discovery.Watch, so
	// it works with any Discovery, not only Consul).
	SchemeConsul = "consul"
	// SchemeStatic resolves "static:///host1:port,host2:port" to those
	// addresses, once.
	SchemeStatic = "static"
)

// roundRobinConfig is the default service config DialOptions sets: spread
// calls over every healthy instance instead of pick_first's single one.
const roundRobinConfig = `{"loadBalancingConfig":[{"round_robin":{}}]}`

// DialOptions returns the options that let grpc.NewClient dial the targets of
// this package: "consul:///<service>" resolved through d (omitted when d is
// nil, so such a target then fails with "no resolver for scheme consul") and
// "static:///host:port,…", with round-robin balancing unless the target's
// service config or a later option (WithConsistentHash) says otherwise. Plain
// "host:port" and "dns:///" targets keep working as usual.
//
//	conn, err := grpc.NewClient("consul:///scheduler",
//		append(discovery.DialOptions(d), grpc.WithTransportCredentials(creds))...)
func DialOptions(d Discovery) []grpc.DialOption {
	builders := []resolver.Builder{staticBuilder{}}
	if d != nil {
		builders = append(builders, NewResolverBuilder(SchemeConsul, d))
	}
	return []grpc.DialOption{
		grpc.WithResolvers(builders...),
		grpc.WithDefaultServiceConfig(roundRobinConfig),
	}
}

// NewResolverBuilder returns a gRPC resolver builder for targets
// "<scheme>:///<service>" that follows the passing instances of the service
// through d.Watch. DialOptions uses it with SchemeConsul; another scheme lets
// one process use two registries.
func NewResolverBuilder(scheme string, d Discovery) resolver.Builder {
	return &watchBuilder{scheme: scheme, d: d}
}

type watchBuilder struct {
	scheme string
	d      Discovery
}

// Scheme returns the URL scheme the builder was made for.
func (b *watchBuilder) Scheme() string { return b.scheme }

// errorReportingWatcher is implemented by Discovery implementations that can
// report watch errors (Consul), so the resolver can fail RPCs fast while it
// has never had a set, instead of letting them wait for their deadline.
type errorReportingWatcher interface {
	watch(ctx context.Context, service string, fn func([]Instance), onErr func(error)) error
}

// Build starts a watch of the target's service that pushes every change of
// its healthy set to cc, until Close.
func (b *watchBuilder) Build(target resolver.Target, cc resolver.ClientConn, _ resolver.BuildOptions) (resolver.Resolver, error) {
	service := target.Endpoint()
	if err := validServiceName(service); err != nil {
		return nil, fmt.Errorf("target %q: want %s:///<service>: %w", target.String(), b.scheme, err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	r := &watchResolver{cancel: cancel}
	// publish and onErr are both called from the watch goroutine, one at a
	// time, so hadSet needs no lock.
	hadSet := false
	publish := func(is []Instance) {
		hadSet = true
		// An error here means the balancer rejected the set (round_robin:
		// it is empty); the next change is pushed anyway.
		_ = cc.UpdateState(state(is))
	}
	onErr := func(err error) {
		// Once there is a set, a registry outage keeps it: the instances
		// are probably still there.
		if !hadSet {
			cc.ReportError(err)
		}
	}
	r.wg.Add(1)
	go func() {
		defer r.wg.Done()
		if w, ok := b.d.(errorReportingWatcher); ok {
			_ = w.watch(ctx, service, publish, onErr)
		} else {
			_ = b.d.Watch(ctx, service, publish)
		}
	}()
	return r, nil
}

// watchResolver is pushed to by its watch; there is nothing to do on
// ResolveNow.
type watchResolver struct {
	cancel context.CancelFunc
	wg     sync.WaitGroup
}

// ResolveNow does nothing: the watch pushes changes as they happen.
func (r *watchResolver) ResolveNow(resolver.ResolveNowOptions) {}

// Close stops the watch and waits for it, so no update follows Close.
func (r *watchResolver) Close() {
	r.cancel()
	r.wg.Wait()
}

func state(is []Instance) resolver.State {
	s := resolver.State{
		Addresses: make([]resolver.Address, 0, len(is)),
		Endpoints: make([]resolver.Endpoint, 0, len(is)),
	}
	for _, i := range is {
		a := resolver.Address{Addr: i.Addr()}
		s.Addresses = append(s.Addresses, a)
		s.Endpoints = append(s.Endpoints, resolver.Endpoint{Addresses: []resolver.Address{a}})
	}
	return s
}

// staticBuilder resolves "static:///host1:port,host2:port".
type staticBuilder struct{}

// Scheme returns SchemeStatic.
func (staticBuilder) Scheme() string { return SchemeStatic }

// Build parses the comma-separated addresses of the target and hands them to
// cc once.
func (staticBuilder) Build(target resolver.Target, cc resolver.ClientConn, _ resolver.BuildOptions) (resolver.Resolver, error) {
	var is []Instance
	for a := range strings.SplitSeq(target.Endpoint(), ",") {
		host, port, err := splitHostPort(strings.TrimSpace(a))
		if err != nil {
			return nil, fmt.Errorf("target %q: want static:///host:port[,host:port…]: %w", target.String(), err)
		}
		is = append(is, Instance{Address: host, Port: port})
	}
	_ = cc.UpdateState(state(is))
	return nopResolver{}, nil
}

type nopResolver struct{}

// ResolveNow does nothing: a static target never changes.
func (nopResolver) ResolveNow(resolver.ResolveNowOptions) {}

// Close does nothing.
func (nopResolver) Close() {}
