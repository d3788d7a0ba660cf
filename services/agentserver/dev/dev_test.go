package dev_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"golang.org/x/sync/errgroup"

	"github.com/agentserver/agentserver/pkg/pgtest"
	"github.com/agentserver/agentserver/services/agentserver/dev"
)

func TestMain(m *testing.M) { pgtest.Main(m) }

// server is an all-in-one agentserver started on free loopback ports.
type server struct {
	base  string
	http  *http.Client
	stop  func()
	addrs dev.Addrs
}

func repoRoot(t *testing.T) string {
	t.Helper()
	root, err := filepath.Abs("../../..")
	require.NoError(t, err)
	_, err = os.Stat(filepath.Join(root, "examples", "echo", "echo.py"))
	require.NoError(t, err, "examples/echo/echo.py must exist at the repository root")
	return root
}

func startServer(t *testing.T) *server {
	t.Helper()
	return startServerOn(t, pgtest.NewDatabase(t))
}

// startServerOn starts an all-in-one on an existing database; stop (also run at cleanup)
// shuts it down cleanly.
func startServerOn(t *testing.T, dbURL string, mods ...func(*dev.Config)) *server {
	t.Helper()
	cfg := dev.Defaults()
	cfg.DatabaseURL = dbURL
	cfg.Gateway.HTTPAddr = "127.0.0.1:0"
	cfg.Gateway.GRPCAddr = "127.0.0.1:0"
	cfg.Scheduler.GRPCAddr = "127.0.0.1:0"
	cfg.Worker.Slots = "cpu=4"
	cfg.Worker.WorkDir = repoRoot(t)
	cfg.Worker.DrainGrace = 5 * time.Second
	for _, mod := range mods {
		mod(&cfg)
	}

	ctx, cancel := context.WithCancel(context.Background())
	addrs := make(chan dev.Addrs, 1)
	done := make(chan error, 1)
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	if testing.Verbose() {
		log = slog.New(slog.NewTextHandler(os.Stderr, nil))
	}
	go func() { done <- dev.Run(ctx, cfg, log, func(a dev.Addrs) { addrs <- a }) }()
	var a dev.Addrs
	select {
	case a = <-addrs:
	case err := <-done:
		cancel()
		t.Fatalf("all-in-one did not start: %v", err)
	}
	var once sync.Once
	stop := func() {
		once.Do(func() {
			cancel()
			select {
			case err := <-done:
				require.NoError(t, err, "clean shutdown")
			case <-time.After(30 * time.Second):
				t.Error("all-in-one did not stop within 30s")
			}
		})
	}
	t.Cleanup(stop)
	return &server{base: "http://" + a.HTTP.String(), http: &http.Client{Timeout: 2 * time.Minute}, stop: stop, addrs: a}
}

// call sends a JSON request and decodes the JSON answer; it returns the HTTP status.
func (s *server) call(t *testing.T, method, path string, body any, out any) int {
	t.Helper()
	var rd io.Reader
	switch b := body.(type) {
	case nil:
	case string:
		rd = strings.NewReader(b)
	default:
		raw, err := json.Marshal(b)
		require.NoError(t, err)
		rd = bytes.NewReader(raw)
	}
	req, err := http.NewRequestWithContext(t.Context(), method, s.base+path, rd)
	require.NoError(t, err)
	req.Header.Set("Content-Type", "application/json")
	resp, err := s.http.Do(req)
	require.NoError(t, err)
	defer resp.Body.Close()
	raw, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	if out != nil {
		require.NoError(t, json.Unmarshal(raw, out), "answer of %s %s: %s", method, path, raw)
	}
	return resp.StatusCode
}

type run struct {
	Name   string         `json:"name"`
	State  string         `json:"state"`
	Input  map[string]any `json:"input"`
	Output map[string]any `json:"output"`
	Error  string         `json:"error"`
	Worker string         `json:"worker"`
}

type apiError struct {
	Code    int    `json:"code"`
	Message string `json:"message"`
}

func createEcho(t *testing.T, s *server) {
	t.Helper()
	flow, err := os.ReadFile(filepath.Join(repoRoot(t), "examples", "echo", "flow.yaml"))
	require.NoError(t, err)
	var a struct {
		Name    string `json:"name"`
		Version string `json:"version"`
	}
	code := s.call(t, "POST", "/v1/assistants?assistant_id=echo", map[string]any{"flow": string(flow), "displayName": "Echo"}, &a)
	require.Equal(t, http.StatusOK, code)
	require.Equal(t, "assistants/echo", a.Name)
	require.Equal(t, "1", a.Version)
}

