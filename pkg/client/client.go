// Package client is the Go client library of agentserver's public gRPC API: one
// connection to the gateways carrying the assistant, run, thread and cluster services,
// resolution of the gateways from a static list or from Consul, optional consistent
// hashing of calls by assistant or thread, and retries of the calls that are safe to
// repeat when a gateway goes away.
//
//	c, err := client.New("consul:///agentserver-gateway", client.WithConsistentHash())
//	...
//	defer c.Close()
//	ctx = client.WithKey(ctx, "t-123") // the thread: its calls go to one gateway
//	run, err := c.Runs.CreateRun(ctx, &agentserverv1.CreateRunRequest{Run: ..., RequestId: id})
//
// It owns the connection and its policies only: it never interprets resources, and it
// never repeats a call that could take effect twice.
package client

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"

	agentserverv1 "github.com/agentserver/agentserver/gen/agentserver/v1"
	"github.com/agentserver/agentserver/pkg/discovery"
	"github.com/agentserver/agentserver/pkg/grpcwin"
)

// GatewayHeader is the response header in which a gateway names itself (read it with
// grpc.Header); it shows which gateway answered a call.
const GatewayHeader = "x-agentserver-gateway"

// Client holds the service clients of one connection to the gateways. Its methods and
// the service clients are safe for concurrent use.
type Client struct {
	// Assistants is the AssistantService.
	Assistants agentserverv1.AssistantServiceClient
	// Runs is the RunService.
	Runs agentserverv1.RunServiceClient
	// Threads is the ThreadService.
	Threads agentserverv1.ThreadServiceClient
	// Cluster is the ClusterService.
	Cluster agentserverv1.ClusterServiceClient

	conn *grpc.ClientConn
}

// Option configures New.
type Option func(*options)

type options struct {
	discovery      discovery.Discovery
	consistentHash bool
	retry          RetryPolicy
	creds          credentials.TransportCredentials
	dial           []grpc.DialOption
}

// WithDiscovery resolves "consul:///<service>" targets through d instead of a Consul
// client configured from the environment.
func WithDiscovery(d discovery.Discovery) Option {
	return func(o *options) { o.discovery = d }
}

// WithConsistentHash routes every call whose context carries a key (WithKey) to the
// gateway that owns the key on a consistent-hash ring of the healthy gateways, or, when
// that one is not reachable, to the next one on the ring; calls without a key are spread
// round-robin. While the set of gateways is stable, the calls about one assistant or
// thread reach one gateway (whose in-memory caches then serve them); when a gateway
// leaves, only its keys move.
func WithConsistentHash() Option {
	return func(o *options) { o.consistentHash = true }
}

// WithRetry replaces DefaultRetryPolicy; a policy with MaxAttempts 1 disables retries.
func WithRetry(p RetryPolicy) Option {
	return func(o *options) { o.retry = p }
}

// WithTransportCredentials sets the connection's credentials (TLS); the default is
// plain text.
func WithTransportCredentials(c credentials.TransportCredentials) Option {
	return func(o *options) { o.creds = c }
}

// WithDialOptions adds options to the connection, after the client's own.
func WithDialOptions(opts ...grpc.DialOption) Option {
	return func(o *options) { o.dial = append(o.dial, opts...) }
}

// WithKey returns a context whose calls a client built WithConsistentHash routes by key:
// an assistant or thread id (or name). Other clients ignore it.
func WithKey(ctx context.Context, key string) context.Context {
	return discovery.WithHashKey(ctx, key)
}

// New returns a client of the gateways at target:
//
//   - "host:port" (or any target gRPC resolves, such as "dns:///name:port"),
//   - "static:///host1:port,host2:port", spread over those addresses,
//   - "consul:///agentserver-gateway", the passing instances of that Consul service,
//     followed as they change; Consul is configured from the environment
//     (CONSUL_HTTP_ADDR, CONSUL_HTTP_TOKEN, ...) unless WithDiscovery says otherwise.
//
// New does not connect: the first call does (and waits for a gateway as gRPC does).
func New(target string, opts ...Option) (*Client, error) {
	o := options{retry: DefaultRetryPolicy()}
	for _, opt := range opts {
		opt(&o)
	}
	if err := o.retry.validate(); err != nil {
		return nil, err
	}
	if strings.TrimSpace(target) == "" {
		return nil, errors.New("client: empty target: want host:port, static:///host:port,... or consul:///agentserver-gateway")
	}
	d := o.discovery
	if d == nil && strings.HasPrefix(target, discovery.SchemeConsul+":") {
		c, err := discovery.NewConsul(discovery.ConsulConfig{})
		if err != nil {
			return nil, fmt.Errorf("client: consul discovery for %s: %w", target, err)
		}
		d = c
	}
	creds := o.creds
	if creds == nil {
		creds = insecure.NewCredentials()
	}
	dial := append(append(grpcwin.DialOptions(), discovery.DialOptions(d)...), grpc.WithTransportCredentials(creds))
	if o.consistentHash {
		dial = append(dial, discovery.WithConsistentHash())
	}
	if o.retry.MaxAttempts > 1 {
		dial = append(dial, grpc.WithChainUnaryInterceptor(o.retry.interceptor()))
	}
	dial = append(dial, o.dial...)
	conn, err := grpc.NewClient(target, dial...)
	if err != nil {
		return nil, fmt.Errorf("client: %s: %w", target, err)
	}
	return &Client{
		Assistants: agentserverv1.NewAssistantServiceClient(conn),
		Runs:       agentserverv1.NewRunServiceClient(conn),
		Threads:    agentserverv1.NewThreadServiceClient(conn),
		Cluster:    agentserverv1.NewClusterServiceClient(conn),
		conn:       conn,
	}, nil
}

// Conn returns the underlying connection, for other services on the same gateways.
func (c *Client) Conn() *grpc.ClientConn { return c.conn }

// Close closes the connection (and stops following Consul).
func (c *Client) Close() error { return c.conn.Close() }
