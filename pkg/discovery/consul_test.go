package discovery_test

import (
	"bufio"
	"context"
	"encoding/json"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/stretchr/testify/require"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"

	"github.com/agentserver/agentserver/pkg/discovery"
)

// inCatalog reports whether the agent still has the instance at all,
// whatever its health.
func inCatalog(t *testing.T, c *api.Client, service, id string) bool {
	t.Helper()
	entries, _, err := c.Catalog().Service(service, "", nil)
	require.NoError(t, err)
	for _, e := range entries {
		if e.ServiceID == id {
			return true
		}
	}
	return false
}

func passing(t *testing.T, d discovery.Discovery, service, id string) (bool, string) {
	is, err := d.Resolve(t.Context(), service)
	if err != nil {
		return false, err.Error()
	}
	return hasID(is, id), strings.Join(ids(is), ",")
}

func TestConsulGRPCCheck(t *testing.T) {
	t.Parallel()
	d, agent := newConsul(t)
	svc := serviceName(t)
	srv := startHealthServer(t)

	h, err := d.Register(t.Context(), discovery.Registration{
		Service: svc, ID: svc + "-1", Address: "127.0.0.1", Port: srv.Port,
		Tags: []string{"pool-cpu"}, Meta: map[string]string{"slots": "4"},
		Check: discovery.CheckGRPC, Interval: time.Second, DeregisterAfter: time.Minute,
	})
	require.NoError(t, err)
	require.Equal(t, svc+"-1", h.ID())

	waitFor(t, 15*time.Second, "instance passing its gRPC check", func() (bool, string) { return passing(t, d, svc, h.ID()) })
	is, err := d.Resolve(t.Context(), svc)
	require.NoError(t, err)
	require.Equal(t, []discovery.Instance{{
		ID: svc + "-1", Service: svc, Address: "127.0.0.1", Port: srv.Port,
		Tags: []string{"pool-cpu"}, Meta: map[string]string{"slots": "4"},
	}}, is)

	// NOT_SERVING takes it out of the healthy set but not out of the catalog.
	srv.Health.SetServingStatus("", healthpb.HealthCheckResponse_NOT_SERVING)
	waitFor(t, 15*time.Second, "instance critical", func() (bool, string) {
		ok, why := passing(t, d, svc, h.ID())
		return !ok, why
	})
	require.True(t, inCatalog(t, agent.Client(), svc, h.ID()))
	srv.Health.SetServingStatus("", healthpb.HealthCheckResponse_SERVING)
	waitFor(t, 15*time.Second, "instance passing again", func() (bool, string) { return passing(t, d, svc, h.ID()) })

	// Graceful stop: gone from the catalog as soon as Deregister returns.
	require.NoError(t, h.Deregister(t.Context()))
	require.False(t, inCatalog(t, agent.Client(), svc, h.ID()))
	ok, why := passing(t, d, svc, h.ID())
	require.False(t, ok, why)
	require.NoError(t, h.Deregister(t.Context()))
}

func TestConsulHTTPCheck(t *testing.T) {
	t.Parallel()
	d, _ := newConsul(t)
	svc := serviceName(t)
	var healthy atomic.Bool
	healthy.Store(true)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/healthz" || !healthy.Load() {
			w.WriteHeader(http.StatusServiceUnavailable)
		}
	}))
	t.Cleanup(srv.Close)
	port, err := strconv.Atoi(srv.URL[strings.LastIndex(srv.URL, ":")+1:])
	require.NoError(t, err)

	h, err := d.Register(t.Context(), discovery.Registration{
		Service: svc, Address: "127.0.0.1", Port: port,
		Check: discovery.CheckHTTP("/healthz"), Interval: time.Second,
	})
	require.NoError(t, err)
	t.Cleanup(func() { _ = h.Deregister(context.WithoutCancel(t.Context())) })
	waitFor(t, 15*time.Second, "passing HTTP check", func() (bool, string) { return passing(t, d, svc, h.ID()) })
	healthy.Store(false)
	waitFor(t, 15*time.Second, "critical after a 503", func() (bool, string) {
		ok, why := passing(t, d, svc, h.ID())
		return !ok, why
	})
}

