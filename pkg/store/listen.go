package store

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/agentserver/agentserver/pkg/rawio"
)

// Listen holds a direct connection LISTENing on channels and calls fn for each
// notification until ctx ends, reconnecting with backoff when the connection drops.
// It needs a direct URL: LISTEN does not pass through PgBouncer in transaction mode.
// Callers keep a polling fallback; a notification only shortens the wait. With a pause
// (NewPause), the connection is closed while the pause is on (SetPaused).
func Listen(ctx context.Context, url string, channels []string, log *slog.Logger, fn func(channel, payload string), pause *Pause) {
	backoff := 100 * time.Millisecond
	for ctx.Err() == nil {
		if pause != nil && !pause.waitResumed(ctx) {
			return
		}
		start := time.Now()
		err := listenOnce(ctx, url, channels, fn, pause)
		if ctx.Err() != nil {
			return
		}
		if errors.Is(err, errPaused) {
			continue
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

// errPaused ends a connection of Listen closed for its pause.
var errPaused = errors.New("paused")

func listenOnce(ctx context.Context, url string, channels []string, fn func(channel, payload string), pause *Pause) error {
	cfg, err := pgx.ParseConfig(url)
	if err != nil {
		return fmt.Errorf("parsing database URL: %w", err)
	}
	cfg.DialFunc = rawio.Dial(cfg.DialFunc) // as the pools' (Open)
	// connCtx ends when the pause is turned on: the wait below returns and the connection
	// closes (whatever state the interrupted wait left it in).
	connCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	gen := uint64(0)
	if pause != nil {
		paused, g, off := pause.current()
		if paused {
			return errPaused
		}
		gen = g
		stop := context.AfterFunc(off, cancel)
		defer stop()
	}
	conn, err := pgx.ConnectConfig(connCtx, cfg)
	if err != nil {
		return pausedOr(pause, gen, fmt.Errorf("connecting: %w", err))
	}
	defer conn.Close(context.WithoutCancel(ctx))
	for _, ch := range channels {
		if _, err := conn.Exec(connCtx, "LISTEN "+pgx.Identifier{ch}.Sanitize()); err != nil {
			return pausedOr(pause, gen, fmt.Errorf("listening on %s: %w", ch, err))
		}
	}
	if pause != nil {
		pause.listening(gen)
	}
	for {
		n, err := conn.WaitForNotification(connCtx)
		if err != nil {
			return pausedOr(pause, gen, err)
		}
		fn(n.Channel, n.Payload)
	}
}

// pausedOr is errPaused when the pause was turned on since the connection of gen began
// (even if it is off again), else err.
func pausedOr(p *Pause, gen uint64, err error) error {
	if p != nil {
		if paused, now := p.state(); paused || now != gen {
			return errPaused
		}
	}
	return err
}

// Pause closes a Listen's connection while it is on (SetPaused) and opens it again when
// it is turned off. PostgreSQL signals every backend that listens on any channel of the
// database at every commit that sends a notification, whatever its channel; a closed
// connection is the only way to take none. The scheduler's dispatcher pauses its LISTEN
// while it claims back to back (dispatchLoop).
type Pause struct {
	mu     sync.Mutex
	paused bool
	gen    uint64 // bumped by every change
	done   uint64 // the last gen under which a connection listened
	// changed is closed and replaced at every change of paused or done.
	changed chan struct{}
	// offCtx ends when the pause is turned on; turning it off makes a new one
	// (current).
	offCtx    context.Context
	offCancel context.CancelFunc
}

// NewPause returns a pause, off.
func NewPause() *Pause {
	p := &Pause{gen: 1, changed: make(chan struct{})}
	p.offCtx, p.offCancel = context.WithCancel(context.Background())
	return p
}

func (p *Pause) state() (bool, uint64) {
	paused, gen, _ := p.current()
	return paused, gen
}

// current returns whether the pause is on, its gen and, while it is off, a context that
// ends when it is turned on.
func (p *Pause) current() (paused bool, gen uint64, off context.Context) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.paused, p.gen, p.offCtx
}

func (p *Pause) listening(gen uint64) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if gen > p.done {
		p.done = gen
		close(p.changed)
		p.changed = make(chan struct{})
	}
}

// waitResumed waits until the pause is off; false when ctx ended first.
func (p *Pause) waitResumed(ctx context.Context) bool {
	return p.waitFor(ctx, func() bool { return !p.paused })
}

// waitFor waits until ok, called with p.mu held, holds; false when ctx ended first.
func (p *Pause) waitFor(ctx context.Context, ok func() bool) bool {
	for {
		p.mu.Lock()
		done, changed := ok(), p.changed
		p.mu.Unlock()
		if done {
			return true
		}
		select {
		case <-changed:
		case <-ctx.Done():
			return false
		}
	}
}

// SetPaused turns the pause on (the connection closes; no wait) or off. Turning it off
// waits until the connection listens again (its LISTENs done): a notification committed
// after SetPaused returns is delivered. An error means it may not listen yet (ctx ended
// first): callers fall back to polling.
func (p *Pause) SetPaused(ctx context.Context, paused bool) error {
	p.mu.Lock()
	if p.paused != paused {
		p.paused = paused
		p.gen++
		if paused {
			p.offCancel()
		} else {
			p.offCtx, p.offCancel = context.WithCancel(context.Background())
		}
		close(p.changed)
		p.changed = make(chan struct{})
	}
	gen := p.gen
	p.mu.Unlock()
	if paused || p.waitFor(ctx, func() bool { return p.done >= gen }) {
		return nil
	}
	return errors.Join(errors.New("the LISTEN connection did not listen in time"), ctx.Err())
}
