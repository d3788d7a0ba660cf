// Package gateway is the gateway service: the public API over gRPC, and over REST through
// grpc-gateway on a client connection to that same gRPC server, so every interceptor
// (errors, limits, and later auth and tracing) applies to both. It is stateless: any
// gateway serves any request, and all state is in PostgreSQL.
package gateway

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"time"

	"github.com/google/uuid"
	"github.com/grpc-ecosystem/grpc-gateway/v2/runtime"
	"golang.org/x/sync/errgroup"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/protobuf/encoding/protojson"

	gatewayv1 "github.com/agentserver/agentserver/gen/agentserver/gateway/v1"
	agentserverv1 "github.com/agentserver/agentserver/gen/agentserver/v1"
	"github.com/agentserver/agentserver/pkg/admin"
	"github.com/agentserver/agentserver/pkg/config"
	"github.com/agentserver/agentserver/pkg/grpcwin"
	"github.com/agentserver/agentserver/pkg/rawio"
	"github.com/agentserver/agentserver/pkg/store"
	"github.com/agentserver/agentserver/services/gateway/internal/api"
	"github.com/agentserver/agentserver/services/gateway/internal/latency"
)

// Config configures a gateway.
type Config struct {
	// ID names this gateway instance (its discovery id, and the value of the
	// x-agentserver-gateway response header); generated when empty.
	ID string
	// HTTPAddr serves REST and GET /healthz (port 0 picks a free port).
	HTTPAddr string
	// GRPCAddr serves the gRPC API.
	GRPCAddr string
	// MaxRequestBytes bounds a request body or message.
	MaxRequestBytes int
	// DefaultMaxAttempts applies to runs of assistants that set none.
	DefaultMaxAttempts int
	// DefaultTimeout applies to runs when neither run nor assistant sets one.
	DefaultTimeout time.Duration
	// MaxTimeout is the cluster maximum execution timeout.
	MaxTimeout time.Duration
	// AssistantCacheTTL is how long GetAssistant answers from memory (api.AssistantCache);
	// 0 disables the cache.
	AssistantCacheTTL time.Duration
	// AdminAddr serves /healthz, /readyz and /metrics (the API calls' latency histogram);
	// empty disables it.
	AdminAddr string
}

// Defaults returns the default configuration (REST :8080, gRPC :9090).
func Defaults() Config {
	l := api.DefaultLimits()
	return Config{
		HTTPAddr: ":8080", GRPCAddr: ":9090", MaxRequestBytes: 4 << 20,
		DefaultMaxAttempts: int(l.DefaultMaxAttempts), DefaultTimeout: l.DefaultTimeout, MaxTimeout: l.MaxTimeout,
		AssistantCacheTTL: api.DefaultAssistantCacheTTL,
	}
}

// Bind registers the gateway's settings on set, with cfg's values as defaults.
func Bind(set *config.Set, cfg *Config) {
	set.String(&cfg.ID, "id", "GATEWAY_ID", cfg.ID, "instance id (generated when empty)")
	set.String(&cfg.HTTPAddr, "http-addr", "GATEWAY_HTTP_ADDR", cfg.HTTPAddr, "REST and /healthz listen address")
	set.String(&cfg.GRPCAddr, "grpc-addr", "GATEWAY_GRPC_ADDR", cfg.GRPCAddr, "gRPC listen address")
	set.Int(&cfg.MaxRequestBytes, "max-request-bytes", "GATEWAY_MAX_REQUEST_BYTES", cfg.MaxRequestBytes, "largest request accepted")
	set.Int(&cfg.DefaultMaxAttempts, "default-max-attempts", "AGENTSERVER_DEFAULT_MAX_ATTEMPTS", cfg.DefaultMaxAttempts, "attempts of a run whose assistant sets none")
	set.Duration(&cfg.DefaultTimeout, "default-timeout", "AGENTSERVER_DEFAULT_TIMEOUT", cfg.DefaultTimeout, "execution timeout of a run when neither run nor assistant sets one")
	set.Duration(&cfg.MaxTimeout, "max-timeout", "AGENTSERVER_MAX_TIMEOUT", cfg.MaxTimeout, "cluster maximum execution timeout")
	set.Duration(&cfg.AssistantCacheTTL, "assistant-cache-ttl", "GATEWAY_ASSISTANT_CACHE_TTL", cfg.AssistantCacheTTL,
		"how long GetAssistant answers from this gateway's memory; an update through another gateway shows after at most this (0: off)")
	set.String(&cfg.AdminAddr, "admin-addr", "GATEWAY_ADMIN_ADDR", cfg.AdminAddr, "/healthz, /readyz and /metrics address, e.g. :9094 (empty: off)")
}

