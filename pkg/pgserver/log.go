package pgserver

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
)

// tailLines is how many of the last log lines an error quotes.
const tailLines = 30

// logLine matches log_line_prefix "%m [%p] ": "2025-01-02 03:04:05.678 UTC [42] LOG:  message".
var logLine = regexp.MustCompile(`^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d(?:\.\d+)? \S+ \[(\d+)\] ([A-Z0-9]+):\s+(.*)$`)

// openLog opens DataDir/log/postgres.log for a new run, keeping the previous
// run's log as postgres.log.1.
func openLog(dataDir string, id *osIdentity, logger *slog.Logger) (*logWriter, error) {
	dir := filepath.Join(dataDir, "log")
	switch err := os.Mkdir(dir, 0o700); {
	case err == nil:
		if err := chownTo(dir, id); err != nil {
			return nil, err
		}
	case !errors.Is(err, fs.ErrExist):
		return nil, fmt.Errorf("creating log directory: %w", err)
	}
	path := filepath.Join(dir, "postgres.log")
	if err := os.Rename(path, path+".1"); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("rotating %s: %w", path, err)
	}
	f, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return nil, fmt.Errorf("opening log file: %w", err)
	}
	return newLogWriter(f, logger), nil
}

// logWriter receives the output of initdb and postgres: it appends it to a
// file, forwards each line to a logger, and keeps the last lines for errors.
type logWriter struct {
	mu     sync.Mutex
	file   *os.File // nil: none
	logger *slog.Logger
	buf    []byte   // an incomplete last line
	lines  []string // the last tailLines lines, oldest first
}

func newLogWriter(file *os.File, logger *slog.Logger) *logWriter {
	return &logWriter{file: file, logger: logger}
}

// Write implements io.Writer. It never fails: a full disk must not stop postgres.
func (w *logWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.file != nil {
		_, _ = w.file.Write(p)
	}
	w.buf = append(w.buf, p...)
	for {
		i := bytes.IndexByte(w.buf, '\n')
		if i < 0 {
			break
		}
		w.line(string(w.buf[:i]))
		w.buf = w.buf[i+1:]
	}
	return len(p), nil
}

func (w *logWriter) line(line string) {
	if len(w.lines) == tailLines {
		w.lines = append(w.lines[:0], w.lines[1:]...)
	}
	w.lines = append(w.lines, line)

	level, attrs := slog.LevelDebug, []any{}
	msg := line
	if m := logLine.FindStringSubmatch(line); m != nil {
		pid, _ := strconv.Atoi(m[1])
		msg = m[3]
		attrs = append(attrs, slog.String("severity", m[2]), slog.Int("pid", pid))
		// FATAL ends one session (a refused connection, such as "the database
		// system is starting up" while Start polls): routine. A postmaster that
		// cannot start says so through Start's error.
		switch m[2] {
		case "WARNING":
			level = slog.LevelWarn
		case "PANIC":
			level = slog.LevelError
		}
	}
	w.logger.Log(context.Background(), level, msg, attrs...)
}

// tail returns the last lines written since the last resetTail.
func (w *logWriter) tail() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	lines := w.lines
	if len(w.buf) > 0 {
		lines = append(lines[:len(lines):len(lines)], string(w.buf))
	}
	if len(lines) == 0 {
		return "(no output)"
	}
	return "output:\n\t" + strings.Join(lines, "\n\t")
}

func (w *logWriter) resetTail() {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.lines, w.buf = nil, nil
}

func (w *logWriter) close() {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.file != nil {
		_ = w.file.Close()
		w.file = nil
	}
}
