package dev_test

import (
	"bufio"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/agentserver/agentserver/pkg/pgtest"
)

const stepsExecutor = `executors:
  - name: steps
    command: ["python3", "examples/pipeline/steps.py"]
    replicas: 3
`

func createAssistant(t *testing.T, s *server, id, flow string, config map[string]any) {
	t.Helper()
	var e apiError
	code := s.call(t, "POST", "/v1/assistants?assistant_id="+id, map[string]any{"flow": flow, "config": config}, &e)
	require.Equal(t, http.StatusOK, code, "%+v", e)
}

type fullRun struct {
	run
	Attempt int            `json:"attempt"`
	Step    string         `json:"step"`
	Prompt  map[string]any `json:"prompt"`
	Thread  string         `json:"thread"`
}

func createRun(t *testing.T, s *server, body map[string]any) fullRun {
	t.Helper()
	var r fullRun
	var raw map[string]any
	code := s.call(t, "POST", "/v1/runs", body, &raw)
	require.Equal(t, http.StatusOK, code, "%v", raw)
	b, _ := json.Marshal(raw)
	require.NoError(t, json.Unmarshal(b, &r))
	return r
}

func waitRun(t *testing.T, s *server, name string) fullRun {
	t.Helper()
	var r fullRun
	require.Equal(t, http.StatusOK, s.call(t, "GET", "/v1/"+name+":wait?timeout=60s", nil, &r))
	return r
}

type call struct {
	Run   string `json:"run"`
	Step  string `json:"step"`
	Index *int   `json:"index"`
	PID   int    `json:"pid"`
}

func readCalls(t *testing.T, path string) []call {
	t.Helper()
	f, err := os.Open(path)
	require.NoError(t, err)
	defer f.Close()
	var out []call
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		var c call
		require.NoError(t, json.Unmarshal(sc.Bytes(), &c))
		out = append(out, c)
	}
	return out
}

// A three-step flow with a map over 20 items on 3 replicas returns the items in order;
// every step ran exactly once per run (per item for the map).
func TestMultiStepFlowWithMap(t *testing.T) {
	s := startServer(t)
	record := filepath.Join(t.TempDir(), "calls.jsonl")
	createAssistant(t, s, "pipeline", stepsExecutor+`steps:
  - name: split
    executor: steps
  - name: process
    executor: steps
    map: items
  - name: combine
    executor: steps
`, map[string]any{"record": record})
	r := waitRun(t, s, createRun(t, s, map[string]any{"assistant": "assistants/pipeline", "input": map[string]any{"n": 20}}).Name)
	require.Equal(t, "SUCCEEDED", r.State, r.Error)
	items := r.Output["items"].([]any)
	require.Len(t, items, 20)
	for i, it := range items {
		require.EqualValues(t, i*10, it.(map[string]any)["value"], "item %d in order", i)
	}
	require.EqualValues(t, 1900, r.Output["total"])

	counts := map[string]int{}
	indexes := map[int]bool{}
	for _, c := range readCalls(t, record) {
		counts[c.Step]++
		if c.Step == "process" {
			indexes[*c.Index] = true
		}
	}
	require.Equal(t, map[string]int{"split": 1, "process": 20, "combine": 1}, counts)
	require.Len(t, indexes, 20)
}

