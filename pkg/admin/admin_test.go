package admin_test

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/agentserver/agentserver/pkg/admin"
)

func TestEndpoints(t *testing.T) {
	t.Parallel()
	var broken atomic.Bool
	s, err := admin.Listen("127.0.0.1:0", func(context.Context) error {
		if broken.Load() {
			return errors.New("database unreachable")
		}
		return nil
	}, slog.New(slog.NewTextHandler(io.Discard, nil)))
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	base := "http://" + s.Addr().String()
	get := func(path string) (int, string) {
		resp, err := http.Get(base + path)
		require.NoError(t, err)
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	code, _ := get("/healthz")
	require.Equal(t, 200, code)
	code, _ = get("/readyz")
	require.Equal(t, 200, code)
	broken.Store(true)
	code, body := get("/readyz")
	require.Equal(t, 503, code)
	require.Contains(t, body, "database unreachable")
	code, body = get("/metrics")
	require.Equal(t, 200, code)
	require.True(t, strings.Contains(body, "go_goroutines"))
	cancel()
	require.NoError(t, <-done)
}