func TestConsulTTLCheckKeptPassing(t *testing.T) {
	t.Parallel()
	d, agent := newConsul(t)
	svc := serviceName(t)
	h, err := d.Register(t.Context(), discovery.Registration{
		Service: svc, Check: discovery.CheckTTL, Interval: time.Second, DeregisterAfter: time.Minute,
	})
	require.NoError(t, err)
	ok, why := passing(t, d, svc, h.ID())
	require.True(t, ok, "a TTL instance passes as soon as it is registered: %s", why)

	// Over four TTLs the heartbeat keeps it passing throughout.
	for end := time.Now().Add(4 * time.Second); time.Now().Before(end); {
		ok, why := passing(t, d, svc, h.ID())
		require.True(t, ok, "instance went critical although its heartbeat runs: %s", why)
		select {
		case <-t.Context().Done():
			t.Fatal(t.Context().Err())
		case <-time.After(200 * time.Millisecond):
		}
	}

	// If the agent loses the registration behind our back (an agent restart
	// without its data directory), the heartbeat registers it again.
	require.NoError(t, agent.Client().Agent().ServiceDeregister(h.ID()))
	require.False(t, inCatalog(t, agent.Client(), svc, h.ID()))
	waitFor(t, 10*time.Second, "re-registration by the heartbeat", func() (bool, string) { return passing(t, d, svc, h.ID()) })

	require.NoError(t, h.Deregister(t.Context()))
	require.False(t, inCatalog(t, agent.Client(), svc, h.ID()))
}

// TestConsulKilledProcessLeaves starts a stand-in service process that
// registers a TTL check and heartbeats it, kills it with SIGKILL, and measures
// how long it takes to leave the healthy set (what clients route by) and the
// catalog (Consul's reaper).
func TestConsulKilledProcessLeaves(t *testing.T) {
	t.Parallel()
	d, agent := newConsul(t)
	svc := serviceName(t)
	id := svc + "-child"
	spec, err := json.Marshal(childSpec{
		ConsulAddr: agent.HTTPAddr, Service: svc, ID: id,
		Interval: time.Second, DeregisterAfter: 3 * time.Second,
	})
	require.NoError(t, err)

	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), childEnv+"="+string(spec))
	cmd.Stderr = os.Stderr
	stdout, err := cmd.StdoutPipe()
	require.NoError(t, err)
	require.NoError(t, cmd.Start())
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	line, err := bufio.NewReader(stdout).ReadString('\n')
	require.NoError(t, err, "the child registers and says so")
	require.Equal(t, "registered\n", line)
	waitFor(t, 10*time.Second, "child passing", func() (bool, string) { return passing(t, d, svc, id) })

	// The child has been heartbeating for a few TTLs: it is really alive.
	require.NoError(t, cmd.Process.Signal(syscall.SIGKILL))
	killed := time.Now()
	_ = cmd.Wait()

	critical := waitFor(t, 15*time.Second, "killed child leaving the healthy set", func() (bool, string) {
		ok, why := passing(t, d, svc, id)
		return !ok, why
	})
	require.True(t, inCatalog(t, agent.Client(), svc, id), "still in the catalog while critical")
	// Consul raises DeregisterCriticalServiceAfter to at least a minute and
	// reaps every 30 s, so removal takes 60-90 s after the check turned
	// critical, whatever we asked for.
	waitFor(t, 150*time.Second, "killed child leaving the catalog", func() (bool, string) {
		return !inCatalog(t, agent.Client(), svc, id), "still registered"
	})
	removed := time.Since(killed)
	t.Logf("after kill -9 (TTL 1s, DeregisterAfter 3s): out of the healthy set in %s, out of the catalog in %s",
		critical.Round(10*time.Millisecond), removed.Round(100*time.Millisecond))
}