// An interrupted run frees its slot, survives a restart of the whole server, and resumes
// from the interrupted step with the answer.
func TestInterruptAndResumeAcrossRestart(t *testing.T) {
	db := pgtest.NewDatabase(t)
	s := startServerOn(t, db)
	record := filepath.Join(t.TempDir(), "calls.jsonl")
	createAssistant(t, s, "asker", stepsExecutor+`steps:
  - name: count
    executor: steps
  - name: ask
    executor: steps
`, map[string]any{"record": record})
	r := waitRun(t, s, createRun(t, s, map[string]any{"assistant": "assistants/asker", "input": map[string]any{"count": 41}}).Name)
	require.Equal(t, "INTERRUPTED", r.State)
	require.Equal(t, "ask", r.Step)
	require.Equal(t, map[string]any{"question": "proceed?", "seen": float64(42)}, r.Prompt)

	var e apiError
	require.Equal(t, http.StatusBadRequest, s.call(t, "POST", "/v1/"+r.Name+":resume", `{"value": `, &e))
	s.stop()

	s = startServerOn(t, db)
	var resumed fullRun
	require.Equal(t, http.StatusOK, s.call(t, "POST", "/v1/"+r.Name+":resume", map[string]any{"value": map[string]any{"ok": true}}, &resumed))
	require.Equal(t, "QUEUED", resumed.State)
	done := waitRun(t, s, r.Name)
	require.Equal(t, "SUCCEEDED", done.State, done.Error)
	require.Equal(t, map[string]any{"count": float64(42), "answer": map[string]any{"ok": true}}, done.Output)
	// The completed step did not run again after the restart.
	counts := map[string]int{}
	for _, c := range readCalls(t, record) {
		counts[c.Step]++
	}
	require.Equal(t, map[string]int{"count": 1, "ask": 2}, counts)
	// Resuming a run that is not interrupted is refused.
	require.Equal(t, http.StatusBadRequest, s.call(t, "POST", "/v1/"+r.Name+":resume", map[string]any{"value": 1}, &e))
	require.Contains(t, e.Message, "not INTERRUPTED")
}

type sseEvent struct {
	ID   int64
	Type string
	Data map[string]any
}

// readSSE reads events from the stream until it ends or max events were read.
func readSSE(t *testing.T, s *server, name string, lastID int64, max int) []sseEvent {
	t.Helper()
	req, err := http.NewRequestWithContext(t.Context(), "GET", s.base+"/v1/"+name+"/events", nil)
	require.NoError(t, err)
	req.Header.Set("Accept", "text/event-stream")
	if lastID > 0 {
		req.Header.Set("Last-Event-ID", strconv.FormatInt(lastID, 10))
	}
	resp, err := s.http.Do(req)
	require.NoError(t, err)
	defer resp.Body.Close()
	require.Equal(t, http.StatusOK, resp.StatusCode)
	require.Equal(t, "text/event-stream", resp.Header.Get("Content-Type"))
	var out []sseEvent
	var cur sseEvent
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() && len(out) < max {
		line := sc.Text()
		switch {
		case line == "":
			if cur.ID != 0 {
				out = append(out, cur)
			}
			cur = sseEvent{}
		case strings.HasPrefix(line, "id: "):
			cur.ID, err = strconv.ParseInt(strings.TrimPrefix(line, "id: "), 10, 64)
			require.NoError(t, err)
		case strings.HasPrefix(line, "event: "):
			cur.Type = strings.TrimPrefix(line, "event: ")
		case strings.HasPrefix(line, "data: "):
			var ev struct {
				Data map[string]any `json:"data"`
			}
			require.NoError(t, json.Unmarshal([]byte(strings.TrimPrefix(line, "data: ")), &ev))
			cur.Data = ev.Data
		}
	}
	return out
}

