// Command noop is the no-op executor speaking agentserver executor protocol v1: for every
// step request it answers at once with a result whose state is the request's state (for a map
// item, the item), and does nothing else. It exists to measure agentserver itself: with it,
// every millisecond a run takes is the system's, not the executor's. Its C twin, c/noop.c,
// answers with the same bytes without a Go runtime's own work per request (the benchmark,
// bench/cmd/benchall, runs that one; TestCTwinAnswersAsServeDoes keeps the two alike).
//
// It is its own module, outside go.work, so that it builds alone and fast:
//
//	cd examples/noop && GOWORK=off go build -o /tmp/noop .
//
// Build it into a directory of your own and name the binary in the flow's command (see
// flow.yaml, which uses the Python twin noop.py so that it runs from a fresh checkout).
package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"runtime"
)

// request is the part of a step request that noop reads.
type request struct {
	Type  string          `json:"type"`
	ID    string          `json:"id"`
	State json.RawMessage `json:"state"`
	Item  json.RawMessage `json:"item"`
}

// result is the one line noop answers each step with.
type result struct {
	Type  string          `json:"type"`
	ID    string          `json:"id"`
	State json.RawMessage `json:"state"`
}

func main() {
	// One request at a time: a second thread for Go code only adds hand-offs between
	// threads at every blocking read of stdin.
	runtime.GOMAXPROCS(1)
	if err := serve(os.Stdin, os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "noop:", err)
		os.Exit(1)
	}
}

// serve answers every step request read from in on out, one line each, until in ends.
func serve(in io.Reader, out io.Writer) error {
	sc := bufio.NewScanner(in)
	sc.Buffer(make([]byte, 64*1024), 64*1024*1024)
	w := bufio.NewWriter(out)
	enc := json.NewEncoder(w)
	for sc.Scan() {
		line := sc.Bytes()
		if len(line) == 0 {
			continue
		}
		var req request
		if err := json.Unmarshal(line, &req); err != nil {
			fmt.Fprintf(os.Stderr, "noop: ignoring a request that is not JSON: %v\n", err)
			continue
		}
		if req.Type != "step" {
			continue
		}
		state := req.State
		if len(req.Item) > 0 {
			state = req.Item
		}
		if len(state) == 0 || string(state) == "null" {
			state = json.RawMessage("{}")
		}
		if err := enc.Encode(result{Type: "result", ID: req.ID, State: state}); err != nil {
			return err
		}
		// One request at a time: the worker waits for this answer before the next step.
		if err := w.Flush(); err != nil {
			return err
		}
	}
	return sc.Err()
}
