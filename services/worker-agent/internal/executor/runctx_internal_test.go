package executor

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// countingReplica is a replica whose interrupt only counts.
func countingReplica() (*replica, *atomic.Int32) {
	n := &atomic.Int32{}
	return &replica{interrupt: func() { n.Add(1) }}, n
}

func requireInterrupts(t *testing.T, n *atomic.Int32, want int32, what string) {
	t.Helper()
	// end and watch interrupt on their own goroutines, as context.AfterFunc does.
	require.Eventually(t, func() bool { return n.Load() == want }, 5*time.Second, time.Millisecond, what)
	time.Sleep(10 * time.Millisecond)
	require.Equal(t, want, n.Load(), what)
}

// A run context behaves as context.WithCancelCause's, and interrupts exactly the reads
// waiting on it when it ends, as context.AfterFunc would.
func TestRunContextInterruptsTheReadsWaitingOnIt(t *testing.T) {
	t.Run("is a context", func(t *testing.T) {
		ctx, end := NewRunContext()
		require.NoError(t, ctx.Err())
		cause := errors.New("lease lost")
		end(cause)
		<-ctx.Done()
		require.ErrorIs(t, ctx.Err(), context.Canceled)
		require.Equal(t, cause, context.Cause(ctx))
		end(errors.New("later")) // a second end changes nothing
		require.Equal(t, cause, context.Cause(ctx))
	})
	t.Run("a read waiting when the run ends is interrupted", func(t *testing.T) {
		ctx, end := NewRunContext()
		r, n := countingReplica()
		i := interruptOnEnd(ctx, r)
		end(nil)
		requireInterrupts(t, n, 1, "interrupts of the waiting read")
		require.False(t, i.stop(), "the interruption may land after the read: the replica must not be reused")
		end(nil)
		requireInterrupts(t, n, 1, "interrupts after a second end")
	})
	t.Run("a read that ended before the run is left alone", func(t *testing.T) {
		ctx, end := NewRunContext()
		r, n := countingReplica()
		i := interruptOnEnd(ctx, r)
		require.True(t, i.stop())
		end(nil)
		requireInterrupts(t, n, 0, "interrupts of a read no longer waiting")
	})
	t.Run("a read that starts after the run ended is interrupted at once", func(t *testing.T) {
		ctx, end := NewRunContext()
		end(ErrCancelled)
		r, n := countingReplica()
		i := interruptOnEnd(ctx, r)
		requireInterrupts(t, n, 1, "interrupts of a read started after the end")
		require.False(t, i.stop())
	})
	t.Run("every waiting read is interrupted", func(t *testing.T) {
		ctx, end := NewRunContext()
		r1, n1 := countingReplica()
		r2, n2 := countingReplica()
		r3, n3 := countingReplica()
		i1, i2, i3 := interruptOnEnd(ctx, r1), interruptOnEnd(ctx, r2), interruptOnEnd(ctx, r3)
		require.True(t, i2.stop(), "the read of r2 is over")
		end(ErrTimedOut)
		requireInterrupts(t, n1, 1, "r1")
		requireInterrupts(t, n2, 0, "r2")
		requireInterrupts(t, n3, 1, "r3")
		require.False(t, i1.stop())
		require.False(t, i3.stop())
	})
	t.Run("another context uses context.AfterFunc", func(t *testing.T) {
		ctx, cancel := context.WithCancel(t.Context())
		r, n := countingReplica()
		i := interruptOnEnd(ctx, r)
		cancel()
		requireInterrupts(t, n, 1, "interrupts of a read on another context")
		require.False(t, i.stop())
	})
}
