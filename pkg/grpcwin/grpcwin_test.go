package grpcwin_test

import (
	"encoding/binary"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/stretchr/testify/require"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/agentserver/agentserver/pkg/grpcwin"
)

// pings counts the HTTP/2 PING frames (acknowledgements included) a connection carries
// in both directions, relaying it between a client and a server.
type pings struct{ n atomic.Int64 }

// frames copies src to dst, counting PING frames. skip is the bytes before the first
// frame (the client's connection preface).
func (p *pings) frames(dst io.Writer, src io.Reader, skip int) error {
	if _, err := io.CopyN(dst, src, int64(skip)); err != nil {
		return err
	}
	var head [9]byte
	for {
		if _, err := io.ReadFull(src, head[:]); err != nil {
			return err
		}
		length := int64(binary.BigEndian.Uint32(append([]byte{0}, head[:3]...)))
		if head[3] == 0x6 { // PING
			p.n.Add(1)
		}
		if _, err := dst.Write(head[:]); err != nil {
			return err
		}
		if _, err := io.CopyN(dst, src, length); err != nil {
			return err
		}
	}
}

// callsThroughProxy makes n health checks from a client with dial options to a server with
// server options, through a relay that counts PING frames, and returns the count.
func callsThroughProxy(t *testing.T, n int, sopts []grpc.ServerOption, dopts []grpc.DialOption) int64 {
	t.Helper()
	srvLis, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	srv := grpc.NewServer(sopts...)
	healthpb.RegisterHealthServer(srv, health.NewServer())
	go func() { _ = srv.Serve(srvLis) }()
	t.Cleanup(srv.Stop)

	proxyLis, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	t.Cleanup(func() { proxyLis.Close() })
	var p pings
	var wg sync.WaitGroup
	t.Cleanup(wg.Wait)
	go func() {
		for {
			in, err := proxyLis.Accept()
			if err != nil {
				return
			}
			out, err := net.Dial("tcp", srvLis.Addr().String())
			if err != nil {
				in.Close()
				return
			}
			wg.Add(2)
			go func() { defer wg.Done(); _ = p.frames(out, in, len("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")); out.Close() }()
			go func() { defer wg.Done(); _ = p.frames(in, out, 0); in.Close() }()
		}
	}()

	conn, err := grpc.NewClient(proxyLis.Addr().String(),
		append([]grpc.DialOption{grpc.WithTransportCredentials(insecure.NewCredentials())}, dopts...)...)
	require.NoError(t, err)
	client := healthpb.NewHealthClient(conn)
	for range n {
		_, err := client.Check(t.Context(), &healthpb.HealthCheckRequest{})
		require.NoError(t, err)
	}
	require.NoError(t, conn.Close())
	srv.Stop()
	proxyLis.Close()
	return p.n.Load()
}

// With grpc-go's dynamic windows a run of calls sends BDP pings; with the static ones
// neither end sends any.
func TestStaticWindowsSendNoPings(t *testing.T) {
	const calls = 300
	dynamic := callsThroughProxy(t, calls, nil, nil)
	static := callsThroughProxy(t, calls, grpcwin.ServerOptions(), grpcwin.DialOptions())
	t.Logf("PING frames for %d calls: %d with dynamic windows, %d with static ones", calls, dynamic, static)
	require.Positive(t, dynamic, "the relay sees the pings of the default windows")
	require.Zero(t, static)
}
