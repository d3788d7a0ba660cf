package metrics

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	gatewayv1 "github.com/agentserver/agentserver/gen/agentserver/gateway/v1"
	schedulerv1 "github.com/agentserver/agentserver/gen/agentserver/scheduler/v1"
	"github.com/agentserver/agentserver/pkg/grpcwin"
)

// DefaultRPCTimeout bounds one statistics call to one scheduler or gateway.
const DefaultRPCTimeout = 5 * time.Second

// SplitTargets splits a comma-separated list of gRPC targets ("host:port",
// "dns:///name:port", "consul:///name", ...), dropping blanks.
func SplitTargets(list string) []string {
	var out []string
	for _, t := range strings.Split(list, ",") {
		if t = strings.TrimSpace(t); t != "" {
			out = append(out, t)
		}
	}
	return out
}

// dialAll creates one client connection per target, with plain-text credentials unless
// opts say otherwise. The targets are handed to grpc.NewClient untouched, so any
// resolver registered in the process (dns, consul, ...) applies. NewClient connects
// lazily: an unreachable target fails the first call, not the dial.
func dialAll(what string, targets []string, opts []grpc.DialOption) ([]*grpc.ClientConn, error) {
	if len(targets) == 0 {
		return nil, fmt.Errorf("%s: no address given", what)
	}
	opts = append(append(grpcwin.DialOptions(), grpc.WithTransportCredentials(insecure.NewCredentials())), opts...)
	conns := make([]*grpc.ClientConn, 0, len(targets))
	for _, t := range targets {
		conn, err := grpc.NewClient(t, opts...)
		if err != nil {
			for _, c := range conns {
				_ = c.Close()
			}
			return nil, fmt.Errorf("%s %q: %w", what, t, err)
		}
		conns = append(conns, conn)
	}
	return conns, nil
}

func closeAll(conns []*grpc.ClientConn) error {
	var errs []error
	for _, c := range conns {
		errs = append(errs, c.Close())
	}
	return errors.Join(errs...)
}

// SchedulerStats implements ClusterStats over the schedulers' GetClusterStats RPC. Every
// scheduler answers for the whole cluster (the figures come from the shared database), so
// one answer is enough: it asks the scheduler that answered last and, when that one
// fails, the next one in the list, until one answers.
type SchedulerStats struct {
	targets []string
	conns   []*grpc.ClientConn
	clients []schedulerv1.SchedulerServiceClient
	timeout time.Duration
	// good is the index of the target to ask first: the last one that answered.
	good atomic.Int64
}

// NewSchedulerStats returns a SchedulerStats over the given targets, each passed to
// grpc.NewClient as is; timeout bounds one call to one scheduler (0 means
// DefaultRPCTimeout). opts are added to the plain-text credentials (tests, TLS). Close
// releases the connections.
func NewSchedulerStats(targets []string, timeout time.Duration, opts ...grpc.DialOption) (*SchedulerStats, error) {
	conns, err := dialAll("scheduler", targets, opts)
	if err != nil {
		return nil, err
	}
	if timeout <= 0 {
		timeout = DefaultRPCTimeout
	}
	s := &SchedulerStats{targets: targets, conns: conns, timeout: timeout}
	for _, c := range conns {
		s.clients = append(s.clients, schedulerv1.NewSchedulerServiceClient(c))
	}
	return s, nil
}

// Close closes the connections.
func (s *SchedulerStats) Close() error { return closeAll(s.conns) }

// ClusterStats implements ClusterStats: the first scheduler that answers, starting from
// the one that answered last. When none answers, the error names each one's failure.
func (s *SchedulerStats) ClusterStats(ctx context.Context) (Cluster, error) {
	n := len(s.clients)
	first := int(s.good.Load())
	var errs []error
	for i := range n {
		idx := (first + i) % n
		callCtx, cancel := context.WithTimeout(ctx, s.timeout)
		resp, err := s.clients[idx].GetClusterStats(callCtx, &schedulerv1.GetClusterStatsRequest{})
		cancel()
		if err == nil {
			var c Cluster
			if c, err = ClusterFromProto(resp); err == nil {
				s.good.Store(int64(idx))
				return c, nil
			}
		}
		errs = append(errs, fmt.Errorf("scheduler %s: %w", s.targets[idx], err))
		if ctx.Err() != nil {
			break
		}
	}
	return Cluster{}, errors.Join(errs...)
}

