package rawio

import (
	"fmt"
	"io"
	"net"
	"os"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Wrap returns conn with raw reads and writes, or conn itself when it has no file
// descriptor (a pipe from net.Pipe, a TLS connection: wrap the one underneath).
func Wrap(conn net.Conn) net.Conn {
	if _, ok := conn.(*Conn); ok {
		return conn
	}
	sc, ok := conn.(syscall.Conn)
	if !ok {
		return conn
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return conn
	}
	return &Conn{Conn: conn, sc: sc, rc: rc}
}

// Conn is a connection whose Read and Write are raw system calls on its (non-blocking)
// descriptor; everything else is the wrapped connection's.
type Conn struct {
	net.Conn
	sc syscall.Conn
	rc syscall.RawConn
}

// SyscallConn is the wrapped connection's.
func (c *Conn) SyscallConn() (syscall.RawConn, error) { return c.sc.SyscallConn() }

// Read reads what the socket holds, waiting on the network poller while it holds nothing.
func (c *Conn) Read(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	n, errno := 0, syscall.Errno(0)
	err := c.rc.Read(func(fd uintptr) bool {
		for {
			r, _, e := unix.RawSyscall(unix.SYS_READ, fd, uintptr(unsafe.Pointer(unsafe.SliceData(p))), uintptr(len(p)))
			switch e {
			case unix.EINTR:
				continue
			case unix.EAGAIN:
				return false
			}
			n, errno = int(r), e
			return true
		}
	})
	switch {
	case err != nil:
		return 0, c.opError("read", err)
	case errno != 0:
		return 0, c.opError("read", os.NewSyscallError("read", errno))
	case n == 0:
		return 0, io.EOF
	}
	return n, nil
}

// Write writes all of p, waiting on the network poller while the socket's buffer is full.
func (c *Conn) Write(p []byte) (int, error) {
	n, errno := 0, syscall.Errno(0)
	err := c.rc.Write(func(fd uintptr) bool {
		for n < len(p) {
			rest := p[n:]
			r, _, e := unix.RawSyscall(unix.SYS_WRITE, fd, uintptr(unsafe.Pointer(unsafe.SliceData(rest))), uintptr(len(rest)))
			switch e {
			case 0:
				n += int(r)
			case unix.EINTR:
			case unix.EAGAIN:
				return false
			default:
				errno = e
				return true
			}
		}
		return true
	})
	switch {
	case err != nil:
		return n, c.opError("write", err)
	case errno != 0:
		return n, c.opError("write", os.NewSyscallError("write", errno))
	}
	return n, nil
}

// opError wraps err as the net package does, so that callers that look for a net.Error
// (a deadline's Timeout) or errors.Is(err, os.ErrDeadlineExceeded) find it.
func (c *Conn) opError(op string, err error) error {
	return &net.OpError{Op: op, Net: c.LocalAddr().Network(), Source: c.LocalAddr(), Addr: c.RemoteAddr(), Err: err}
}

// setUserTimeout sets a TCP connection's TCP_USER_TIMEOUT; other connections are left alone.
func setUserTimeout(conn net.Conn, d time.Duration) error {
	tc, ok := conn.(*net.TCPConn)
	if !ok {
		return nil
	}
	rc, err := tc.SyscallConn()
	if err != nil {
		return err
	}
	var serr error
	if err := rc.Control(func(fd uintptr) {
		serr = unix.SetsockoptInt(int(fd), unix.IPPROTO_TCP, unix.TCP_USER_TIMEOUT, int(d.Milliseconds()))
	}); err != nil {
		return err
	}
	if serr != nil {
		return fmt.Errorf("setting TCP_USER_TIMEOUT: %w", serr)
	}
	return nil
}