// Validate reports the first setting a person must fix.
func (c *Config) Validate() error {
	switch {
	case c.MaxRequestBytes < 1024:
		return fmt.Errorf("max request bytes (%d) must be at least 1024", c.MaxRequestBytes)
	case c.DefaultMaxAttempts < 1:
		return fmt.Errorf("default max attempts (%d) must be at least 1", c.DefaultMaxAttempts)
	case c.DefaultTimeout <= 0 || c.MaxTimeout < c.DefaultTimeout:
		return fmt.Errorf("timeouts must satisfy 0 < default (%s) <= max (%s)", c.DefaultTimeout, c.MaxTimeout)
	case c.AssistantCacheTTL < 0:
		return fmt.Errorf("assistant cache TTL (%s) must not be negative", c.AssistantCacheTTL)
	}
	return nil
}

// Server is a gateway instance.
type Server struct {
	cfg     Config
	log     *slog.Logger
	grpcLis net.Listener
	httpLis net.Listener
	grpc    *grpc.Server
	health  *health.Server
	http    *http.Server
	conn    *grpc.ClientConn
	runs    *api.Runs
	admin   *admin.Server // nil without Config.AdminAddr
}

// createBatch is the most runs one group-commit of concurrent CreateRun calls writes.
const createBatch = 256

// streamWorkers is how many goroutines serve calls and keep their grown stacks between
// calls (a call finding all of them busy gets a goroutine of its own, as without them):
// a fresh goroutine per call grows its stack again for every CreateRun.
const streamWorkers = 64

// New builds a gateway and binds its listeners.
func New(cfg Config, st *store.Store, log *slog.Logger) (_ *Server, err error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("gateway configuration: %w", err)
	}
	if cfg.ID == "" {
		cfg.ID = "gateway-" + uuid.NewString()[:8]
	}
	limits := api.Limits{
		DefaultMaxAttempts: int32(cfg.DefaultMaxAttempts), DefaultTimeout: cfg.DefaultTimeout,
		MaxTimeout: cfg.MaxTimeout, MaxWait: api.DefaultLimits().MaxWait,
	}
	grpcLis, err := net.Listen("tcp", cfg.GRPCAddr)
	if err != nil {
		return nil, fmt.Errorf("listening for gRPC on %s (port taken? set GATEWAY_GRPC_ADDR): %w", cfg.GRPCAddr, err)
	}
	httpLis, err := net.Listen("tcp", cfg.HTTPAddr)
	if err != nil {
		grpcLis.Close()
		return nil, fmt.Errorf("listening for HTTP on %s (port taken? set GATEWAY_HTTP_ADDR): %w", cfg.HTTPAddr, err)
	}
	// The gRPC server's connections read and write with raw system calls (package rawio);
	// 20 s is the TCP_USER_TIMEOUT gRPC sets from its default keepalive timeout.
	grpcLis = rawio.Listener(grpcLis, 20*time.Second)
	s := &Server{cfg: cfg, log: log, grpcLis: grpcLis, httpLis: httpLis, health: health.NewServer()}
	defer func() {
		if err != nil {
			s.abandon()
		}
	}()
	window := latency.NewWindow(time.Minute, 1<<16)
	s.grpc = grpc.NewServer(append(grpcwin.ServerOptions(),
		grpc.MaxRecvMsgSize(cfg.MaxRequestBytes),
		grpc.NumStreamWorkers(streamWorkers),
		grpc.ChainUnaryInterceptor(unaryGatewayHeader(cfg.ID), window.Interceptor(), api.UnaryErrors(log)),
		grpc.ChainStreamInterceptor(streamGatewayHeader(cfg.ID), api.StreamErrors(log)),
	)...)
	agentserverv1.RegisterAssistantServiceServer(s.grpc, &api.Assistants{
		Store: st, Limits: limits, Log: log, Cache: api.NewAssistantCache(cfg.AssistantCacheTTL),
	})
	s.runs = api.NewRuns(st, limits, log, createBatch)
	agentserverv1.RegisterRunServiceServer(s.grpc, s.runs)
	agentserverv1.RegisterClusterServiceServer(s.grpc, &api.Cluster{Store: st, Log: log})
	agentserverv1.RegisterThreadServiceServer(s.grpc, &api.Threads{Store: st, Log: log})
	healthpb.RegisterHealthServer(s.grpc, s.health)
	gatewayv1.RegisterGatewayStatsServiceServer(s.grpc, window)

	s.conn, err = grpc.NewClient(loopback(grpcLis.Addr()), append(grpcwin.DialOptions(),
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(64<<20), grpc.MaxCallSendMsgSize(cfg.MaxRequestBytes)))...)
	if err != nil {
		return nil, fmt.Errorf("connecting REST to gRPC: %w", err)
	}
	mux := runtime.NewServeMux(
		runtime.WithMarshalerOption(runtime.MIMEWildcard, &jsonBody{runtime.JSONPb{
			MarshalOptions:   protojson.MarshalOptions{EmitUnpopulated: true},
			UnmarshalOptions: protojson.UnmarshalOptions{DiscardUnknown: false},
		}}),
		runtime.WithHealthzEndpoint(healthpb.NewHealthClient(s.conn)),
	)
	ctx := context.Background()
	for _, register := range []func(context.Context, *runtime.ServeMux, *grpc.ClientConn) error{
		agentserverv1.RegisterAssistantServiceHandler,
		agentserverv1.RegisterRunServiceHandler,
		agentserverv1.RegisterClusterServiceHandler,
		agentserverv1.RegisterThreadServiceHandler,
	} {
		if err := register(ctx, mux, s.conn); err != nil {
			return nil, fmt.Errorf("registering REST handlers: %w", err)
		}
	}
	if err := mux.HandlePath(http.MethodGet, "/v1/runs/{run}/events", eventsHandler(mux, s.conn)); err != nil {
		return nil, fmt.Errorf("registering the events endpoint: %w", err)
	}
	s.http = &http.Server{Handler: limitBody(mux, int64(cfg.MaxRequestBytes)), ReadHeaderTimeout: 10 * time.Second}
	if cfg.AdminAddr != "" {
		if s.admin, err = admin.Listen(cfg.AdminAddr, func(ctx context.Context) error { return st.Pool().Ping(ctx) }, log, window.Collector()); err != nil {
			return nil, err
		}
	}
	return s, nil
}

