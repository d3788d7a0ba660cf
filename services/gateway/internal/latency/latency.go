// Package latency measures the gateway's own request latency over a sliding window for
// the autoscaler (GatewayStatsService) and exposes it, and in a Prometheus histogram by
// method and status code for the admin endpoint's /metrics. It keeps a bounded ring of
// recent samples; it never blocks a request for longer than appending to that ring.
package latency

import (
	"context"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"

	gatewayv1 "github.com/agentserver/agentserver/gen/agentserver/gateway/v1"
)

type sample struct {
	at time.Time
	d  time.Duration
}

// Window records request latencies and reports percentiles over the last Span.
type Window struct {
	gatewayv1.UnimplementedGatewayStatsServiceServer

	// Span is the length of the sliding window.
	Span time.Duration
	now  func() time.Time

	mu    sync.Mutex
	ring  []sample
	next  int
	count int

	hist *prometheus.HistogramVec
}

// NewWindow keeps up to capacity samples and reports over span.
func NewWindow(span time.Duration, capacity int) *Window {
	return &Window{Span: span, now: time.Now, ring: make([]sample, capacity), hist: prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name: "agentserver_gateway_request_duration_seconds",
		Help: "Time this gateway took to answer a unary API call (REST calls included: they pass through the gRPC API), by method and status code; WaitRun, which blocks by design, and health checks are left out.",
		// From a fraction of a millisecond (a CreateRun under load) to the longest calls.
		Buckets: []float64{0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10},
	}, []string{"method", "code"})}
}

// Collector is the histogram of the calls' latencies, for the admin endpoint.
func (w *Window) Collector() prometheus.Collector { return w.hist }

// Observe records one request's latency.
func (w *Window) Observe(d time.Duration) {
	w.mu.Lock()
	w.ring[w.next] = sample{w.now(), d}
	w.next = (w.next + 1) % len(w.ring)
	w.count = min(w.count+1, len(w.ring))
	w.mu.Unlock()
}

// Percentiles returns the number of samples in the window and the latencies at the given
// quantiles (0..1), by nearest rank.
func (w *Window) Percentiles(qs ...float64) (int, []time.Duration) {
	cutoff := w.now().Add(-w.Span)
	w.mu.Lock()
	ds := make([]time.Duration, 0, w.count)
	for i := 0; i < w.count; i++ {
		if s := w.ring[i]; s.at.After(cutoff) {
			ds = append(ds, s.d)
		}
	}
	w.mu.Unlock()
	slices.Sort(ds)
	out := make([]time.Duration, len(qs))
	if len(ds) == 0 {
		return 0, out
	}
	for i, q := range qs {
		idx := int(q*float64(len(ds))+0.999999) - 1
		out[i] = ds[min(max(idx, 0), len(ds)-1)]
	}
	return len(ds), out
}

// GetLatency serves GatewayStatsService.
func (w *Window) GetLatency(context.Context, *gatewayv1.GetLatencyRequest) (*gatewayv1.GetLatencyResponse, error) {
	n, p := w.Percentiles(0.50, 0.95, 0.99)
	return &gatewayv1.GetLatencyResponse{
		Window: durationpb.New(w.Span), Count: int64(n),
		P50: durationpb.New(p[0]), P95: durationpb.New(p[1]), P99: durationpb.New(p[2]),
	}, nil
}

// excluded lists methods that block by design and would only distort the figures.
func excluded(method string) bool {
	return strings.HasSuffix(method, "/WaitRun") || strings.HasPrefix(method, "/grpc.health.") ||
		strings.HasPrefix(method, "/agentserver.gateway.v1.")
}

// Interceptor records the latency of every unary API call.
func (w *Window) Interceptor() grpc.UnaryServerInterceptor {
	return func(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
		if excluded(info.FullMethod) {
			return handler(ctx, req)
		}
		start := time.Now()
		resp, err := handler(ctx, req)
		d := time.Since(start)
		w.Observe(d)
		w.hist.WithLabelValues(info.FullMethod, status.Code(err).String()).Observe(d.Seconds())
		return resp, err
	}
}
