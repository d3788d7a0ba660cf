package executor

import (
	"io"
	"os"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// The stderr reader counts as settled only when nothing waits in the pipe and what its
// reads took from the pipe was handed on: bytes a read took but whose lines were not handed
// on yet (the reader has not asked for more) keep it unsettled, though the pipe is empty.
func TestStderrSettledOnlyOnceReadBytesWereHandedOn(t *testing.T) {
	t.Parallel()
	r, w, err := os.Pipe()
	require.NoError(t, err)
	t.Cleanup(func() { _ = r.Close(); _ = w.Close() })
	tr := newTrackedReader(newOneShot(r), "stderr")
	require.True(t, tr.settled(), "nothing written, nothing read")

	_, err = w.WriteString("a line\n")
	require.NoError(t, err)
	require.False(t, tr.settled(), "the line waits in the pipe")

	buf := make([]byte, 64)
	n, err := tr.Read(buf)
	require.NoError(t, err)
	require.Equal(t, "a line\n", string(buf[:n]))
	require.False(t, tr.settled(), "the pipe is empty but the line read was not handed on")

	// Asking for more means what was read was handed on; the reader now waits on an
	// empty pipe.
	done := make(chan error, 1)
	go func() { _, err := tr.Read(buf); done <- err }()
	require.Eventually(t, tr.settled, 5*time.Second, time.Millisecond)

	require.NoError(t, w.Close())
	require.ErrorIs(t, <-done, io.EOF)
}
