package discovery

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"sync"

	"google.golang.org/grpc"
	"google.golang.org/grpc/balancer"
	"google.golang.org/grpc/balancer/endpointsharding"
	"google.golang.org/grpc/balancer/pickfirst"
	"google.golang.org/grpc/connectivity"
	"google.golang.org/grpc/serviceconfig"

	"github.com/agentserver/agentserver/pkg/hashring"
)

// ConsistentHashName is the name the consistent-hash balancer is registered
// under, for service configs: {"loadBalancingConfig":[{"consistent_hash":{}}]}.
// Its optional config is {"virtualNodes": n} (default
// hashring.DefaultVirtualNodes).
const ConsistentHashName = "consistent_hash"

// gRPC looks balancers up in a process-wide registry that may only be written
// during initialisation, so registering here (with no other effect) is the
// one way to make the policy available to service configs.
func init() { balancer.Register(hashBuilder{}) }

// WithConsistentHash makes a client route each call by the key WithHashKey
// put on its context: to the owner of the key on a consistent-hash ring of the
// resolved (healthy) instances, or, when the owner's connection is not READY,
// to the next READY instance clockwise. While the set of instances is stable,
// calls with the same key reach the same instance; when one leaves, only its
// keys move. Calls without a key are spread round-robin over the READY
// instances. Put it after DialOptions, whose round-robin default it replaces.
func WithConsistentHash() grpc.DialOption {
	return grpc.WithDefaultServiceConfig(`{"loadBalancingConfig":[{"` + ConsistentHashName + `":{}}]}`)
}

type hashKeyContextKey struct{}

// WithHashKey returns a context whose gRPC calls the consistent-hash balancer
// routes by key (an assistant or thread id, say). An empty key means none.
// Balancers other than consistent_hash ignore it.
func WithHashKey(ctx context.Context, key string) context.Context {
	return context.WithValue(ctx, hashKeyContextKey{}, key)
}

// HashKey returns the key WithHashKey put on ctx, if any.
func HashKey(ctx context.Context) (string, bool) {
	k, _ := ctx.Value(hashKeyContextKey{}).(string)
	return k, k != ""
}

type hashConfig struct {
	serviceconfig.LoadBalancingConfig `json:"-"`

	VirtualNodes int `json:"virtualNodes,omitempty"`
}

type hashBuilder struct{}

// Name returns ConsistentHashName.
func (hashBuilder) Name() string { return ConsistentHashName }

// ParseConfig parses {"virtualNodes": n}; an empty config means the default.
func (hashBuilder) ParseConfig(js json.RawMessage) (serviceconfig.LoadBalancingConfig, error) {
	var cfg hashConfig
	if len(js) > 0 {
		if err := json.Unmarshal(js, &cfg); err != nil {
			return nil, fmt.Errorf("%s config %s: %w", ConsistentHashName, js, err)
		}
	}
	if cfg.VirtualNodes < 0 || cfg.VirtualNodes > 10_000 {
		return nil, fmt.Errorf("%s config: virtualNodes %d is outside 0-10000", ConsistentHashName, cfg.VirtualNodes)
	}
	return &cfg, nil
}

// Build returns a balancer that keeps one pick_first child per endpoint (the
// same machinery as round_robin, through endpointsharding, which also
// reconnects idle children) and replaces the aggregated picker with a ring
// lookup.
func (hashBuilder) Build(cc balancer.ClientConn, opts balancer.BuildOptions) balancer.Balancer {
	b := &hashBalancer{cc: cc}
	b.Balancer = endpointsharding.NewBalancer(hashClientConn{ClientConn: cc, b: b}, opts,
		balancer.Get(pickfirst.Name).Build, endpointsharding.Options{})
	return b
}

type hashBalancer struct {
	balancer.Balancer // the endpointsharding balancer
	cc                balancer.ClientConn

	mu     sync.Mutex
	vnodes int
	nodes  []string // the ring's nodes, sorted
	ring   *hashring.Ring
}

// UpdateClientConnState takes the ring size from the config and hands the
// endpoints to the pick_first children.
func (b *hashBalancer) UpdateClientConnState(s balancer.ClientConnState) error {
	if cfg, ok := s.BalancerConfig.(*hashConfig); ok {
		b.mu.Lock()
		if cfg.VirtualNodes != b.vnodes {
			b.vnodes, b.nodes = cfg.VirtualNodes, nil // rebuild the ring
		}
		b.mu.Unlock()
	}
	// Like round_robin: the children get the endpoints (with the health
	// listener that client-side health checks need) but not our config.
	return b.Balancer.UpdateClientConnState(balancer.ClientConnState{
		ResolverState: pickfirst.EnableHealthListener(s.ResolverState),
	})
}

// ringFor returns the ring over nodes, rebuilding it only when they changed.
func (b *hashBalancer) ringFor(nodes []string) *hashring.Ring {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.ring == nil || !slices.Equal(b.nodes, nodes) {
		b.nodes, b.ring = nodes, hashring.New(nodes, b.vnodes)
	}
	return b.ring
}

// hashClientConn intercepts the endpointsharding balancer's state updates to
// put the ring picker in front of its round-robin one.
type hashClientConn struct {
	balancer.ClientConn
	b *hashBalancer
}

// UpdateState replaces the round-robin picker of a READY state with a ring
// picker over the same children.
func (c hashClientConn) UpdateState(s balancer.State) {
	if s.ConnectivityState != connectivity.Ready {
		// Nothing is READY: the round-robin picker already queues or fails
		// calls the right way for CONNECTING, IDLE and TRANSIENT_FAILURE.
		c.b.cc.UpdateState(s)
		return
	}
	children := endpointsharding.ChildStatesFromPicker(s.Picker)
	byNode := make(map[string]balancer.State, len(children))
	nodes := make([]string, 0, len(children))
	for _, ch := range children {
		if len(ch.Endpoint.Addresses) == 0 {
			continue
		}
		n := ch.Endpoint.Addresses[0].Addr
		byNode[n] = ch.State
		nodes = append(nodes, n)
	}
	slices.Sort(nodes)
	c.b.cc.UpdateState(balancer.State{
		ConnectivityState: s.ConnectivityState,
		Picker:            &hashPicker{ring: c.b.ringFor(nodes), children: byNode, fallback: s.Picker},
	})
}

type hashPicker struct {
	ring     *hashring.Ring
	children map[string]balancer.State // by node (the endpoint's first address)
	fallback balancer.Picker           // round-robin over the READY children
}

// Pick sends a keyed call to the first READY instance clockwise from its key
// and an unkeyed one round-robin.
func (p *hashPicker) Pick(info balancer.PickInfo) (balancer.PickResult, error) {
	key, ok := HashKey(info.Ctx)
	if !ok {
		return p.fallback.Pick(info)
	}
	for n := range p.ring.Walk(key) {
		if ch := p.children[n]; ch.ConnectivityState == connectivity.Ready {
			return ch.Picker.Pick(info)
		}
	}
	return p.fallback.Pick(info)
}
