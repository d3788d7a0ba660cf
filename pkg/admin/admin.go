// Package admin serves a service's operational HTTP endpoints: GET /healthz (liveness: the
// process serves), GET /readyz (readiness: the service's own check) and GET /metrics
// (Prometheus). It never serves the public API.
package admin

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Server is an admin endpoint.
type Server struct {
	lis  net.Listener
	http *http.Server
	log  *slog.Logger
}

// Listen binds addr. ready reports why the service is not ready (nil when it is).
// /metrics serves the process's default registry (the Go runtime's metrics and the
// package-level ones) and collectors, which belong to this server alone: several
// services in one process (the all-in-one, tests) each serve their own.
func Listen(addr string, ready func(context.Context) error, log *slog.Logger, collectors ...prometheus.Collector) (*Server, error) {
	reg := prometheus.NewRegistry()
	for _, c := range collectors {
		if err := reg.Register(c); err != nil {
			return nil, fmt.Errorf("registering the admin endpoint's metrics: %w", err)
		}
	}
	lis, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("listening for the admin endpoint on %s (port taken? change the admin address): %w", addr, err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		_, _ = w.Write([]byte("ok\n"))
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, r *http.Request) {
		ctx, cancel := context.WithTimeout(r.Context(), 5*time.Second)
		defer cancel()
		if err := ready(ctx); err != nil {
			http.Error(w, "not ready: "+err.Error(), http.StatusServiceUnavailable)
			return
		}
		_, _ = w.Write([]byte("ready\n"))
	})
	// A collector that cannot read its source (the database, say) reports the error in
	// the log and leaves its metrics out; the rest are still served.
	mux.Handle("GET /metrics", promhttp.InstrumentMetricHandler(reg, promhttp.HandlerFor(
		prometheus.Gatherers{prometheus.DefaultGatherer, reg},
		promhttp.HandlerOpts{ErrorLog: slogErrorLog{log}, ErrorHandling: promhttp.ContinueOnError})))
	return &Server{lis: lis, http: &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}, log: log}, nil
}

// Addr is where it listens.
func (s *Server) Addr() net.Addr { return s.lis.Addr() }

// Run serves until ctx ends.
func (s *Server) Run(ctx context.Context) error {
	go func() {
		<-ctx.Done()
		shutdown, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		defer cancel()
		_ = s.http.Shutdown(shutdown)
	}()
	if err := s.http.Serve(s.lis); err != nil && !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("serving admin endpoint: %w", err)
	}
	return nil
}

// slogErrorLog is promhttp's error log on a slog.Logger.
type slogErrorLog struct{ log *slog.Logger }

func (l slogErrorLog) Println(v ...any) { l.log.Warn("serving /metrics", "err", fmt.Sprint(v...)) }
