// Package standin is a stand-in for the worker-agent, for tests only: tests re-execute
// their own binary with Env set, and TestMain hands control to Main. The stand-in does
// what the worker-agent does with its process (start, and on SIGTERM stop taking work,
// finish, exit 0) and leaves marker files so tests can follow it.
//
// It owns nothing of the autoscaler and must never be used outside tests: it runs no
// work and talks to no scheduler.
package standin

import (
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// Environment variables that drive the stand-in.
const (
	// Env set to "1" makes a test binary run Main instead of its tests.
	Env = "AUTOSCALER_TEST_STAND_IN_WORKER"
	// EnvDir is where the stand-in writes <pid>.started, <pid>.draining and <pid>.exited,
	// and where <pid>.release lets a held drain finish.
	EnvDir = "STAND_IN_DIR"
	// EnvHold set to "1" keeps a draining stand-in busy until <pid>.release appears, like
	// a worker finishing a long run.
	EnvHold = "STAND_IN_HOLD"
	// EnvIgnoreTerm set to "1" makes a stand-in that never drains (a hung worker).
	EnvIgnoreTerm = "STAND_IN_IGNORE_TERM"
	// EnvEcho names variables whose values the stand-in writes into <pid>.started, as
	// NAME=value separated by spaces (comma-separated names).
	EnvEcho = "STAND_IN_ECHO"
)

// Markers the stand-in writes.
const (
	// Started is written once the stand-in runs; it holds the echoed variables.
	Started = "started"
	// Draining is written when SIGTERM arrives.
	Draining = "draining"
	// Exited is written just before a clean exit.
	Exited = "exited"
	// Release, written by a test, lets a held drain finish.
	Release = "release"
)

// Active reports whether this process was started as a stand-in.
func Active() bool { return os.Getenv(Env) == "1" }

// Marker is the path of marker what of process pid in dir.
func Marker(dir string, pid int, what string) string {
	return filepath.Join(dir, strconv.Itoa(pid)+"."+what)
}

// Main is the stand-in worker-agent; it returns the exit code.
func Main() int {
	dir := os.Getenv(EnvDir)
	pid := os.Getpid()
	mark := func(what, content string) {
		// Write then rename, so a test never reads a half-written marker.
		path := Marker(dir, pid, what)
		if err := os.WriteFile(path+".tmp", []byte(content), 0o600); err != nil {
			panic(err)
		}
		if err := os.Rename(path+".tmp", path); err != nil {
			panic(err)
		}
	}
	term := make(chan os.Signal, 1)
	signal.Notify(term, syscall.SIGTERM)
	if os.Getenv(EnvIgnoreTerm) == "1" {
		signal.Ignore(syscall.SIGTERM)
	}
	echo := ""
	for _, name := range strings.Split(os.Getenv(EnvEcho), ",") {
		if name == "" {
			continue
		}
		if echo != "" {
			echo += " "
		}
		echo += fmt.Sprintf("%s=%s", name, os.Getenv(name))
	}
	mark(Started, echo)
	<-term
	mark(Draining, "")
	if os.Getenv(EnvHold) == "1" {
		for {
			if _, err := os.Stat(Marker(dir, pid, Release)); err == nil {
				break
			}
			time.Sleep(5 * time.Millisecond) // the stand-in's own work loop, not a test wait
		}
	}
	mark(Exited, "")
	return 0
}
