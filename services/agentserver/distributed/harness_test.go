package distributed

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"google.golang.org/protobuf/types/known/structpb"

	agentserverv1 "github.com/agentserver/agentserver/gen/agentserver/v1"
	"github.com/agentserver/agentserver/pkg/client"
	"github.com/agentserver/agentserver/pkg/discovery"
	"github.com/agentserver/agentserver/pkg/discovery/announce"
	"github.com/agentserver/agentserver/pkg/discovery/discoverytest"
	"github.com/agentserver/agentserver/pkg/pgtest"
	"github.com/agentserver/agentserver/pkg/proctest"
	"github.com/agentserver/agentserver/pkg/store"
)

// Timing of the clusters under test. Consul checks gateways and schedulers every
// second, so a killed one leaves the healthy set within about a second; workers' TTL is
// longer because a loaded test machine may delay their heartbeats. Leases are long
// enough that a worker whose scheduler died is back (through the other one) well before
// its runs' leases expire.
const (
	checkInterval     = time.Second
	deregisterAfter   = 3 * checkInterval // three failed checks, as the spec's default
	workerTTL         = 3 * time.Second
	leaseTTL          = 6 * time.Second
	heartbeatInterval = time.Second
)

// executorScript is the executor of the tests: protocol v1, Python stdlib only. For each
// request it sleeps config["ms"] milliseconds, appends {"run", "epoch"} to the file named
// by config["record"] (one O_APPEND write per line), and returns the input state.
const executorScript = `#!/usr/bin/env python3
import json
import os
import sys
import time

for line in sys.stdin:
    req = json.loads(line)
    config = req.get("config") or {}
    time.sleep(config.get("ms", 50) / 1000.0)
    rec = json.dumps({"run": req.get("run"), "epoch": req.get("epoch"), "pid": os.getpid()}) + "\n"
    fd = os.open(config["record"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, rec.encode())
    finally:
        os.close(fd)
    sys.stdout.write(json.dumps({"type": "result", "id": req["id"], "state": req.get("state") or {}}) + "\n")
    sys.stdout.flush()
`

// cluster is one distributed deployment: a Consul agent, a database, and the processes
// added to it, which find each other through Consul.
type cluster struct {
	t       *testing.T
	dir     string
	dbURL   string
	db      *store.Store
	consul  *discoverytest.Agent
	disc    *discovery.Consul
	script  string
	records string
	procs   *proctest.Group
}

type gatewayProc struct {
	*proctest.Process
	id       string
	grpcAddr string
}

type schedulerProc struct {
	*proctest.Process
	id   string
	addr string
}

type workerProc struct {
	*proctest.Process
	id string
}

// newCluster starts a Consul agent and creates a database (migrated). It sets
// CONSUL_HTTP_ADDR for the test, so clients built with pkg/client resolve
// consul:/// targets through this agent as they would in production: such tests must
// not run in parallel.
func newCluster(t *testing.T) *cluster {
	t.Helper()
	c := &cluster{t: t, dir: t.TempDir(), dbURL: pgtest.NewDatabase(t)}
	c.consul = discoverytest.Start(t)
	t.Setenv("CONSUL_HTTP_ADDR", c.consul.HTTPAddr)
	var err error
	c.disc, err = discovery.NewConsul(discovery.ConsulConfig{Address: c.consul.HTTPAddr})
	require.NoError(t, err)
	c.script = filepath.Join(c.dir, "executor.py")
	c.records = filepath.Join(c.dir, "records.jsonl")
	proctest.WriteExecutable(t, c.script, []byte(executorScript))
	require.NoError(t, store.Migrate(t.Context(), c.dbURL))
	c.db, err = store.Open(t.Context(), c.dbURL)
	require.NoError(t, err)
	t.Cleanup(c.db.Close)
	c.procs = proctest.NewGroup(t)
	return c
}

// newProc registers a process of the cluster (not started yet), with the test binary's
// environment and env, logging to the test's directory. When the test ends, what still
// runs is killed and, if the test failed, the end of every log is printed.
func (c *cluster) newProc(name, bin string, env ...string) *proctest.Process {
	return c.procs.New(proctest.Spec{Name: name, Bin: bin,
		Env: append(os.Environ(), env...), Log: filepath.Join(c.dir, name+".log")})
}

// discoveryEnv is the discovery configuration of every process.
func (c *cluster) discoveryEnv(interval time.Duration) []string {
	return []string{
		"CONSUL_HTTP_ADDR=" + c.consul.HTTPAddr,
		"AGENTSERVER_ADVERTISE_HOST=127.0.0.1",
		"AGENTSERVER_CHECK_INTERVAL=" + interval.String(),
		"AGENTSERVER_DEREGISTER_AFTER=" + deregisterAfter.String(),
	}
}

// startGateway starts a gateway and waits until Consul reports it passing.
func (c *cluster) startGateway(id string) *gatewayProc {
	c.t.Helper()
	g := &gatewayProc{id: id, grpcAddr: proctest.FreeAddr(c.t)}
	g.Process = c.newProc(id, bins.gateway, append(c.discoveryEnv(checkInterval),
		"DATABASE_URL="+c.dbURL, "GATEWAY_ID="+id, "GATEWAY_GRPC_ADDR="+g.grpcAddr, "GATEWAY_HTTP_ADDR="+proctest.FreeAddr(c.t))...)
	g.Start()
	c.waitPassing(announce.Gateway, id, g.Process)
	return g
}

