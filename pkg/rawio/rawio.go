// Package rawio gives network connections reads and writes that are raw system calls.
//
// A read or write of a net.Conn enters Go's system-call accounting: the goroutine's P is
// marked as in a system call, and the runtime's monitor thread (sysmon) hands it to
// another thread when the call lasts longer than its polling period (20 µs, more when
// idle). On loopback TCP a write runs the receiver's side of the stack too (and wakes the
// receiving process), often for longer than that on a busy machine; every entry also wakes
// a sleeping monitor, which then polls at its shortest period again. Under load the
// monitor's wake-ups and the hand-offs were ~15 % of the all-in-one server's CPU (perf,
// docs/performance-history.md, fifteenth pass). The sockets are non-blocking, so a raw call never
// waits: when the kernel would block, the goroutine parks on the network poller as usual,
// and deadlines work as they do for the wrapped connection.
//
// The worker's executor pipes do the same (services/worker-agent/internal/executor).
package rawio

import (
	"context"
	"net"
	"time"
)

// DialFunc dials a connection (net.Dialer.DialContext's shape, and pgconn.DialFunc's).
type DialFunc = func(ctx context.Context, network, addr string) (net.Conn, error)

// Dial wraps dial: the connections it returns read and write with raw system calls.
func Dial(dial DialFunc) DialFunc {
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		conn, err := dial(ctx, network, addr)
		if err != nil {
			return nil, err
		}
		return Wrap(conn), nil
	}
}

// Listener wraps l: the connections it accepts read and write with raw system calls.
//
// userTimeout, when positive, is set as each accepted TCP connection's TCP_USER_TIMEOUT
// (Linux): how long sent data may stay unacknowledged before the kernel drops the
// connection. A gRPC server sets it from its keepalive timeout, but only on a
// *net.TCPConn, which a wrapped connection is not: give it here instead.
func Listener(l net.Listener, userTimeout time.Duration) net.Listener {
	return &listener{Listener: l, userTimeout: userTimeout}
}

type listener struct {
	net.Listener
	userTimeout time.Duration
}

func (l *listener) Accept() (net.Conn, error) {
	for {
		conn, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		if l.userTimeout > 0 {
			if err := setUserTimeout(conn, l.userTimeout); err != nil {
				// As gRPC does with a connection it cannot set up: drop this one, serve
				// the next (an error from Accept would stop the server).
				conn.Close()
				continue
			}
		}
		return Wrap(conn), nil
	}
}
