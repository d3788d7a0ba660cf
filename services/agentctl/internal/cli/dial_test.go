package cli

import (
	"errors"
	"net"
	"net/http"
	"net/url"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/agentserver/agentserver/pkg/rawio"
)

func noProxy(*http.Request) (*url.URL, error) { return nil, nil }

// agentctl dials host:port targets with raw system calls, as the gateway's connections are
// (the CLI tests' fake gateway is reached that way), and leaves every other target, and a
// target an HTTPS proxy applies to, to gRPC's own dialer.
func TestRawDialerWrapsPlainTCPTargetsOnly(t *testing.T) {
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer lis.Close()
	go func() {
		for {
			c, err := lis.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()

	dial := rawDialer(lis.Addr().String(), noProxy)
	require.NotNil(t, dial)
	conn, err := dial(t.Context(), lis.Addr().String())
	require.NoError(t, err)
	defer conn.Close()
	require.IsType(t, &rawio.Conn{}, conn, "reads and writes are raw system calls")

	for _, target := range []string{"dns:///localhost:9090", "unix:///run/agentserver.sock", "unix:agentserver.sock", "localhost"} {
		require.Nil(t, rawDialer(target, noProxy), "target %q is gRPC's to dial", target)
	}
	viaProxy := func(*http.Request) (*url.URL, error) { return url.Parse("http://proxy.example:3128") }
	require.Nil(t, rawDialer("gateway.example:9090", viaProxy), "gRPC's dialer goes through the proxy")
	badProxy := func(*http.Request) (*url.URL, error) { return nil, errors.New("bad proxy URL") }
	require.Nil(t, rawDialer("gateway.example:9090", badProxy), "gRPC's dialer reports the proxy's error")
}
