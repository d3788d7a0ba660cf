package announce_test

import (
	"context"
	"errors"
	"net"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/agentserver/agentserver/pkg/config"
	"github.com/agentserver/agentserver/pkg/discovery"
	"github.com/agentserver/agentserver/pkg/discovery/announce"
)

func TestBindAndValidate(t *testing.T) {
	t.Setenv("CONSUL_HTTP_ADDR", "")
	env := map[string]string{"AGENTSERVER_CHECK_INTERVAL": "2s", "AGENTSERVER_ADVERTISE_HOST": "10.0.0.7"}
	cfg := announce.Defaults()
	set := config.New("x").WithLookup(func(k string) (string, bool) { v, ok := env[k]; return v, ok })
	announce.Bind(set, &cfg)
	require.NoError(t, set.Parse([]string{"--deregister-after", "2m"}))
	require.Equal(t, 2*time.Second, cfg.CheckInterval)
	require.Equal(t, 2*time.Minute, cfg.DeregisterAfter)
	require.Equal(t, "10.0.0.7", cfg.Host())
	require.Equal(t, announce.ModeStatic, cfg.EffectiveMode())
	require.NoError(t, cfg.Validate())

	t.Setenv("CONSUL_HTTP_ADDR", "127.0.0.1:8500")
	require.Equal(t, announce.ModeConsul, cfg.EffectiveMode())
	cfg.Mode = announce.ModeStatic
	require.Equal(t, announce.ModeStatic, cfg.EffectiveMode(), "an explicit mode wins")

	for _, bad := range []func(*announce.Config){
		func(c *announce.Config) { c.Mode = "zookeeper" },
		func(c *announce.Config) { c.CheckInterval = 0 },
		func(c *announce.Config) { c.DeregisterAfter = -time.Second },
		func(c *announce.Config) { c.AdvertiseHost = "0.0.0.0" },
	} {
		c := announce.Defaults()
		bad(&c)
		require.Error(t, c.Validate())
	}
}

func TestStaticModeRegistersNothing(t *testing.T) {
	t.Setenv("CONSUL_HTTP_ADDR", "")
	cfg := announce.Defaults()
	d, err := announce.Open(cfg, nil)
	require.NoError(t, err)
	require.Nil(t, d)
	reg, err := announce.Register(t.Context(), d, cfg, discovery.Registration{Service: announce.Gateway, Port: 1, Check: discovery.CheckGRPC}, nil)
	require.NoError(t, err)
	require.Nil(t, reg)
	reg.Deregister() // a nil Registration is valid
	require.Empty(t, reg.ID())

	require.NoError(t, announce.CheckTargets(d, "SCHEDULER_ADDR", "a:1", "static:///a:1,b:2"))
	require.ErrorContains(t, announce.CheckTargets(d, "SCHEDULER_ADDR", "consul:///agentserver-scheduler"), "CONSUL_HTTP_ADDR")
}

// staticAnnounce is static discovery (no Consul in the environment) and announce's
// defaults advertising 127.0.0.2.
func staticAnnounce(t *testing.T) (*discovery.Static, announce.Config) {
	t.Helper()
	t.Setenv("CONSUL_HTTP_ADDR", "")
	s, err := discovery.NewStatic(nil)
	require.NoError(t, err)
	cfg := announce.Defaults()
	cfg.AdvertiseHost = "127.0.0.2"
	return s, cfg
}

func TestRegisterFillsTheProcessSettings(t *testing.T) {
	s, cfg := staticAnnounce(t)
	reg, err := announce.Register(t.Context(), s, cfg, discovery.Registration{
		Service: announce.Scheduler, ID: "s-1", Port: 9091, Check: discovery.CheckGRPC,
	}, nil)
	require.NoError(t, err)
	require.Equal(t, "s-1", reg.ID())
	is, err := s.Resolve(t.Context(), announce.Scheduler)
	require.NoError(t, err)
	require.Len(t, is, 1)
	require.Equal(t, "127.0.0.2:9091", is[0].Addr())
	reg.Deregister()
	reg.Deregister()
	is, err = s.Resolve(t.Context(), announce.Scheduler)
	require.NoError(t, err)
	require.Empty(t, is)
}

func TestDefaultHostAndPort(t *testing.T) {
	t.Parallel()
	require.NotNil(t, net.ParseIP(announce.DefaultHost()))
	require.Equal(t, 9090, announce.Port(&net.TCPAddr{IP: net.IPv4zero, Port: 9090}))
}

func TestServeDeregistersBeforeItStopsServing(t *testing.T) {
	s, cfg := staticAnnounce(t)
	reg := discovery.Registration{Service: announce.Gateway, ID: "g-1", Port: 8080, Check: discovery.CheckGRPC}
	resolve := func() []discovery.Instance {
		is, err := s.Resolve(context.Background(), announce.Gateway)
		require.NoError(t, err)
		return is
	}

	// Signalled: deregistered first, then serve's context ends.
	stop, signal := context.WithCancel(t.Context())
	var whileServing, atStop []discovery.Instance
	err := announce.Serve(stop, s, cfg, reg, nil, func(ctx context.Context) error {
		whileServing = resolve()
		signal()
		<-ctx.Done()
		atStop = resolve()
		return errors.New("stopped")
	})
	require.EqualError(t, err, "stopped", "Serve returns what serve returned")
	require.Len(t, whileServing, 1, "registered while serving")
	require.Equal(t, "127.0.0.2:8080", whileServing[0].Addr())
	require.Empty(t, atStop, "deregistered before serve's context ended")

	// Serving ends on its own: deregistered all the same.
	require.NoError(t, announce.Serve(t.Context(), s, cfg, reg, nil, func(context.Context) error {
		require.Len(t, resolve(), 1)
		return nil
	}))
	require.Empty(t, resolve())

	// Static mode: nothing registered, serve's context ends with stop.
	stop, signal = context.WithCancel(t.Context())
	require.NoError(t, announce.Serve(stop, nil, cfg, reg, nil, func(ctx context.Context) error {
		signal()
		<-ctx.Done()
		return nil
	}))
}
