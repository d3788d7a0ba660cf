package rawio_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"io"
	"net"
	"os"
	"runtime"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"

	"github.com/agentserver/agentserver/pkg/rawio"
)

// pair returns both ends of a loopback TCP connection, each wrapped: the dialled one by
// Dial, the accepted one by Listener.
func pair(t *testing.T) (client, server net.Conn) {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	l = rawio.Listener(l, 7*time.Second)
	t.Cleanup(func() { l.Close() })
	accepted := make(chan net.Conn, 1)
	go func() {
		c, err := l.Accept()
		if err != nil {
			close(accepted)
			return
		}
		accepted <- c
	}()
	var d net.Dialer
	client, err = rawio.Dial(d.DialContext)(t.Context(), "tcp", l.Addr().String())
	require.NoError(t, err)
	server = <-accepted
	require.NotNil(t, server)
	t.Cleanup(func() { client.Close(); server.Close() })
	// A broken Read or Write fails the test instead of waiting forever.
	deadline := time.Now().Add(10 * time.Second)
	require.NoError(t, client.SetDeadline(deadline))
	require.NoError(t, server.SetDeadline(deadline))
	if runtime.GOOS == "linux" {
		require.IsType(t, &rawio.Conn{}, client)
		require.IsType(t, &rawio.Conn{}, server)
	}
	return client, server
}

// Far more than the sockets' buffers hold, both ways at once: writes wait on the poller
// for room and resume where they stopped, reads wait for data, and every byte arrives once
// and in order.
func TestLargeTransfersBothWays(t *testing.T) {
	client, server := pair(t)
	up, down := make([]byte, 8<<20+13), make([]byte, 5<<20+7)
	_, _ = rand.Read(up)
	_, _ = rand.Read(down)
	send := func(c net.Conn, p []byte) <-chan error {
		done := make(chan error, 1)
		go func() {
			n, err := c.Write(p)
			if err == nil && n != len(p) {
				err = io.ErrShortWrite
			}
			done <- err
		}()
		return done
	}
	upDone, downDone := send(client, up), send(server, down)
	gotUp, gotDown := make([]byte, len(up)), make([]byte, len(down))
	readDone := make(chan error, 1)
	go func() { _, err := io.ReadFull(client, gotDown); readDone <- err }()
	_, err := io.ReadFull(server, gotUp)
	require.NoError(t, err)
	require.NoError(t, <-readDone)
	require.NoError(t, <-upDone)
	require.NoError(t, <-downDone)
	require.True(t, bytes.Equal(up, gotUp), "client → server bytes differ")
	require.True(t, bytes.Equal(down, gotDown), "server → client bytes differ")
}

func TestReadReturnsEOFWhenThePeerCloses(t *testing.T) {
	client, server := pair(t)
	_, err := server.Write([]byte("last"))
	require.NoError(t, err)
	require.NoError(t, server.Close())
	got, err := io.ReadAll(client)
	require.NoError(t, err, "ReadAll stops at io.EOF")
	require.Equal(t, "last", string(got))
	n, err := client.Read(make([]byte, 8))
	require.Equal(t, 0, n)
	require.ErrorIs(t, err, io.EOF)
}

// Deadlines interrupt a waiting Read or Write with the errors net's own connections give,
// which pgx and gRPC look for (a net.Error whose Timeout is true).
func TestDeadlinesInterruptWaitingCalls(t *testing.T) {
	client, server := pair(t)
	require.NoError(t, client.SetReadDeadline(time.Now().Add(50*time.Millisecond)))
	_, err := client.Read(make([]byte, 1))
	require.ErrorIs(t, err, os.ErrDeadlineExceeded)
	var ne net.Error
	require.ErrorAs(t, err, &ne)
	require.True(t, ne.Timeout())

	// Nobody reads the server's end: the write fills both buffers, then times out
	// having written part of p.
	require.NoError(t, client.SetWriteDeadline(time.Now().Add(200*time.Millisecond)))
	p := make([]byte, 64<<20)
	n, err := client.Write(p)
	require.ErrorIs(t, err, os.ErrDeadlineExceeded)
	require.Greater(t, n, 0)
	require.Less(t, n, len(p))
	_ = server
}

func TestCloseInterruptsAWaitingRead(t *testing.T) {
	client, _ := pair(t)
	done := make(chan error, 1)
	go func() { _, err := client.Read(make([]byte, 1)); done <- err }()
	time.Sleep(20 * time.Millisecond)
	require.NoError(t, client.Close())
	select {
	case err := <-done:
		require.ErrorIs(t, err, net.ErrClosed)
	case <-time.After(5 * time.Second):
		t.Fatal("Read still waiting after Close")
	}
	_, err := client.Write([]byte("x"))
	require.ErrorIs(t, err, net.ErrClosed)
}

// A write to a connection the peer reset fails with the system call's error, as net's
// would (os.SyscallError inside net.OpError), not a silent short write.
func TestWriteToAResetConnectionFails(t *testing.T) {
	client, server := pair(t)
	rc, err := server.(syscall.Conn).SyscallConn()
	require.NoError(t, err)
	require.NoError(t, rc.Control(func(fd uintptr) {
		require.NoError(t, unix.SetsockoptLinger(int(fd), unix.SOL_SOCKET, unix.SO_LINGER, &unix.Linger{Onoff: 1, Linger: 0}))
	}))
	require.NoError(t, server.Close()) // linger 0: the close sends RST
	for range 100 {
		if _, err = client.Write([]byte("after reset")); err != nil {
			break
		}
		time.Sleep(5 * time.Millisecond)
	}
	require.Error(t, err)
	var se *os.SyscallError
	require.ErrorAs(t, err, &se)
	var oe *net.OpError
	require.ErrorAs(t, err, &oe)
	require.Equal(t, "write", oe.Op)
}

func TestWrapLeavesConnectionsWithoutADescriptor(t *testing.T) {
	a, b := net.Pipe()
	defer a.Close()
	defer b.Close()
	require.Same(t, a, rawio.Wrap(a))
	client, _ := pair(t)
	require.Same(t, client, rawio.Wrap(client), "wrapping twice wraps once")
}

func TestDialReturnsTheDialError(t *testing.T) {
	wantErr := errors.New("refused")
	_, err := rawio.Dial(func(context.Context, string, string) (net.Conn, error) { return nil, wantErr })(t.Context(), "tcp", "x")
	require.ErrorIs(t, err, wantErr)
}

// The listener sets the TCP_USER_TIMEOUT a gRPC server would have set on an unwrapped
// connection.
func TestListenerSetsTheUserTimeout(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("TCP_USER_TIMEOUT is Linux only")
	}
	_, server := pair(t)
	rc, err := server.(syscall.Conn).SyscallConn()
	require.NoError(t, err)
	var ms int
	require.NoError(t, rc.Control(func(fd uintptr) {
		ms, err = unix.GetsockoptInt(int(fd), unix.IPPROTO_TCP, unix.TCP_USER_TIMEOUT)
	}))
	require.NoError(t, err)
	require.Equal(t, 7000, ms)
}
