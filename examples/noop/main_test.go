package main

import (
	"bytes"
	"strings"
	"testing"
)

func TestServeAnswersEachStepWithItsState(t *testing.T) {
	in := strings.Join([]string{
		`{"type":"step","id":"r1","run":"runs/1","step":"noop","attempt":1,"state":{"a":1},"config":{}}`,
		``,
		`not json`,
		`{"type":"other","id":"x"}`,
		`{"type":"step","id":"r2","state":{"a":1},"item":{"b":2},"index":0}`,
		`{"type":"step","id":"r3"}`,
	}, "\n")
	var out bytes.Buffer
	if err := serve(strings.NewReader(in), &out); err != nil {
		t.Fatal(err)
	}
	want := `{"type":"result","id":"r1","state":{"a":1}}` + "\n" +
		`{"type":"result","id":"r2","state":{"b":2}}` + "\n" +
		`{"type":"result","id":"r3","state":{}}` + "\n"
	if out.String() != want {
		t.Fatalf("got\n%s\nwant\n%s", out.String(), want)
	}
}