// abandon releases what New opened before it failed: the listeners, the gRPC server's
// stream workers, the create batcher and readers, and the REST side's connection.
func (s *Server) abandon() {
	if s.grpc != nil {
		s.grpc.Stop()
	}
	if s.runs != nil {
		s.runs.Close()
	}
	if s.conn != nil {
		s.conn.Close()
	}
	s.grpcLis.Close()
	s.httpLis.Close()
}

// AdminAddr is the address of /healthz, /readyz and /metrics; nil when Config.AdminAddr
// is empty.
func (s *Server) AdminAddr() net.Addr {
	if s.admin == nil {
		return nil
	}
	return s.admin.Addr()
}

// limitBody refuses bodies over n bytes (the handler then answers 400).
func limitBody(h http.Handler, n int64) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		r.Body = http.MaxBytesReader(w, r.Body, n)
		h.ServeHTTP(w, r)
	})
}

// loopback turns a listen address such as [::]:9090 into one a client can dial.
func loopback(a net.Addr) string {
	tcp, ok := a.(*net.TCPAddr)
	if !ok || tcp.IP.IsUnspecified() {
		return fmt.Sprintf("127.0.0.1:%d", tcp.Port)
	}
	return tcp.String()
}

// ID is this instance's id.
func (s *Server) ID() string { return s.cfg.ID }

// GRPCAddr is the address of the gRPC listener.
func (s *Server) GRPCAddr() net.Addr { return s.grpcLis.Addr() }

// HTTPAddr is the address of the REST listener.
func (s *Server) HTTPAddr() net.Addr { return s.httpLis.Addr() }

// Run serves until ctx ends, then drains in-flight requests.
func (s *Server) Run(ctx context.Context) error {
	g, ctx := errgroup.WithContext(ctx)
	g.Go(func() error {
		if err := s.grpc.Serve(s.grpcLis); err != nil && !errors.Is(err, grpc.ErrServerStopped) {
			return fmt.Errorf("serving gRPC: %w", err)
		}
		return nil
	})
	g.Go(func() error {
		if err := s.http.Serve(s.httpLis); err != nil && !errors.Is(err, http.ErrServerClosed) {
			return fmt.Errorf("serving HTTP: %w", err)
		}
		return nil
	})
	g.Go(func() error {
		<-ctx.Done()
		s.health.Shutdown()
		shutdownCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
		defer cancel()
		_ = s.http.Shutdown(shutdownCtx)
		stopped := make(chan struct{})
		go func() { s.grpc.GracefulStop(); close(stopped) }()
		select {
		case <-stopped:
		case <-shutdownCtx.Done():
			s.grpc.Stop()
		}
		s.runs.Close()
		return s.conn.Close()
	})
	if s.admin != nil {
		g.Go(func() error { return s.admin.Run(ctx) })
	}
	s.log.Info("gateway serving", "http", s.httpLis.Addr().String(), "grpc", s.grpcLis.Addr().String())
	return g.Wait()
}

// jsonBody is the REST marshaler: protojson, with decode errors that say the request body
// is at fault.
type jsonBody struct {
	runtime.JSONPb
}

// NewDecoder wraps decode errors with what to fix.
func (m *jsonBody) NewDecoder(r io.Reader) runtime.Decoder {
	d := m.JSONPb.NewDecoder(r)
	return runtime.DecoderFunc(func(v any) error {
		if err := d.Decode(v); err != nil {
			if errors.Is(err, io.EOF) {
				return err
			}
			return fmt.Errorf("request body is not valid JSON for this method: %w", err)
		}
		return nil
	})
}
