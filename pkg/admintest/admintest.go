// Package admintest helps tests read a service's admin endpoint (package admin).
package admintest

import (
	"io"
	"net"
	"net/http"
	"testing"

	"github.com/stretchr/testify/require"
)

// Metrics reads GET /metrics of the admin endpoint at addr (which must be set: a service
// started without an admin address has none) and requires a 200 answer.
func Metrics(t testing.TB, addr net.Addr) string {
	t.Helper()
	require.NotNil(t, addr, "the admin endpoint was not started (no admin address set)")
	resp, err := http.Get("http://" + addr.String() + "/metrics")
	require.NoError(t, err)
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	require.Equal(t, http.StatusOK, resp.StatusCode, string(body))
	return string(body)
}
