package dev_test

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"runtime/pprof"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/agentserver/agentserver/pkg/admintest"
	"github.com/agentserver/agentserver/pkg/pgtest"
	"github.com/agentserver/agentserver/services/agentserver/dev"
)

// With admin addresses set, the all-in-one serves the gateway's API latency histogram (by
// method and status code) and the scheduler's queue depth and slot figures on /metrics.
func TestMetricsOfTheAllInOne(t *testing.T) {
	s := startServerOn(t, pgtest.NewDatabase(t), func(c *dev.Config) {
		c.Gateway.AdminAddr = "127.0.0.1:0"
		c.Scheduler.AdminAddr = "127.0.0.1:0"
	})
	createEcho(t, s)
	const n = 5
	for i := range n {
		var r run
		require.Equal(t, http.StatusOK, s.call(t, "POST", "/v1/runs", map[string]any{"assistant": "assistants/echo", "input": map[string]any{"i": i}}, &r))
		require.Equal(t, http.StatusOK, s.call(t, "GET", "/v1/"+r.Name+":wait?timeout=60s", nil, &r))
		require.Equal(t, "SUCCEEDED", r.State, r.Error)
	}
	var e apiError
	require.Equal(t, http.StatusNotFound, s.call(t, "POST", "/v1/runs", map[string]any{"assistant": "assistants/missing"}, &e))

	gw := admintest.Metrics(t, s.addrs.GatewayAdmin)
	create := `agentserver_gateway_request_duration_seconds_count{code="%s",method="/agentserver.v1.RunService/CreateRun"} %d` + "\n"
	require.Contains(t, gw, fmt.Sprintf(create, "OK", n), "every created run once")
	require.Contains(t, gw, fmt.Sprintf(create, "NotFound", 1), "the refused create under its code")
	require.NotContains(t, gw, `method="/agentserver.v1.RunService/WaitRun"`, "WaitRun blocks by design and is left out")

	sched := admintest.Metrics(t, s.addrs.SchedulerAdmin)
	for _, line := range []string{
		`agentserver_pool_slots{pool="default",slot_type="cpu",state="total"} 4`,
		`agentserver_pool_workers{pool="default",state="ready"} 1`,
	} {
		require.Contains(t, sched, line+"\n")
	}
}

// A gateway whose admin address is taken fails to start, and keeps nothing it opened
// before the failure: its gRPC server's stream workers stop with it.
func TestGatewayWithItsAdminAddressTakenStartsNothing(t *testing.T) {
	taken, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer taken.Close()
	cfg := dev.Defaults()
	cfg.DatabaseURL = pgtest.NewDatabase(t)
	cfg.Gateway.HTTPAddr, cfg.Gateway.GRPCAddr, cfg.Scheduler.GRPCAddr = "127.0.0.1:0", "127.0.0.1:0", "127.0.0.1:0"
	cfg.Gateway.AdminAddr = taken.Addr().String()
	err = dev.Run(context.Background(), cfg, slog.New(slog.NewTextHandler(io.Discard, nil)), nil)
	require.ErrorContains(t, err, "listening for the admin endpoint on "+taken.Addr().String())
	workers := func() bool {
		var stacks bytes.Buffer
		require.NoError(t, pprof.Lookup("goroutine").WriteTo(&stacks, 1))
		return !bytes.Contains(stacks.Bytes(), []byte("grpc.(*Server).serverWorker"))
	}
	require.Eventually(t, workers, 10*time.Second, 10*time.Millisecond, "the gateway's gRPC stream workers are stopped")
}
