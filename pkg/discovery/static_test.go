package discovery_test

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/agentserver/agentserver/pkg/discovery"
)

func TestStaticResolvesFixedAndRegistered(t *testing.T) {
	t.Parallel()
	s, err := discovery.NewStatic(map[string][]string{"scheduler": {"10.0.0.1:7000", "[::1]:7001"}})
	require.NoError(t, err)

	is, err := s.Resolve(t.Context(), "scheduler")
	require.NoError(t, err)
	require.Equal(t, []string{"scheduler-0@10.0.0.1:7000", "scheduler-1@::1:7001"}, ids(is))
	require.Equal(t, "[::1]:7001", is[1].Addr())

	none, err := s.Resolve(t.Context(), "gateway")
	require.NoError(t, err)
	require.Empty(t, none)

	updates := make(chan []discovery.Instance, 10)
	ctx, cancel := context.WithCancel(t.Context())
	watchDone := make(chan error, 1)
	go func() {
		watchDone <- s.Watch(ctx, "gateway", func(is []discovery.Instance) { updates <- is })
	}()
	require.Empty(t, <-updates, "Watch delivers the current (empty) set at once")

	h, err := s.Register(t.Context(), discovery.Registration{
		Service: "gateway", ID: "gw-1", Address: "127.0.0.1", Port: 8080,
		Tags: []string{"eu"}, Check: discovery.CheckGRPC,
	})
	require.NoError(t, err)
	got := <-updates
	require.Equal(t, []string{"gw-1@127.0.0.1:8080"}, ids(got))
	require.True(t, got[0].HasTag("eu"))

	require.NoError(t, h.Deregister(t.Context()))
	require.NoError(t, h.Deregister(t.Context()), "Deregister is idempotent")
	require.Empty(t, <-updates)

	cancel()
	require.NoError(t, <-watchDone)
}

func TestStaticRejectsBadAddresses(t *testing.T) {
	t.Parallel()
	for _, addrs := range []map[string][]string{
		{"scheduler": {"10.0.0.1"}},
		{"scheduler": {":7000"}},
		{"scheduler": {"10.0.0.1:0"}},
		{"scheduler": {"10.0.0.1:http"}},
		{"sched_uler": {"10.0.0.1:7000"}},
	} {
		_, err := discovery.NewStatic(addrs)
		require.Error(t, err, "%v", addrs)
	}
}

func TestRegistrationValidation(t *testing.T) {
	t.Parallel()
	s, err := discovery.NewStatic(nil)
	require.NoError(t, err)
	ok := discovery.Registration{Service: "gateway", Address: "10.0.0.1", Port: 8080, Check: discovery.CheckGRPC}
	for name, mutate := range map[string]func(*discovery.Registration){
		"no service":         func(r *discovery.Registration) { r.Service = "" },
		"dotted service":     func(r *discovery.Registration) { r.Service = "gate.way" },
		"no check":           func(r *discovery.Registration) { r.Check = discovery.Check{} },
		"grpc without addr":  func(r *discovery.Registration) { r.Address = "" },
		"grpc without port":  func(r *discovery.Registration) { r.Port = 0 },
		"port out of range":  func(r *discovery.Registration) { r.Port = 70000 },
		"wildcard address":   func(r *discovery.Registration) { r.Address = "0.0.0.0" },
		"relative http path": func(r *discovery.Registration) { r.Check = discovery.CheckHTTP("healthz") },
		"negative interval":  func(r *discovery.Registration) { r.Interval = -time.Second },
	} {
		r := ok
		mutate(&r)
		_, err := s.Register(t.Context(), r)
		require.ErrorIs(t, err, discovery.ErrInvalidRegistration, name)
	}

	// A TTL check needs no reachable address; an HTTP check with a full URL
	// needs none either. The default ID is stable and names the service.
	for _, r := range []discovery.Registration{
		{Service: "worker-agent", Check: discovery.CheckTTL},
		{Service: "gateway", Check: discovery.CheckHTTP("http://10.0.0.1:8081/healthz")},
	} {
		h, err := s.Register(t.Context(), r)
		require.NoError(t, err)
		require.Contains(t, h.ID(), r.Service+"-")
		require.Equal(t, r.Service, h.Service())
	}
}
