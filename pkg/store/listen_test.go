package store_test

import (
	"context"
	"io"
	"log/slog"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/agentserver/agentserver/pkg/store"
)

// A paused Listen holds no listening backend (PostgreSQL signals every one at every
// notifying commit) and delivers nothing; turned off again, it returns once it listens,
// so that a notification sent afterwards is delivered.
func TestPausedListenHoldsNoListener(t *testing.T) {
	t.Parallel()
	st, url := newStoreAt(t)
	ctx, cancel := context.WithCancel(t.Context())
	pause := store.NewPause()
	got := make(chan string, 16)
	done := make(chan struct{})
	go func() {
		defer close(done)
		store.Listen(ctx, url, []string{"q", "other"}, slog.New(slog.NewTextHandler(io.Discard, nil)),
			func(channel, payload string) { got <- channel + ":" + payload }, pause)
	}()
	t.Cleanup(func() { cancel(); <-done })
	resume := func() {
		t.Helper()
		rctx, rcancel := context.WithTimeout(ctx, 10*time.Second)
		defer rcancel()
		require.NoError(t, pause.SetPaused(rctx, false))
	}
	notify := func(channel, payload string) {
		t.Helper()
		_, err := st.Pool().Exec(ctx, `SELECT pg_notify($1, $2)`, channel, payload)
		require.NoError(t, err)
	}
	next := func() string {
		t.Helper()
		select {
		case n := <-got:
			return n
		case <-time.After(10 * time.Second):
			t.Fatal("no notification")
			return ""
		}
	}
	listeners := func() (n int) {
		require.NoError(t, st.Pool().QueryRow(ctx, `SELECT count(*) FROM pg_stat_activity
			WHERE datname = current_database() AND query LIKE 'LISTEN %'`).Scan(&n))
		return n
	}

	resume() // the first connection
	notify("q", "1")
	require.Equal(t, "q:1", next())
	require.Equal(t, 1, listeners())

	require.NoError(t, pause.SetPaused(ctx, true))
	require.Eventually(t, func() bool { return listeners() == 0 }, 10*time.Second, 10*time.Millisecond, "the connection closes")
	notify("q", "2")
	notify("other", "3")

	resume()
	notify("q", "4")
	require.Equal(t, "q:4", next(), "nothing sent while paused")
	// Paused and resumed at once: still listening afterwards.
	require.NoError(t, pause.SetPaused(ctx, true))
	resume()
	notify("other", "5")
	require.Equal(t, "other:5", next())
}