// Fifty runs submitted over REST all go through gateway, queue, scheduler, worker and a
// real Python executor, and come back SUCCEEDED with their outputs.
func TestFiftyRunsEndToEnd(t *testing.T) {
	s := startServer(t)
	createEcho(t, s)

	const n = 50
	names := make([]string, n)
	var g errgroup.Group
	g.SetLimit(8)
	for i := range n {
		g.Go(func() error {
			var r run
			code := s.call(t, "POST", "/v1/runs", map[string]any{
				"assistant": "assistants/echo", "input": map[string]any{"i": i, "msg": fmt.Sprintf("hello %d", i)},
			}, &r)
			if code != http.StatusOK || r.State != "QUEUED" {
				return fmt.Errorf("create run %d: HTTP %d, state %q", i, code, r.State)
			}
			names[i] = r.Name
			return nil
		})
	}
	require.NoError(t, g.Wait())

	var mu sync.Mutex
	workers := map[string]bool{}
	for i, name := range names {
		g.Go(func() error {
			var r run
			code := s.call(t, "GET", "/v1/"+name+":wait?timeout=90s", nil, &r)
			if code != http.StatusOK {
				return fmt.Errorf("wait %s: HTTP %d", name, code)
			}
			if r.State != "SUCCEEDED" {
				return fmt.Errorf("run %d ended %s: %s", i, r.State, r.Error)
			}
			want := map[string]any{"i": float64(i), "msg": fmt.Sprintf("hello %d", i), "echo": true}
			if fmt.Sprint(r.Output) != fmt.Sprint(want) {
				return fmt.Errorf("run %d output %v, want %v", i, r.Output, want)
			}
			mu.Lock()
			workers[r.Worker] = true
			mu.Unlock()
			return nil
		})
	}
	require.NoError(t, g.Wait())
	require.Len(t, workers, 1)

	var list struct {
		Runs []run `json:"runs"`
	}
	require.Equal(t, http.StatusOK, s.call(t, "GET", "/v1/runs?state=SUCCEEDED&assistant=assistants/echo&page_size=100", nil, &list))
	require.Len(t, list.Runs, n)

	var workerList struct {
		Workers []struct {
			State string `json:"state"`
			Slots []struct {
				Type  string `json:"type"`
				Total int    `json:"total"`
			} `json:"slots"`
		} `json:"workers"`
	}
	require.Equal(t, http.StatusOK, s.call(t, "GET", "/v1/workers", nil, &workerList))
	require.Len(t, workerList.Workers, 1)
	require.Equal(t, "READY", workerList.Workers[0].State)
	require.Equal(t, "cpu", workerList.Workers[0].Slots[0].Type)
	require.Equal(t, 4, workerList.Workers[0].Slots[0].Total)
}

// A run whose executor exits non-zero ends FAILED with the executor's own message.
func TestExecutorExitFailsRun(t *testing.T) {
	s := startServer(t)
	createEcho(t, s)
	var r run
	require.Equal(t, http.StatusOK, s.call(t, "POST", "/v1/runs", map[string]any{"assistant": "assistants/echo", "input": map[string]any{"exit": 3}}, &r))
	require.Equal(t, http.StatusOK, s.call(t, "GET", "/v1/"+r.Name+":wait?timeout=60s", nil, &r))
	require.Equal(t, "FAILED", r.State)
	require.Contains(t, r.Error, "status 3")
	require.Contains(t, r.Error, "exiting with status 3 as the state asks", "the executor's stderr explains the failure")

	// The next run gets a fresh replica and succeeds.
	var ok run
	require.Equal(t, http.StatusOK, s.call(t, "POST", "/v1/runs", map[string]any{"assistant": "assistants/echo", "input": map[string]any{}}, &ok))
	require.Equal(t, http.StatusOK, s.call(t, "GET", "/v1/"+ok.Name+":wait?timeout=60s", nil, &ok))
	require.Equal(t, "SUCCEEDED", ok.State)
}

// Bad input gets a 4xx that names the problem, and nothing is written.
func TestBadInput(t *testing.T) {
	s := startServer(t)
	createEcho(t, s)
	for _, tc := range []struct {
		name, method, path string
		body               any
		code               int
		message            []string
	}{
		{"malformed JSON", "POST", "/v1/runs", `{"assistant": "assistants/echo", "input": {`, 400, []string{"not valid JSON"}},
		{"unknown field", "POST", "/v1/runs", `{"assistant": "assistants/echo", "inptu": {}}`, 400, []string{"inptu"}},
		{"unknown assistant", "POST", "/v1/runs", map[string]any{"assistant": "assistants/nope"}, 404, []string{"run.assistant", "assistants/nope", "does not exist"}},
		{"missing assistant", "POST", "/v1/runs", map[string]any{"input": map[string]any{}}, 400, []string{"run.assistant", "required"}},
		{"input not an object", "POST", "/v1/runs", `{"assistant": "assistants/echo", "input": [1]}`, 400, []string{"not valid JSON"}},
		{"empty flow", "POST", "/v1/assistants", map[string]any{"flow": ""}, 400, []string{"assistant.flow", "must not be empty"}},
		{"invalid flow", "POST", "/v1/assistants", map[string]any{"flow": "executors:\n  - name: x\n"}, 400, []string{"assistant.flow", "flow.yaml:2", "command"}},
		{"duplicate assistant", "POST", "/v1/assistants?assistant_id=echo", map[string]any{"flow": "executors:\n  - name: x\n    command: [a]\n"}, 409, []string{"already exists"}},
		{"negative page size", "GET", "/v1/runs?page_size=-1", nil, 400, []string{"page_size", "must not be negative"}},
		{"bad page token", "GET", "/v1/runs?page_token=zzz", nil, 400, []string{"page_token"}},
		{"bad run name", "GET", "/v1/runs/not-an-id", nil, 400, []string{"not a valid id"}},
		{"unknown run", "GET", "/v1/runs/01a218d7-84b2-75ec-9e44-0b45a3247298", nil, 404, []string{"does not exist"}},
		{"negative timeout", "POST", "/v1/runs", `{"assistant": "assistants/echo", "timeout": "-5s"}`, 400, []string{"run.timeout"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var e apiError
			code := s.call(t, tc.method, tc.path, tc.body, &e)
			require.Equal(t, tc.code, code, "answer: %+v", e)
			for _, m := range tc.message {
				require.Contains(t, e.Message, m)
			}
		})
	}
	var list struct {
		Runs []run `json:"runs"`
	}
	require.Equal(t, http.StatusOK, s.call(t, "GET", "/v1/runs", nil, &list))
	require.Empty(t, list.Runs, "no bad request wrote a run")
}
