// Package discoverytest starts real Consul agents for tests: the pinned
// Consul (v1.14.11, built into <repo>/bin/consul by
// deploy/scripts/build-consul.sh) in dev mode, on loopback with random free
// ports, killed when the test ends.
//
// It owns only the test agent's process and ports. It must never fake Consul,
// download or build it, or touch an agent it did not start (such as one on the
// default ports 8500/8600).
package discoverytest

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/agentserver/agentserver/pkg/childproc"
)

// ConsulVersion is the Consul version the tests are written against.
const ConsulVersion = "v1.14.11"

// ConsulBinary returns the path of the Consul agent binary: $CONSUL_BIN when
// set, else bin/consul at the root of the repository (found by walking up
// from the working directory to go.work). Its error says how to build it.
func ConsulBinary() (string, error) {
	const hint = "run deploy/scripts/build-consul.sh from the repository root to build Consul " + ConsulVersion + " into bin/consul, or set CONSUL_BIN"
	if p := os.Getenv("CONSUL_BIN"); p != "" {
		if _, err := os.Stat(p); err != nil {
			return "", fmt.Errorf("CONSUL_BIN=%s: %w; %s", p, err, hint)
		}
		return p, nil
	}
	dir, err := os.Getwd()
	if err != nil {
		return "", fmt.Errorf("finding the repository root: %w", err)
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.work")); err == nil {
			p := filepath.Join(dir, "bin", "consul")
			if _, err := os.Stat(p); err != nil {
				return "", fmt.Errorf("no Consul agent at %s: %s", p, hint)
			}
			return p, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", fmt.Errorf("no go.work above the working directory, so no bin/consul: %s", hint)
		}
		dir = parent
	}
}

// Agent is a running Consul dev agent.
type Agent struct {
	// HTTPAddr is the agent's HTTP API address ("127.0.0.1:port"), the value
	// for CONSUL_HTTP_ADDR.
	HTTPAddr string
	// DNSAddr is the agent's DNS address ("127.0.0.1:port", UDP and TCP).
	DNSAddr string
	// Node is the agent's node name.
	Node string

	cmd    *exec.Cmd
	exited chan struct{} // closed when the process has exited
	logs   *syncBuffer

	stopOnce   sync.Once
	clientOnce sync.Once
	client     *api.Client
}

// Start starts an agent for tb, stopping it when tb ends. It fails tb (it
// never skips it) when no Consul binary is available.
func Start(tb testing.TB) *Agent {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	a, err := StartAgent(ctx)
	if err != nil {
		tb.Fatalf("starting consul: %v", err)
	}
	tb.Cleanup(func() {
		if tb.Failed() {
			tb.Logf("consul agent log:\n%s", a.Logs())
		}
		_ = a.Stop()
	})
	return a
}

// StartAgent starts a dev agent on random free loopback ports and returns
// once it has elected itself leader and its node is healthy, so services
// registered with it can pass their checks. Call Stop when done; the agent is
// also killed if the calling process dies (on Linux).
func StartAgent(ctx context.Context) (*Agent, error) {
	bin, err := ConsulBinary()
	if err != nil {
		return nil, err
	}
	var lastErr error
	// A free port can be taken by someone else between our probe and the
	// agent's bind; try again with new ports.
	for range 3 {
		a, err := startOnce(ctx, bin)
		if err == nil {
			return a, nil
		}
		lastErr = err
		if ctx.Err() != nil {
			break
		}
	}
	return nil, lastErr
}

