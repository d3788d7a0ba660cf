package discovery_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"google.golang.org/grpc"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/agentserver/agentserver/pkg/discovery"
	"github.com/agentserver/agentserver/pkg/discovery/discoverytest"
)

// childEnv, when set, turns the test binary into the stand-in service of
// TestConsulKilledProcessLeaves: it registers a TTL check, heartbeats it and
// waits to be killed.
const childEnv = "DISCOVERY_TEST_CHILD"

type childSpec struct {
	ConsulAddr, Service, ID   string
	Interval, DeregisterAfter time.Duration
}

func TestMain(m *testing.M) {
	if spec := os.Getenv(childEnv); spec != "" {
		runChild(spec)
		return
	}
	code := m.Run()
	shared.mu.Lock()
	if shared.agent != nil {
		_ = shared.agent.Stop()
	}
	shared.mu.Unlock()
	os.Exit(code)
}

func runChild(spec string) {
	var s childSpec
	if err := json.Unmarshal([]byte(spec), &s); err != nil {
		fmt.Fprintln(os.Stderr, "child:", err)
		os.Exit(2)
	}
	c, err := discovery.NewConsul(discovery.ConsulConfig{Address: s.ConsulAddr})
	if err == nil {
		_, err = c.Register(context.Background(), discovery.Registration{
			Service: s.Service, ID: s.ID, Address: "127.0.0.1", Port: 1,
			Check: discovery.CheckTTL, Interval: s.Interval, DeregisterAfter: s.DeregisterAfter,
		})
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "child:", err)
		os.Exit(2)
	}
	fmt.Println("registered")
	select {} // heartbeating until SIGKILL
}

// shared is the package's one Consul agent, started by the first test that
// needs it and killed by TestMain.
var shared struct {
	mu    sync.Mutex
	agent *discoverytest.Agent
	err   error
}

func consulAgent(t *testing.T) *discoverytest.Agent {
	t.Helper()
	shared.mu.Lock()
	defer shared.mu.Unlock()
	if shared.agent == nil && shared.err == nil {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		shared.agent, shared.err = discoverytest.StartAgent(ctx)
	}
	require.NoError(t, shared.err, "this test needs a real Consul agent")
	return shared.agent
}

func newConsul(t *testing.T) (*discovery.Consul, *discoverytest.Agent) {
	t.Helper()
	a := consulAgent(t)
	c, err := discovery.NewConsul(discovery.ConsulConfig{Address: a.HTTPAddr})
	require.NoError(t, err)
	return c, a
}

var nonName = regexp.MustCompile(`[^a-zA-Z0-9]+`)

// serviceName gives each test its own service, so tests sharing the agent
// run in parallel without seeing each other.
func serviceName(t *testing.T) string {
	return strings.Trim(strings.ToLower(nonName.ReplaceAllString(t.Name(), "-")), "-")
}

// waitFor polls cond every 50 ms until it holds, failing t after timeout with
// cond's last explanation.
func waitFor(t *testing.T, timeout time.Duration, what string, cond func() (bool, string)) time.Duration {
	t.Helper()
	start := time.Now()
	deadline := start.Add(timeout)
	for {
		ok, why := cond()
		if ok {
			return time.Since(start)
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %s: %s", what, timeout, why)
		}
		select {
		case <-t.Context().Done():
			t.Fatalf("%s: %v", what, t.Context().Err())
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// healthServer is a tiny gRPC server offering only the health service.
type healthServer struct {
	Addr   string
	Port   int
	Health *health.Server
	srv    *grpc.Server
}

func startHealthServer(t *testing.T) *healthServer {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	h := &healthServer{Addr: l.Addr().String(), Port: l.Addr().(*net.TCPAddr).Port, Health: health.NewServer(), srv: grpc.NewServer()}
	healthpb.RegisterHealthServer(h.srv, h.Health)
	go func() { _ = h.srv.Serve(l) }()
	t.Cleanup(h.srv.Stop)
	return h
}

func ids(is []discovery.Instance) []string {
	out := make([]string, len(is))
	for i, in := range is {
		out[i] = in.ID + "@" + in.Address + ":" + strconv.Itoa(in.Port)
	}
	return out
}

func hasID(is []discovery.Instance, id string) bool {
	for _, i := range is {
		if i.ID == id {
			return true
		}
	}
	return false
}