// ClusterFromProto maps the scheduler's statistics onto a Cluster:
//
//   - QueueDepth is the runs queued and runnable now, by slot type. Runs waiting for a
//     retry backoff ("delayed") are not pressure yet and are left out; they count once
//     their backoff has passed. Running runs show up as used slots.
//   - Workers is ready plus draining workers (lost ones are not reported).
//   - The scheduler sums slots over ready and draining workers; Cluster wants the slots
//     of ready workers only, since a draining worker takes no new run. The ready workers'
//     share is estimated in proportion to their number (total and used alike, used never
//     above total): exact whenever no worker drains, and exact for the totals of a pool
//     of identical workers. While the autoscaler's own scale-down drains a worker, the
//     controller decides nothing for that pool anyway.
//
// Negative figures are an error.
func ClusterFromProto(resp *schedulerv1.GetClusterStatsResponse) (Cluster, error) {
	c := Cluster{QueueDepth: map[string]int{}, Pools: map[string]PoolInventory{}}
	for _, st := range resp.GetSlotTypes() {
		if st.GetQueued() < 0 || st.GetDelayed() < 0 || st.GetRunning() < 0 {
			return Cluster{}, fmt.Errorf("slot type %q: negative run count", st.GetSlotType())
		}
		c.QueueDepth[st.GetSlotType()] += int(st.GetQueued())
	}
	for _, p := range resp.GetPools() {
		ready, draining := int(p.GetWorkersReady()), int(p.GetWorkersDraining())
		if ready < 0 || draining < 0 {
			return Cluster{}, fmt.Errorf("pool %q: negative worker count", p.GetPool())
		}
		inv := c.Pools[p.GetPool()]
		if inv.Slots == nil {
			inv.Slots = map[string]Slots{}
		}
		inv.Ready += ready
		inv.Draining += draining
		inv.Workers += ready + draining
		for _, s := range p.GetSlots() {
			total, used := int(s.GetTotal()), int(s.GetUsed())
			if total < 0 || used < 0 || used > total {
				return Cluster{}, fmt.Errorf("pool %q slot type %q: want 0 <= used <= total (got used %d, total %d)",
					p.GetPool(), s.GetType(), used, total)
			}
			readyTotal, readyUsed := readyShare(total, ready, draining), readyShare(used, ready, draining)
			sl := inv.Slots[s.GetType()]
			sl.Total += readyTotal
			sl.Used += min(readyUsed, readyTotal)
			inv.Slots[s.GetType()] = sl
		}
		c.Pools[p.GetPool()] = inv
	}
	return c, nil
}

// readyShare is the part of n that belongs to ready of ready+draining workers, rounded
// to the nearest count.
func readyShare(n, ready, draining int) int {
	if draining == 0 {
		return n
	}
	if ready == 0 {
		return 0
	}
	return int(math.Round(float64(n) * float64(ready) / float64(ready+draining)))
}

// GatewayStats implements GatewayLatency over the GetLatency RPC of every gateway.
//
// The gateways' p95 is the largest p95 among the gateways whose window holds a request.
// With nearest-rank percentiles that is an upper bound of the p95 of all their requests
// together (at most 5 % of each gateway's requests, hence of all of them, are slower), so
// it never understates the latency: the gateways grow when any one of them is slow and
// shrink only when every one of them is fast. A count-weighted mean of p95s would be
// neither a percentile nor a bound, and would hide one overloaded gateway behind busy
// healthy ones. The price: a gateway that saw a handful of slow requests counts fully;
// the policy's sustained window is what keeps such noise from scaling.
//
// Each target is one gateway: a target that resolves to several addresses (a DNS name)
// reports whichever gateway the call reaches. For Consul names use InstanceGatewayStats,
// which asks every listed instance.
type GatewayStats struct {
	targets []string
	conns   []*grpc.ClientConn
	clients []gatewayv1.GatewayStatsServiceClient
	timeout time.Duration
	log     *slog.Logger
}

