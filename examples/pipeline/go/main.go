// Command pipeline is the Go twin of examples/pipeline/steps.py: an executor speaking
// agentserver executor protocol v1 for a multi-step flow with a map step and a human-input
// step (split → process (map) → combine → ask). It is its own module, outside go.work:
//
//	cd examples/pipeline/go && GOWORK=off go build -o /tmp/pipeline .
//
// then point flow-go.yaml's command at the binary.
package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"os"
)

type request struct {
	Type   string          `json:"type"`
	ID     string          `json:"id"`
	Step   string          `json:"step"`
	State  map[string]any  `json:"state"`
	Item   json.RawMessage `json:"item"`
	Resume json.RawMessage `json:"resume"`
}

func main() {
	if err := serve(os.Stdin, os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "pipeline:", err)
		os.Exit(1)
	}
}

// serve answers step requests read from in, one at a time, until in ends.
func serve(in io.Reader, out io.Writer) error {
	sc := bufio.NewScanner(in)
	sc.Buffer(make([]byte, 64*1024), 64*1024*1024)
	enc := json.NewEncoder(out)
	for sc.Scan() {
		var req request
		if err := json.Unmarshal(sc.Bytes(), &req); err != nil || req.Type != "step" {
			fmt.Fprintf(os.Stderr, "pipeline: ignoring a line that is not a step request\n")
			continue
		}
		if err := enc.Encode(map[string]any{"type": "event", "id": req.ID, "data": map[string]any{"step": req.Step}}); err != nil {
			return err
		}
		if err := enc.Encode(answer(req)); err != nil {
			return err
		}
	}
	return sc.Err()
}

// answer computes the one result, interrupt or error line of a step.
func answer(req request) map[string]any {
	state := req.State
	if state == nil {
		state = map[string]any{}
	}
	result := func(s any) map[string]any { return map[string]any{"type": "result", "id": req.ID, "state": s} }
	switch req.Step {
	case "split":
		n, _ := state["n"].(float64)
		items := make([]any, int(n))
		for i := range items {
			items[i] = i
		}
		state["items"] = items
		return result(state)
	case "process":
		var item float64
		if err := json.Unmarshal(req.Item, &item); err != nil {
			return map[string]any{"type": "error", "id": req.ID, "message": "process: the item must be a number", "retryable": false}
		}
		return result(map[string]any{"value": item * 10, "pid": os.Getpid()})
	case "combine":
		total := 0.0
		items, _ := state["items"].([]any)
		for _, it := range items {
			m, _ := it.(map[string]any)
			v, _ := m["value"].(float64)
			total += v
		}
		state["total"] = total
		return result(state)
	case "ask":
		if len(req.Resume) == 0 {
			return map[string]any{"type": "interrupt", "id": req.ID, "prompt": map[string]any{"question": "proceed?"}}
		}
		var v any
		_ = json.Unmarshal(req.Resume, &v)
		state["answer"] = v
		return result(state)
	}
	return map[string]any{"type": "error", "id": req.ID, "message": fmt.Sprintf("unknown step %q", req.Step), "retryable": false}
}
