package store

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/agentserver/agentserver/pkg/rawio"
)

// Listen holds a direct connection LISTENing on channels and calls fn for each
// notification until ctx ends, reconnecting with backoff when the connection drops.
// It needs a direct URL: LISTEN does not pass through PgBouncer in transaction mode.
// Callers keep a polling fallback; a notification only shortens the wait.
func Listen(ctx context.Context, url string, channels []string, log *slog.Logger, fn func(channel, payload string)) {
	backoff := 100 * time.Millisecond
	for ctx.Err() == nil {
		start := time.Now()
		err := listenOnce(ctx, url, channels, fn)
		if ctx.Err() != nil {
			return
		}
		if time.Since(start) > time.Minute {
			backoff = 100 * time.Millisecond // it had been working: retry soon
		}
		log.Warn("listen connection lost; polling continues meanwhile", "err", err, "retry_in", backoff)
		select {
		case <-ctx.Done():
			return
		case <-time.After(backoff):
		}
		backoff = min(backoff*2, 5*time.Second)
	}
}

func listenOnce(ctx context.Context, url string, channels []string, fn func(channel, payload string)) error {
	cfg, err := pgx.ParseConfig(url)
	if err != nil {
		return fmt.Errorf("parsing database URL: %w", err)
	}
	cfg.DialFunc = rawio.Dial(cfg.DialFunc) // as the pools' (Open)
	conn, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		return fmt.Errorf("connecting: %w", err)
	}
	defer conn.Close(context.WithoutCancel(ctx))
	for _, ch := range channels {
		if _, err := conn.Exec(ctx, "LISTEN "+pgx.Identifier{ch}.Sanitize()); err != nil {
			return fmt.Errorf("listening on %s: %w", ch, err)
		}
	}
	for {
		n, err := conn.WaitForNotification(ctx)
		if err != nil {
			return err
		}
		fn(n.Channel, n.Payload)
	}
}
