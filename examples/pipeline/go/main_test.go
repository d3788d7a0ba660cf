package main

import (
	"bufio"
	"encoding/json"
	"strings"
	"testing"
)

func run(t *testing.T, lines ...string) []map[string]any {
	t.Helper()
	var out strings.Builder
	if err := serve(strings.NewReader(strings.Join(lines, "\n")+"\n"), &out); err != nil {
		t.Fatal(err)
	}
	var msgs []map[string]any
	sc := bufio.NewScanner(strings.NewReader(out.String()))
	for sc.Scan() {
		var m map[string]any
		if err := json.Unmarshal(sc.Bytes(), &m); err != nil {
			t.Fatal(err)
		}
		if m["type"] != "event" {
			msgs = append(msgs, m)
		}
	}
	return msgs
}

func TestPipelineSteps(t *testing.T) {
	got := run(t,
		`{"type":"step","id":"1","step":"split","state":{"n":3}}`,
		`{"type":"step","id":"2","step":"process","state":{},"item":2,"index":2}`,
		`{"type":"step","id":"3","step":"combine","state":{"items":[{"value":0},{"value":10},{"value":20}]}}`,
		`{"type":"step","id":"4","step":"ask","state":{"total":30}}`,
		`{"type":"step","id":"5","step":"ask","state":{"total":30},"resume":"yes"}`,
		`{"type":"step","id":"6","step":"nope","state":{}}`,
	)
	if len(got) != 6 {
		t.Fatalf("want 6 answers, got %v", got)
	}
	if items := got[0]["state"].(map[string]any)["items"].([]any); len(items) != 3 {
		t.Errorf("split: %v", got[0])
	}
	if v := got[1]["state"].(map[string]any)["value"]; v != 20.0 {
		t.Errorf("process: %v", got[1])
	}
	if v := got[2]["state"].(map[string]any)["total"]; v != 30.0 {
		t.Errorf("combine: %v", got[2])
	}
	if got[3]["type"] != "interrupt" || got[3]["id"] != "4" {
		t.Errorf("ask without resume must interrupt: %v", got[3])
	}
	if got[4]["state"].(map[string]any)["answer"] != "yes" {
		t.Errorf("ask with resume: %v", got[4])
	}
	if got[5]["type"] != "error" {
		t.Errorf("unknown step: %v", got[5])
	}
}