func TestConsulWatch(t *testing.T) {
	t.Parallel()
	d, _ := newConsul(t)
	svc := serviceName(t)
	updates := make(chan []discovery.Instance, 16)
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- d.Watch(ctx, svc, func(is []discovery.Instance) { updates <- is }) }()
	next := func() []discovery.Instance {
		select {
		case is := <-updates:
			return is
		case <-time.After(15 * time.Second):
			t.Fatal("no watch update")
			return nil
		}
	}
	require.Empty(t, next(), "current (empty) set at once")

	reg := func(n int) *discovery.Handle {
		h, err := d.Register(t.Context(), discovery.Registration{
			Service: svc, ID: svc + "-" + strconv.Itoa(n), Address: "10.1.2.3", Port: 7000 + n,
			Check: discovery.CheckTTL, Interval: 2 * time.Second,
		})
		require.NoError(t, err)
		return h
	}
	h1 := reg(1)
	require.Equal(t, []string{svc + "-1@10.1.2.3:7001"}, ids(next()))
	h2 := reg(2)
	require.Equal(t, []string{svc + "-1@10.1.2.3:7001", svc + "-2@10.1.2.3:7002"}, ids(next()))
	require.NoError(t, h1.Deregister(t.Context()))
	require.Equal(t, []string{svc + "-2@10.1.2.3:7002"}, ids(next()))
	require.NoError(t, h2.Deregister(t.Context()))
	require.Empty(t, next())

	cancel()
	require.NoError(t, <-done)
}

// TestConsulResolverFollowsHealthySet: a client dialled once at
// consul:///<service> keeps working while one instance goes away and starts
// using a new one, with no restart and no failed call.
func TestConsulResolverFollowsHealthySet(t *testing.T) {
	t.Parallel()
	d, _ := newConsul(t)
	svc := serviceName(t)
	register := func(s *healthServer) *discovery.Handle {
		h, err := d.Register(t.Context(), discovery.Registration{
			Service: svc, ID: s.Addr, Address: "127.0.0.1", Port: s.Port,
			Check: discovery.CheckGRPC, Interval: time.Second,
		})
		require.NoError(t, err)
		t.Cleanup(func() { _ = h.Deregister(context.WithoutCancel(t.Context())) })
		return h
	}
	a, b := startHealthServer(t), startHealthServer(t)
	register(a)
	register(b)

	conn, err := grpc.NewClient("consul:///"+svc,
		append(discovery.DialOptions(d), grpc.WithTransportCredentials(insecure.NewCredentials()))...)
	require.NoError(t, err)
	defer conn.Close()
	client := healthpb.NewHealthClient(conn)
	waitAllServing(t, client, []string{a.Addr, b.Addr})

	// a stops for good, as a crash would leave it: its connection breaks at
	// once and its check fails within a second.
	a.srv.Stop()
	calls, retried := 0, 0
	callOK := func() string {
		got, again := callRetry(t, client, "")
		calls++
		if again {
			retried++
		}
		return got
	}
	waitFor(t, 20*time.Second, "a leaving the healthy set", func() (bool, string) {
		callOK()
		ok, why := passing(t, d, svc, a.Addr)
		return !ok, why
	})
	for range 20 {
		require.Equal(t, b.Addr, callOK())
	}

	// A new instance is picked up by the same connection.
	c := startHealthServer(t)
	register(c)
	waitFor(t, 20*time.Second, "calls reaching the new instance", func() (bool, string) {
		return callOK() == c.Addr, "not yet"
	})
	t.Logf("%d calls while the set changed; %d needed their one retry", calls, retried)
	require.LessOrEqual(t, retried, 1, "only a call racing the crash may fail")
}

// TestConsulResolverFailsFastWithoutAgent: with no Consul to ask, RPCs fail
// with UNAVAILABLE naming the cause instead of waiting out their deadline.
func TestConsulResolverFailsFastWithoutAgent(t *testing.T) {
	t.Parallel()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	addr := l.Addr().String()
	require.NoError(t, l.Close()) // nothing listens there now

	d, err := discovery.NewConsul(discovery.ConsulConfig{Address: addr})
	require.NoError(t, err)
	_, err = d.Resolve(t.Context(), "gateway")
	require.ErrorContains(t, err, "resolving gateway through consul")

	conn, err := grpc.NewClient("consul:///gateway",
		append(discovery.DialOptions(d), grpc.WithTransportCredentials(insecure.NewCredentials()))...)
	require.NoError(t, err)
	defer conn.Close()
	ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
	defer cancel()
	_, err = healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{})
	require.Equal(t, codes.Unavailable, status.Code(err), "%v", err)
	require.ErrorContains(t, err, "watching gateway through consul")
	require.NoError(t, ctx.Err(), "failed fast, not at the deadline")
}