func startOnce(ctx context.Context, bin string) (*Agent, error) {
	ports, err := freePorts(6)
	if err != nil {
		return nil, err
	}
	httpPort, dnsPort, server, serfLAN, serfWAN, grpcPort := ports[0], ports[1], ports[2], ports[3], ports[4], ports[5]
	a := &Agent{
		HTTPAddr: net.JoinHostPort("127.0.0.1", strconv.Itoa(httpPort)),
		DNSAddr:  net.JoinHostPort("127.0.0.1", strconv.Itoa(dnsPort)),
		Node:     fmt.Sprintf("discoverytest-%d", httpPort),
		exited:   make(chan struct{}),
		logs:     &syncBuffer{},
	}
	a.cmd = exec.Command(bin, "agent", "-dev",
		"-bind=127.0.0.1", "-client=127.0.0.1", "-node="+a.Node, "-log-level=warn",
		"-http-port="+strconv.Itoa(httpPort), "-dns-port="+strconv.Itoa(dnsPort),
		"-server-port="+strconv.Itoa(server), "-serf-lan-port="+strconv.Itoa(serfLAN),
		"-serf-wan-port="+strconv.Itoa(serfWAN), "-grpc-port="+strconv.Itoa(grpcPort),
		// A dev server would otherwise also listen on the fixed port 8503.
		"-grpc-tls-port=-1",
	)
	a.cmd.Stdout, a.cmd.Stderr = a.logs, a.logs
	a.cmd.SysProcAttr = sysProcAttr()
	// From a thread of its own (childproc): the death signal must come with the test
	// binary's end, not with the end of a thread that some other start locked.
	waited, err := childproc.Start(a.cmd)
	if err != nil {
		return nil, fmt.Errorf("starting %s: %w", bin, err)
	}
	go func() {
		<-waited
		close(a.exited)
	}()
	if err := a.waitReady(ctx); err != nil {
		_ = a.Stop()
		return nil, fmt.Errorf("consul agent on %s: %w\n%s", a.HTTPAddr, err, a.Logs())
	}
	return a, nil
}

// waitReady polls until the agent has a leader and its node's serfHealth
// check passes (the health endpoint's "passing" filter requires it).
func (a *Agent) waitReady(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, 45*time.Second)
	defer cancel()
	base := "http://" + a.HTTPAddr
	var last error
	for {
		last = func() error {
			var leader string
			if err := getJSON(ctx, base+"/v1/status/leader", &leader); err != nil {
				return err
			}
			if leader == "" {
				return errors.New("no leader yet")
			}
			var checks []struct{ CheckID, Status string }
			if err := getJSON(ctx, base+"/v1/health/node/"+a.Node, &checks); err != nil {
				return err
			}
			for _, c := range checks {
				if c.CheckID == "serfHealth" && c.Status == api.HealthPassing {
					return nil
				}
			}
			return errors.New("node not healthy yet")
		}()
		if last == nil {
			return nil
		}
		select {
		case <-a.exited:
			return fmt.Errorf("agent exited before it was ready (%v)", a.cmd.ProcessState)
		case <-ctx.Done():
			return fmt.Errorf("not ready in time: %w", last)
		case <-time.After(100 * time.Millisecond):
		}
	}
}

func getJSON(ctx context.Context, url string, v any) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return err
	}
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("GET %s: %s: %s", url, resp.Status, body)
	}
	return json.Unmarshal(body, v)
}

// freePorts returns n distinct TCP ports free on 127.0.0.1 a moment ago.
func freePorts(n int) ([]int, error) {
	ports := make([]int, 0, n)
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, fmt.Errorf("finding a free port: %w", err)
		}
		// Held until all are found, so the n ports are distinct.
		defer l.Close()
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	return ports, nil
}

// Client returns a Consul API client for the agent, the same one on every
// call: each client holds its own pool of connections, and the agent refuses
// more than 200 concurrent connections from one address.
func (a *Agent) Client() *api.Client {
	a.clientOnce.Do(func() {
		cfg := api.DefaultConfig()
		cfg.Address = a.HTTPAddr
		cfg.Token = ""
		c, err := api.NewClient(cfg)
		if err != nil {
			// NewClient fails only on a malformed address or TLS
			// configuration, neither of which a dev agent on loopback has.
			panic(fmt.Sprintf("consul client for %s: %v", a.HTTPAddr, err))
		}
		a.client = c
	})
	return a.client
}

// Logs returns what the agent has written so far (warnings and errors).
func (a *Agent) Logs() string { return a.logs.String() }

// Stop kills the agent (a dev agent keeps nothing worth a graceful leave)
// and waits for it to exit. It may be called more than once.
func (a *Agent) Stop() error {
	a.stopOnce.Do(func() {
		select {
		case <-a.exited:
		default:
			_ = a.cmd.Process.Kill()
		}
	})
	select {
	case <-a.exited:
		return nil
	case <-time.After(30 * time.Second):
		return fmt.Errorf("consul agent (pid %d) did not exit", a.cmd.Process.Pid)
	}
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

// Write appends p to the buffer.
func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

// String returns everything written so far.
func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}
