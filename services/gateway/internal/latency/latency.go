// Package latency measures the gateway's own request latency over a sliding window for
// the autoscaler (GatewayStatsService) and exposes it. It keeps a bounded ring of recent
// samples; it never blocks a request for longer than appending to that ring.
package latency

import (
	"context"
	"slices"
	"strings"
	"sync"
	"time"

	"google.golang.org/grpc"
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
}

// NewWindow keeps up to capacity samples and reports over span.
func NewWindow(span time.Duration, capacity int) *Window {
	return &Window{Span: span, now: time.Now, ring: make([]sample, capacity)}
}

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
		w.Observe(time.Since(start))
		return resp, err
	}
}
