//go:build !linux

package rawio

import (
	"net"
	"time"
)

// Wrap returns conn: raw reads and writes are Linux only.
func Wrap(conn net.Conn) net.Conn { return conn }

// setUserTimeout does nothing: TCP_USER_TIMEOUT is Linux only.
func setUserTimeout(net.Conn, time.Duration) error { return nil }
