package distributed

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/structpb"

	agentserverv1 "github.com/agentserver/agentserver/gen/agentserver/v1"
	"github.com/agentserver/agentserver/pkg/client"
	"github.com/agentserver/agentserver/pkg/discovery/announce"
	"github.com/agentserver/agentserver/pkg/proctest"
	"github.com/agentserver/agentserver/pkg/store"
)

// attemptsKey carries a per-call attempt counter from the test to its interceptor.
type attemptsKey struct{}

// countAttempts counts every attempt of a call (the client's retry interceptor runs
// before it) in the counter its context carries, and every UNAVAILABLE in unavailable.
func countAttempts(unavailable *atomic.Int64) grpc.DialOption {
	return grpc.WithChainUnaryInterceptor(func(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
		if n, ok := ctx.Value(attemptsKey{}).(*atomic.Int32); ok {
			n.Add(1)
		}
		err := invoker(ctx, method, req, reply, cc, opts...)
		if status.Code(err) == codes.Unavailable {
			unavailable.Add(1)
		}
		return err
	})
}

// TestFailover runs the distributed mode through the loss of a gateway and of a
// scheduler: two gateways, two schedulers and three workers registered with one Consul
// agent, one PostgreSQL. A client that resolves consul:///agentserver-gateway keeps
// submitting runs (CreateRun with a request_id) while others wait on runs (WaitRun);
// one gateway is killed -9, then the scheduler holding most workers. Every call must
// succeed, within one retry; the killed gateway must leave the healthy set within its
// check window; the workers of the killed scheduler must re-register with the other
// through Consul; and every run must end SUCCEEDED, executed exactly once.
func TestFailover(t *testing.T) {
	const (
		total           = 200
		submitters      = 4
		waiters         = 2
		killGatewayAt   = 50
		killSchedulerAt = 110
	)
	c := newCluster(t)
	g1 := c.startGateway("gateway-1")
	c.startGateway("gateway-2")
	s1 := c.startScheduler("scheduler-1")
	s2 := c.startScheduler("scheduler-2")
	for i := range 3 {
		c.startWorker(fmt.Sprintf("worker-%d", i+1), "cpu=2")
	}

	// What the processes registered.
	gws := c.passing(announce.Gateway)
	require.Len(t, gws, 2)
	require.Equal(t, "127.0.0.1", gws["gateway-1"].Address)
	require.Equal(t, g1.grpcAddr, gws["gateway-1"].Addr())
	require.NotEmpty(t, gws["gateway-1"].Meta["http_port"])
	require.Len(t, c.passing(announce.Scheduler), 2)
	ws := c.passing(announce.Worker)
	require.Len(t, ws, 3)
	for id, w := range ws {
		require.Subset(t, w.Tags, []string{"pool-cpu-pool", "cpu"}, "worker %s", id)
		require.Equal(t, "cpu=2", w.Meta["slots"], "worker %s", id)
	}

	var unavailable atomic.Int64
	cl := c.newClient(client.WithDialOptions(countAttempts(&unavailable)))
	c.createAssistant(cl, "work", 150)

	type result struct {
		name     string
		err      error
		attempts int32
	}
	var (
		results   [total]result
		next      atomic.Int64
		submitted atomic.Int64
		inflight  atomic.Int64
		latest    atomic.Value // the name of the last run created
		waits     atomic.Int64
		waitErrs  = make(chan error, 1000)
		wg        sync.WaitGroup
		done      = make(chan struct{})
	)
	pace := time.NewTicker(20 * time.Millisecond)
	defer pace.Stop()
	for range submitters {
		wg.Go(func() {
			for {
				i := int(next.Add(1) - 1)
				if i >= total {
					return
				}
				<-pace.C
				input, _ := structpb.NewStruct(map[string]any{"i": float64(i)})
				var n atomic.Int32
				ctx := context.WithValue(t.Context(), attemptsKey{}, &n)
				inflight.Add(1)
				r, err := cl.Runs.CreateRun(ctx, &agentserverv1.CreateRunRequest{
					Run:       &agentserverv1.Run{Assistant: "assistants/work", Input: input},
					RequestId: fmt.Sprintf("req-%d", i),
				})
				inflight.Add(-1)
				results[i] = result{name: r.GetName(), err: err, attempts: n.Load()}
				if err == nil {
					latest.Store(r.GetName())
				}
				submitted.Add(1)
			}
		})
	}
	// Long polls in flight on both gateways, so the kill cuts some of them.
	var waitersWG sync.WaitGroup
	for range waiters {
		waitersWG.Go(func() {
			for {
				select {
				case <-done:
					return
				default:
				}
				name, _ := latest.Load().(string)
				if name == "" {
					<-pace.C
					continue
				}
				var n atomic.Int32
				ctx := context.WithValue(t.Context(), attemptsKey{}, &n)
				_, err := cl.Runs.WaitRun(ctx, &agentserverv1.WaitRunRequest{Name: name, Timeout: durationpb.New(2 * time.Second)})
				waits.Add(1)
				if err != nil {
					waitErrs <- fmt.Errorf("WaitRun %s after %d attempts: %w", name, n.Load(), err)
				} else if n.Load() > 2 {
					waitErrs <- fmt.Errorf("WaitRun %s needed %d attempts", name, n.Load())
				}
			}
		})
	}

	waitSubmitted := func(n int64) {
		proctest.Eventually(t, 120*time.Second, fmt.Sprintf("%d runs submitted", n), func() (bool, string) {
			return submitted.Load() >= n, fmt.Sprint(submitted.Load())
		})
	}

	// A gateway hangs (SIGSTOP) with calls in flight, then is killed -9: the calls it
	// held fail UNAVAILABLE and are retried on the other gateway. Consul's gRPC check
	// takes it out of the healthy set at its next run (interval 1 s, timeout 1 s); the
	// processes sharing its Consul agent reap it from the catalog once it has been
	// critical for deregisterAfter (Consul alone would take a minute or more).
	waitSubmitted(killGatewayAt)
	hung := time.Now()
	g1.Signal(syscall.SIGSTOP)
	stuck := int64(0)
	proctest.Eventually(t, 30*time.Second, "CreateRun calls stuck on the hung gateway", func() (bool, string) {
		// Calls routed to gateway-1 hang; the others complete. Wait for a few (or
		// for the end of the submissions, if the retries drained them elsewhere).
		stuck = inflight.Load()
		return stuck >= 2 || next.Load() >= total, fmt.Sprintf("%d in flight", stuck)
	})
	killed := g1.Kill()
	proctest.Eventually(t, 3*checkInterval+10*time.Second, "gateway-1 out of the healthy set", func() (bool, string) {
		_, ok := c.passing(announce.Gateway)["gateway-1"]
		return !ok, "still passing"
	})
	gatewayOut, gatewayOutSinceKill := time.Since(hung), time.Since(killed)
	proctest.Eventually(t, deregisterAfter+10*time.Second, "gateway-1 out of the catalog", func() (bool, string) {
		return !c.inCatalog(announce.Gateway, "gateway-1"), "still in the catalog"
	})
	gatewayReaped := time.Since(killed)

	// Kill -9 the scheduler with most workers: they find the other through Consul.
	waitSubmitted(killSchedulerAt)
	victim, survivor := s1, s2
	var moved []string
	for _, w := range []string{"worker-1", "worker-2", "worker-3"} {
		sched, _, err := c.workerScheduler(w)
		require.NoError(t, err)
		if sched == s2.id {
			moved = append(moved, w)
		}
	}
	if len(moved) >= 2 {
		victim, survivor = s2, s1
	} else {
		moved = slices.DeleteFunc([]string{"worker-1", "worker-2", "worker-3"}, func(w string) bool { return slices.Contains(moved, w) })
	}
	killed = victim.Kill()
	for _, w := range moved {
		proctest.Eventually(t, 60*time.Second, w+" back with "+survivor.id, func() (bool, string) {
			sched, state, err := c.workerScheduler(w)
			if err != nil {
				return false, err.Error()
			}
			return sched == survivor.id && state == store.WorkerReady, fmt.Sprintf("%s %v", sched, state)
		})
	}
	workersBack := time.Since(killed)
	proctest.Eventually(t, 3*checkInterval+10*time.Second, victim.id+" out of the healthy set", func() (bool, string) {
		_, ok := c.passing(announce.Scheduler)[victim.id]
		return !ok, "still passing"
	})
	schedulerOut := time.Since(killed)

	wg.Wait()
	close(done)
	waitersWG.Wait()
	close(waitErrs)
	for err := range waitErrs {
		t.Error(err)
	}

	// Every submission succeeded, within one retry.
	retried, maxAttempts := 0, int32(0)
	names := make([]string, 0, total)
	for i, r := range results {
		require.NoError(t, r.err, "request %d failed after %d attempts", i, r.attempts)
		if r.attempts > 1 {
			retried++
		}
		maxAttempts = max(maxAttempts, r.attempts)
		names = append(names, r.name)
	}
	require.LessOrEqual(t, maxAttempts, int32(2), "no request failed after its first retry")

	// Nothing lost, nothing duplicated.
	var runs int
	require.NoError(t, c.db.Pool().QueryRow(t.Context(), `SELECT count(*) FROM runs`).Scan(&runs))
	require.Equal(t, total, runs, "one run per request_id")
	proctest.Eventually(t, 180*time.Second, "every run terminal", func() (bool, string) {
		var open int
		err := c.db.Pool().QueryRow(t.Context(), `SELECT count(*) FROM runs WHERE state IN (1, 2, 7)`).Scan(&open)
		if err != nil {
			return false, err.Error()
		}
		return open == 0, fmt.Sprintf("%d runs not terminal", open)
	})
	execs := c.executions()
	lost, dup := 0, 0
	for _, n := range names {
		r, err := cl.Runs.GetRun(t.Context(), &agentserverv1.GetRunRequest{Name: n})
		require.NoError(t, err)
		require.Equal(t, agentserverv1.Run_SUCCEEDED, r.GetState(), "run %s: %s", n, r.GetError())
		switch execs[n] {
		case 0:
			lost++
		case 1:
		default:
			dup++
		}
	}
	require.Zero(t, lost, "runs never executed")
	require.Zero(t, dup, "runs executed more than once")
	require.Len(t, execs, total)

	t.Logf("failover: %d CreateRun requests (%d retried, max %d attempts, 0 failed), %d WaitRun calls, %d UNAVAILABLE attempts in all; "+
		"hung gateway (%d calls stuck on it, then killed) left the healthy set %s after it stopped answering, %s after the kill, and the catalog %s after the kill; "+
		"killed scheduler left it after %s, its %d workers were READY with %s after %s; %d runs SUCCEEDED, %d lost, %d executed twice",
		total, retried, maxAttempts, waits.Load(), unavailable.Load(), stuck, gatewayOut.Round(time.Millisecond),
		gatewayOutSinceKill.Round(time.Millisecond), gatewayReaped.Round(100*time.Millisecond), schedulerOut.Round(time.Millisecond), len(moved), survivor.id,
		workersBack.Round(time.Millisecond), total, lost, dup)
}