// A client that disconnects and reconnects with Last-Event-ID misses nothing and gets
// nothing twice; a client that joins while the run waits gets the history, then live
// events until the terminal one.
func TestEventStreamResumes(t *testing.T) {
	s := startServer(t)
	createAssistant(t, s, "asker", stepsExecutor+`steps:
  - name: count
    executor: steps
  - name: ask
    executor: steps
`, nil)
	r := waitRun(t, s, createRun(t, s, map[string]any{"assistant": "assistants/asker"}).Name)
	require.Equal(t, "INTERRUPTED", r.State)

	first := readSSE(t, s, r.Name, 0, 3)
	require.Len(t, first, 3)
	require.Equal(t, "state", first[0].Type)
	require.Equal(t, "QUEUED", first[0].Data["state"])

	// Resume while nobody listens, then reconnect after the third event.
	var e apiError
	require.Equal(t, http.StatusOK, s.call(t, "POST", "/v1/"+r.Name+":resume", map[string]any{"value": "yes"}, &e))
	rest := readSSE(t, s, r.Name, first[2].ID, 1000) // ends after the terminal event
	require.NotEmpty(t, rest)
	last := rest[len(rest)-1]
	require.Equal(t, "state", last.Type)
	require.Equal(t, "SUCCEEDED", last.Data["state"])

	all := append(first, rest...)
	for i := 1; i < len(all); i++ {
		require.Greater(t, all[i].ID, all[i-1].ID, "no duplicates, in order")
	}
	// The same sequence as the durable log's JSON page: nothing missed.
	var page struct {
		Events []struct {
			Seq  string `json:"seq"`
			Type string `json:"type"`
		} `json:"events"`
	}
	require.Equal(t, http.StatusOK, s.call(t, "GET", "/v1/"+r.Name+"/events?page_size=1000", nil, &page))
	require.Len(t, page.Events, len(all))
	for i, ev := range page.Events {
		require.Equal(t, strconv.FormatInt(all[i].ID, 10), ev.Seq)
		require.Equal(t, all[i].Type, ev.Type)
	}
	types := map[string]bool{}
	for _, ev := range all {
		types[ev.Type] = true
	}
	require.True(t, types["step_started"] && types["executor_event"] && types["state"], "%v", types)

	var bad apiError
	req, _ := http.NewRequestWithContext(t.Context(), "GET", s.base+"/v1/runs/01a218d7-84b2-75ec-9e44-0b45a3247298/events", nil)
	req.Header.Set("Accept", "text/event-stream")
	resp, err := s.http.Do(req)
	require.NoError(t, err)
	require.Equal(t, http.StatusNotFound, resp.StatusCode)
	require.NoError(t, json.NewDecoder(resp.Body).Decode(&bad))
	resp.Body.Close()
}

// Runs on a thread start from its state and write their final state back; a second run
// while one is active is rejected, or waits with multitask "enqueue".
func TestThreadsCarryStateAndSerialiseRuns(t *testing.T) {
	s := startServer(t)
	createAssistant(t, s, "counter", stepsExecutor+`steps:
  - name: count
    executor: steps
`, nil)
	createAssistant(t, s, "asker", stepsExecutor+`steps:
  - name: count
    executor: steps
  - name: ask
    executor: steps
`, nil)
	var th struct {
		Name string `json:"name"`
	}
	require.Equal(t, http.StatusOK, s.call(t, "POST", "/v1/threads", map[string]any{"metadata": map[string]any{"user": "u1"}}, &th))
	require.True(t, strings.HasPrefix(th.Name, "threads/"))

	for want := 1; want <= 2; want++ {
		r := waitRun(t, s, createRun(t, s, map[string]any{"assistant": "assistants/counter", "thread": th.Name}).Name)
		require.Equal(t, "SUCCEEDED", r.State, r.Error)
		require.EqualValues(t, want, r.Output["count"])
	}
	var st struct {
		Values map[string]any `json:"values"`
		Run    string         `json:"run"`
	}
	require.Equal(t, http.StatusOK, s.call(t, "GET", "/v1/"+th.Name+"/state", nil, &st))
	require.EqualValues(t, 2, st.Values["count"])

	// An interrupted run keeps the thread busy.
	asker := waitRun(t, s, createRun(t, s, map[string]any{"assistant": "assistants/asker", "thread": th.Name}).Name)
	require.Equal(t, "INTERRUPTED", asker.State)
	var e apiError
	require.Equal(t, http.StatusBadRequest, s.call(t, "POST", "/v1/runs", map[string]any{"assistant": "assistants/counter", "thread": th.Name}, &e))
	require.Contains(t, e.Message, "active run")
	waiting := createRun(t, s, map[string]any{"assistant": "assistants/counter", "thread": th.Name, "multitask": "enqueue"})
	require.Equal(t, "QUEUED", waiting.State)

	require.Equal(t, http.StatusOK, s.call(t, "POST", "/v1/"+asker.Name+":resume", map[string]any{"value": "go"}, &e))
	require.Equal(t, "SUCCEEDED", waitRun(t, s, asker.Name).State)
	after := waitRun(t, s, waiting.Name)
	require.Equal(t, "SUCCEEDED", after.State, after.Error)
	require.EqualValues(t, 4, after.Output["count"], "the waiting run started from the state the previous one wrote")
	require.Equal(t, "go", after.Output["answer"])

	require.Equal(t, http.StatusNotFound, s.call(t, "POST", "/v1/runs", map[string]any{"assistant": "assistants/counter", "thread": "threads/nope"}, &e))
	require.Equal(t, http.StatusOK, s.call(t, "DELETE", "/v1/"+th.Name, nil, nil))
}