// NewGatewayStats returns a GatewayStats over the given targets, each passed to
// grpc.NewClient as is; timeout bounds one call (0 means DefaultRPCTimeout); log reports
// gateways that do not answer (nil discards). opts are added to the plain-text
// credentials. Close releases the connections.
func NewGatewayStats(targets []string, timeout time.Duration, log *slog.Logger, opts ...grpc.DialOption) (*GatewayStats, error) {
	conns, err := dialAll("gateway", targets, opts)
	if err != nil {
		return nil, err
	}
	if timeout <= 0 {
		timeout = DefaultRPCTimeout
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	g := &GatewayStats{targets: targets, conns: conns, timeout: timeout, log: log}
	for _, c := range conns {
		g.clients = append(g.clients, gatewayv1.NewGatewayStatsServiceClient(c))
	}
	return g, nil
}

// Close closes the connections.
func (g *GatewayStats) Close() error { return closeAll(g.conns) }

// GatewayReading is one gateway's answer.
type GatewayReading struct {
	// Target the answer came from.
	Target string
	// Count of requests in the gateway's window.
	Count int64
	// P95 over the window; meaningless when Count is 0.
	P95 time.Duration
}

// Latencies asks every gateway at once and returns the answers in target order, with
// the failures of those that did not answer (joined).
func (g *GatewayStats) Latencies(ctx context.Context) ([]GatewayReading, error) {
	answers := make([]*GatewayReading, len(g.clients))
	errs := make([]error, len(g.clients))
	var wg sync.WaitGroup
	for i, client := range g.clients {
		wg.Go(func() {
			callCtx, cancel := context.WithTimeout(ctx, g.timeout)
			defer cancel()
			resp, err := client.GetLatency(callCtx, &gatewayv1.GetLatencyRequest{})
			switch {
			case err != nil:
				errs[i] = fmt.Errorf("gateway %s: %w", g.targets[i], err)
			case resp.GetCount() < 0 || resp.GetP95().AsDuration() < 0:
				errs[i] = fmt.Errorf("gateway %s: negative count or p95", g.targets[i])
			default:
				answers[i] = &GatewayReading{Target: g.targets[i], Count: resp.GetCount(), P95: resp.GetP95().AsDuration()}
			}
		})
	}
	wg.Wait()
	var out []GatewayReading
	for _, a := range answers {
		if a != nil {
			out = append(out, *a)
		}
	}
	return out, errors.Join(errs...)
}

// GatewayP95 implements GatewayLatency: the largest p95 among the gateways that answered
// with a non-empty window; ok is false when none of them saw a request. Gateways that do
// not answer are logged and left out, so one dead address does not freeze the gateways'
// scaling; when none answers, the error names each one's failure.
func (g *GatewayStats) GatewayP95(ctx context.Context) (time.Duration, bool, error) {
	lat, err := g.Latencies(ctx)
	if len(lat) == 0 {
		return 0, false, err
	}
	if err != nil {
		g.log.Warn("some gateways did not report their latency; using the others", "answered", len(lat), "err", err)
	}
	p95, ok := CombineP95(lat)
	return p95, ok, nil
}

// CombineP95 is the largest p95 among the answers with a non-empty window; ok is false
// when every window is empty (see GatewayStats for why the maximum).
func CombineP95(lat []GatewayReading) (p95 time.Duration, ok bool) {
	for _, l := range lat {
		if l.Count > 0 {
			p95, ok = max(p95, l.P95), true
		}
	}
	return p95, ok
}
