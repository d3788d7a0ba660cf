package cli

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"strings"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"

	"github.com/agentserver/agentserver/pkg/grpcwin"
	"github.com/agentserver/agentserver/pkg/rawio"
)

// retryServiceConfig retries calls that are safe to repeat when the gateway is briefly
// unavailable (a restart, a rolling deploy): reads, WaitRun and the idempotent CancelRun.
// Creates, updates, deletes and ResumeRun are never retried here. StreamRunEvents is not
// either: `runs watch` resumes a broken stream itself, after the last event it received.
const retryServiceConfig = `{
  "methodConfig": [{
    "name": [
      {"service": "agentserver.v1.AssistantService", "method": "GetAssistant"},
      {"service": "agentserver.v1.AssistantService", "method": "ListAssistants"},
      {"service": "agentserver.v1.RunService", "method": "GetRun"},
      {"service": "agentserver.v1.RunService", "method": "ListRuns"},
      {"service": "agentserver.v1.RunService", "method": "WaitRun"},
      {"service": "agentserver.v1.RunService", "method": "CancelRun"},
      {"service": "agentserver.v1.RunService", "method": "ListRunEvents"},
      {"service": "agentserver.v1.ThreadService", "method": "GetThread"},
      {"service": "agentserver.v1.ThreadService", "method": "ListThreads"},
      {"service": "agentserver.v1.ThreadService", "method": "GetThreadState"},
      {"service": "agentserver.v1.ClusterService", "method": "ListWorkers"}
    ],
    "retryPolicy": {
      "maxAttempts": 4,
      "initialBackoff": "0.2s",
      "maxBackoff": "2s",
      "backoffMultiplier": 2,
      "retryableStatusCodes": ["UNAVAILABLE"]
    }
  }]
}`

// dial returns the connection to the gateway, creating it on first use. grpc.NewClient does
// not connect; the first call does, so commands that fail before calling cost nothing.
func (a *app) dial() (*grpc.ClientConn, error) {
	if a.conn != nil {
		return a.conn, nil
	}
	opts := append(grpcwin.DialOptions(),
		// The gateway's public gRPC port is plaintext today; TLS would be a flag here.
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDefaultServiceConfig(retryServiceConfig),
		grpc.WithUserAgent("agentctl"),
	)
	if a.noRetry {
		opts = append(opts, grpc.WithDisableRetry())
	}
	if dial := rawDialer(a.cfg.Addr, http.ProxyFromEnvironment); dial != nil {
		opts = append(opts, grpc.WithContextDialer(dial))
	}
	if a.cfg.APIKey != "" {
		opts = append(opts,
			grpc.WithUnaryInterceptor(bearerInterceptor(a.cfg.APIKey)),
			grpc.WithStreamInterceptor(bearerStreamInterceptor(a.cfg.APIKey)))
	}
	conn, err := grpc.NewClient(a.cfg.Addr, opts...)
	if err != nil {
		return nil, usageErrorf("--addr %q: %v", a.cfg.Addr, err)
	}
	a.conn = conn
	return conn, nil
}

// rawDialer returns a dialer whose connections read and write with raw system calls
// (pkg/rawio), as the gateway's own connections do: a Go program that makes many calls
// (`agentctl bench` above all) otherwise spends a large share of its CPU in the runtime's
// system-call hand-offs and monitor wake-ups (the load client's CPU per run, against the
// server's, −16 to −20 % under sustained load; docs/performance-history.md, seventeenth pass).
// It returns nil, leaving
// gRPC's own dialer, for a target other than host:port (a scheme, a Unix socket) and when
// an HTTPS proxy applies to the target, since gRPC goes through the proxy only with its own
// dialer. proxy is http.ProxyFromEnvironment, which gRPC consults too.
func rawDialer(target string, proxy func(*http.Request) (*url.URL, error)) func(context.Context, string) (net.Conn, error) {
	if strings.Contains(target, ":/") || strings.HasPrefix(target, "unix:") {
		return nil
	}
	if _, _, err := net.SplitHostPort(target); err != nil {
		return nil
	}
	if p, err := proxy(&http.Request{URL: &url.URL{Scheme: "https", Host: target}}); err != nil || p != nil {
		return nil
	}
	dial := rawio.Dial((&net.Dialer{}).DialContext)
	return func(ctx context.Context, addr string) (net.Conn, error) {
		return dial(ctx, "tcp", addr)
	}
}

// bearerInterceptor adds "authorization: Bearer <key>" to every call. It is an interceptor
// rather than PerRPCCredentials because those refuse plaintext connections, and the key must
// also reach a gateway on localhost without TLS.
func bearerInterceptor(key string) grpc.UnaryClientInterceptor {
	value := fmt.Sprintf("Bearer %s", key)
	return func(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
		ctx = metadata.AppendToOutgoingContext(ctx, "authorization", value)
		return invoker(ctx, method, req, reply, cc, opts...)
	}
}

// bearerStreamInterceptor is bearerInterceptor for streaming calls (StreamRunEvents).
func bearerStreamInterceptor(key string) grpc.StreamClientInterceptor {
	value := fmt.Sprintf("Bearer %s", key)
	return func(ctx context.Context, desc *grpc.StreamDesc, cc *grpc.ClientConn, method string, streamer grpc.Streamer, opts ...grpc.CallOption) (grpc.ClientStream, error) {
		ctx = metadata.AppendToOutgoingContext(ctx, "authorization", value)
		return streamer(ctx, desc, cc, method, opts...)
	}
}