// The shipped multi-step example runs as its comment says: it interrupts at "ask", and
// resumes to the summed total; so does its Go twin.
func TestPipelineExample(t *testing.T) {
	flow, err := os.ReadFile(filepath.Join(repoRoot(t), "examples", "pipeline", "flow.yaml"))
	require.NoError(t, err)
	t.Run("python", func(t *testing.T) { runPipeline(t, string(flow)) })
	goFlow, err := os.ReadFile(filepath.Join(repoRoot(t), "examples", "pipeline", "flow-go.yaml"))
	require.NoError(t, err)
	bin := buildExample(t, "pipeline", "go")
	t.Run("go", func(t *testing.T) {
		runPipeline(t, strings.Replace(string(goFlow), `["bin/pipeline"]`, fmt.Sprintf("[%q]", bin), 1))
	})
}

func runPipeline(t *testing.T, flow string) {
	s := startServer(t)
	createAssistant(t, s, "pipeline", flow, nil)
	r := waitRun(t, s, createRun(t, s, map[string]any{"assistant": "assistants/pipeline", "input": map[string]any{"n": 20}}).Name)
	require.Equal(t, "INTERRUPTED", r.State, r.Error)
	require.Equal(t, "proceed?", r.Prompt["question"])
	var e apiError
	require.Equal(t, http.StatusOK, s.call(t, "POST", "/v1/"+r.Name+":resume", map[string]any{"value": "yes"}, &e))
	done := waitRun(t, s, r.Name)
	require.Equal(t, "SUCCEEDED", done.State, done.Error)
	require.EqualValues(t, 1900, done.Output["total"])
	require.Equal(t, "yes", done.Output["answer"])
}

// multitask "interrupt": a new run on a busy thread cancels the active one and runs after it.
func TestThreadMultitaskInterrupt(t *testing.T) {
	s := startServer(t)
	createAssistant(t, s, "asker", stepsExecutor+`steps:
  - name: count
    executor: steps
  - name: ask
    executor: steps
`, nil)
	createAssistant(t, s, "counter", stepsExecutor+`steps:
  - name: count
    executor: steps
`, nil)
	var th struct {
		Name string `json:"name"`
	}
	require.Equal(t, http.StatusOK, s.call(t, "POST", "/v1/threads", map[string]any{}, &th))
	first := waitRun(t, s, createRun(t, s, map[string]any{"assistant": "assistants/asker", "thread": th.Name}).Name)
	require.Equal(t, "INTERRUPTED", first.State)

	second := createRun(t, s, map[string]any{"assistant": "assistants/counter", "thread": th.Name, "multitask": "interrupt"})
	require.Equal(t, "CANCELLED", waitRun(t, s, first.Name).State, "the active run was cancelled")
	done := waitRun(t, s, second.Name)
	require.Equal(t, "SUCCEEDED", done.State, done.Error)
	require.EqualValues(t, 1, done.Output["count"], "the cancelled run wrote nothing back to the thread")

	var e apiError
	require.Equal(t, http.StatusBadRequest, s.call(t, "POST", "/v1/runs", map[string]any{"assistant": "assistants/counter", "thread": th.Name, "multitask": "later"}, &e))
	require.Contains(t, e.Message, "run.multitask")
}