// startScheduler starts a scheduler and waits until Consul reports it passing.
func (c *cluster) startScheduler(id string) *schedulerProc {
	c.t.Helper()
	s := &schedulerProc{id: id, addr: proctest.FreeAddr(c.t)}
	s.Process = c.newProc(id, bins.scheduler, append(c.discoveryEnv(checkInterval),
		"DATABASE_URL="+c.dbURL, "SCHEDULER_ID="+id, "SCHEDULER_GRPC_ADDR="+s.addr,
		"SCHEDULER_LEASE_TTL="+leaseTTL.String(), "SCHEDULER_HEARTBEAT_INTERVAL="+heartbeatInterval.String(),
		"SCHEDULER_POLL_INTERVAL=200ms", "SCHEDULER_RECOVER_INTERVAL=200ms")...)
	s.Start()
	c.waitPassing(announce.Scheduler, id, s.Process)
	return s
}

// startWorker starts a worker that finds its scheduler through Consul, and waits until
// it is registered in Consul and READY with a scheduler.
func (c *cluster) startWorker(id, slots string) *workerProc {
	c.t.Helper()
	w := &workerProc{id: id}
	w.Process = c.newProc(id, bins.worker, append(c.discoveryEnv(workerTTL),
		"WORKER_ID="+id, "WORKER_SLOTS="+slots, "WORKER_POOL=cpu-pool",
		"SCHEDULER_ADDR=consul:///"+announce.Scheduler, "WORKER_WORKDIR="+c.dir, "WORKER_DRAIN_GRACE=5s")...)
	w.Start()
	c.waitPassing(announce.Worker, id, w.Process)
	proctest.Eventually(c.t, 60*time.Second, id+" ready", func() (bool, string) {
		_, state, err := c.workerScheduler(id)
		if err != nil {
			return false, err.Error()
		}
		return state == store.WorkerReady, fmt.Sprint(state)
	})
	return w
}

// workerScheduler returns the scheduler a worker is registered with, and its state.
func (c *cluster) workerScheduler(id string) (string, store.WorkerState, error) {
	var sched string
	var state store.WorkerState
	err := c.db.Pool().QueryRow(context.Background(),
		`SELECT scheduler_id, state FROM workers WHERE id = $1`, id).Scan(&sched, &state)
	return sched, state, err
}

// passing returns the instances of service whose checks pass, by id.
func (c *cluster) passing(service string) map[string]discovery.Instance {
	c.t.Helper()
	is, err := c.disc.Resolve(context.Background(), service)
	require.NoError(c.t, err)
	out := make(map[string]discovery.Instance, len(is))
	for _, i := range is {
		out[i.ID] = i
	}
	return out
}

// inCatalog reports whether the agent still lists the instance, passing or not.
func (c *cluster) inCatalog(service, id string) bool {
	c.t.Helper()
	svcs, err := c.disc.Client().Agent().Services()
	require.NoError(c.t, err)
	s, ok := svcs[id]
	return ok && s.Service == service
}

// waitPassing waits until Consul reports p, instance id of service, passing.
func (c *cluster) waitPassing(service, id string, p *proctest.Process) {
	c.t.Helper()
	p.Await(60*time.Second, id+" passing in consul", func() (bool, string) {
		_, ok := c.passing(service)[id]
		return ok, "not passing"
	})
}

// newClient returns a client of the gateways resolved through Consul (from
// CONSUL_HTTP_ADDR, as an application would), closed when the test ends.
func (c *cluster) newClient(opts ...client.Option) *client.Client {
	c.t.Helper()
	cl, err := client.New("consul:///"+announce.Gateway, opts...)
	require.NoError(c.t, err)
	c.t.Cleanup(func() { cl.Close() })
	return cl
}

// createAssistant creates an assistant running the test executor for ms per run.
func (c *cluster) createAssistant(cl *client.Client, id string, ms int) {
	c.t.Helper()
	cfg, err := structpb.NewStruct(map[string]any{"record": c.records, "ms": ms})
	require.NoError(c.t, err)
	_, err = cl.Assistants.CreateAssistant(c.t.Context(), &agentserverv1.CreateAssistantRequest{
		AssistantId: id,
		Assistant: &agentserverv1.Assistant{
			Flow:   fmt.Sprintf("executors:\n  - name: test\n    command: [\"python3\", %q]\n", c.script),
			Config: cfg,
		},
	})
	require.NoError(c.t, err)
}

// executions counts the executor's records per run name.
func (c *cluster) executions() map[string]int {
	c.t.Helper()
	f, err := os.Open(c.records)
	if os.IsNotExist(err) {
		return map[string]int{}
	}
	require.NoError(c.t, err)
	defer f.Close()
	out := make(map[string]int)
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		var rec struct{ Run string }
		require.NoError(c.t, json.Unmarshal(sc.Bytes(), &rec), "record %q", sc.Text())
		out[rec.Run]++
	}
	require.NoError(c.t, sc.Err())
	return out
}
