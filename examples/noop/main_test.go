package main

import (
	"bytes"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// requests are step requests and lines noop must skip, as the worker could send them.
var requests = strings.Join([]string{
	`{"type":"step","id":"r1","run":"runs/1","step":"noop","attempt":1,"state":{"a":1},"config":{}}`,
	``,
	`not json`,
	`{"type":"other","id":"x"}`,
	`{"type":"step","id":"r2","state":{"a":1},"item":{"b":2},"index":0}`,
	`{"type":"step","id":"r3"}`,
	`{"type":"step","id":"r4","state":null}`,
	`{"type":"step","id":"r\"5","state":{"s":"}]\"{","n":[1,{"t":true}],"u":null}}`,
}, "\n")

func TestServeAnswersEachStepWithItsState(t *testing.T) {
	in := requests
	var out bytes.Buffer
	if err := serve(strings.NewReader(in), &out); err != nil {
		t.Fatal(err)
	}
	want := `{"type":"result","id":"r1","state":{"a":1}}` + "\n" +
		`{"type":"result","id":"r2","state":{"b":2}}` + "\n" +
		`{"type":"result","id":"r3","state":{}}` + "\n" +
		`{"type":"result","id":"r4","state":{}}` + "\n" +
		`{"type":"result","id":"r\"5","state":{"s":"}]\"{","n":[1,{"t":true}],"u":null}}` + "\n"
	if out.String() != want {
		t.Fatalf("got\n%s\nwant\n%s", out.String(), want)
	}
}

// The C twin (c/noop.c, the benchmark's executor) answers the same requests with the same
// bytes.
func TestCTwinAnswersAsServeDoes(t *testing.T) {
	cc, err := exec.LookPath("cc")
	if err != nil {
		t.Skip("no C compiler (cc) on PATH")
	}
	bin := filepath.Join(t.TempDir(), "noop-c")
	if out, err := exec.Command(cc, "-O2", "-Wall", "-Werror", "-o", bin, filepath.Join("c", "noop.c")).CombinedOutput(); err != nil {
		t.Fatalf("compiling c/noop.c: %v\n%s", err, out)
	}
	var want bytes.Buffer
	if err := serve(strings.NewReader(requests), &want); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin)
	cmd.Stdin = strings.NewReader(requests)
	got, err := cmd.Output()
	if err != nil {
		t.Fatal(err)
	}
	if string(got) != want.String() {
		t.Fatalf("c/noop.c answered\n%s\nmain.go answers\n%s", got, want.String())
	}
}