// TestConsulDNS checks what the package documentation says about DNS: an SRV
// query for <service>.service.consul on the agent's DNS port answers the
// passing instances with their ports.
func TestConsulDNS(t *testing.T) {
	t.Parallel()
	d, agent := newConsul(t)
	svc := serviceName(t)
	var handles []*discovery.Handle
	for _, port := range []int{7101, 7102} {
		h, err := d.Register(t.Context(), discovery.Registration{
			Service: svc, ID: svc + "-" + strconv.Itoa(port), Address: "127.0.0.1", Port: port,
			Tags: []string{"gpu"}, Check: discovery.CheckTTL, Interval: 5 * time.Second,
		})
		require.NoError(t, err)
		handles = append(handles, h)
	}
	r := &net.Resolver{PreferGo: true, Dial: func(ctx context.Context, network, _ string) (net.Conn, error) {
		var dialer net.Dialer
		return dialer.DialContext(ctx, network, agent.DNSAddr)
	}}
	lookup := func(name string) []int {
		_, srvs, err := r.LookupSRV(t.Context(), "", "", name)
		require.NoError(t, err, name)
		var ports []int
		for _, s := range srvs {
			ports = append(ports, int(s.Port))
			addrs, err := r.LookupHost(t.Context(), s.Target)
			require.NoError(t, err, s.Target)
			require.Contains(t, addrs, "127.0.0.1")
		}
		slices.Sort(ports)
		return ports
	}
	require.Equal(t, []int{7101, 7102}, lookup(svc+".service.consul"))
	require.Equal(t, []int{7101, 7102}, lookup("gpu."+svc+".service.consul"))

	require.NoError(t, handles[0].Deregister(t.Context()))
	require.Equal(t, []int{7102}, lookup(svc+".service.consul"))
	require.NoError(t, handles[1].Deregister(t.Context()))
}

// A killed instance leaves the catalog within its DeregisterAfter when a sibling process
// reaps through the same agent (Consul alone takes 60-90 s, above).
func TestReapRemovesKilledSiblingWithinItsWindow(t *testing.T) {
	t.Parallel()
	d, agent := newConsul(t)
	svc := serviceName(t)
	id := svc + "-child"
	spec, err := json.Marshal(childSpec{
		ConsulAddr: agent.HTTPAddr, Service: svc, ID: id,
		Interval: time.Second, DeregisterAfter: 3 * time.Second,
	})
	require.NoError(t, err)
	// The sibling that reaps: itself registered, so it never reaps itself.
	self, err := d.Register(t.Context(), discovery.Registration{Service: svc, ID: svc + "-self", Address: "127.0.0.1", Port: 1,
		Check: discovery.CheckTTL, Interval: time.Second, DeregisterAfter: 3 * time.Second})
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	go d.Reap(ctx, []string{svc}, self.ID(), 3*time.Second, 250*time.Millisecond, nil)

	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), childEnv+"="+string(spec))
	cmd.Stderr = os.Stderr
	stdout, err := cmd.StdoutPipe()
	require.NoError(t, err)
	require.NoError(t, cmd.Start())
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	line, err := bufio.NewReader(stdout).ReadString('\n')
	require.NoError(t, err)
	require.Equal(t, "registered\n", line)
	waitFor(t, 10*time.Second, "child passing", func() (bool, string) { return passing(t, d, svc, id) })

	require.NoError(t, cmd.Process.Signal(syscall.SIGKILL))
	killed := time.Now()
	_ = cmd.Wait()
	waitFor(t, 20*time.Second, "killed child leaving the catalog", func() (bool, string) {
		return !inCatalog(t, agent.Client(), svc, id), "still registered"
	})
	t.Logf("after kill -9 (TTL 1s, DeregisterAfter 3s, reaper every 250ms): out of the catalog in %s", time.Since(killed).Round(100*time.Millisecond))
	require.True(t, inCatalog(t, agent.Client(), svc, self.ID()), "the reaper never removes a live instance")
}
