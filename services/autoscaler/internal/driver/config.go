package driver

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"sort"
	"time"

	"gopkg.in/yaml.v3"
)

// File is the driver configuration file `autoscaler run --driver FILE` reads: its kind
// and the settings of that kind, e.g.
//
//	kind: process
//	process:
//	  stop_timeout: 2m
//	  pools:
//	    cpu:
//	      binary: /usr/local/bin/worker-agent
//	      env: {WORKER_POOL: cpu, WORKER_SLOTS: "cpu=4", SCHEDULER_ADDR: "localhost:9091"}
type File struct {
	// Kind is "process", "compose" or "command".
	Kind string `yaml:"kind"`
	// Process configures the process driver.
	Process *FileProcess `yaml:"process"`
	// Compose configures the compose driver.
	Compose *FileCompose `yaml:"compose"`
	// Command configures the command driver.
	Command *FileCommand `yaml:"command"`
}

// FileProcess is the process section of a File.
type FileProcess struct {
	// StopTimeout bounds one worker's drain.
	StopTimeout time.Duration `yaml:"stop_timeout"`
	// Pools by name.
	Pools map[string]FileProcessPool `yaml:"pools"`
}

// FileProcessPool is one pool of the process section.
type FileProcessPool struct {
	// Binary to start.
	Binary string `yaml:"binary"`
	// Args of the binary.
	Args []string `yaml:"args"`
	// Env added to the autoscaler's.
	Env map[string]string `yaml:"env"`
	// Dir to start in.
	Dir string `yaml:"dir"`
}

// FileCompose is the compose section of a File.
type FileCompose struct {
	// Binary of the docker CLI.
	Binary string `yaml:"binary"`
	// Files are the compose files.
	Files []string `yaml:"files"`
	// Project name.
	Project string `yaml:"project"`
	// Services by pool.
	Services map[string]string `yaml:"services"`
	// StopTimeout passed as `up --timeout`.
	StopTimeout time.Duration `yaml:"stop_timeout"`
}

// FileCommand is the command section of a File.
type FileCommand struct {
	// Pools managed.
	Pools []string `yaml:"pools"`
	// Scale command template.
	Scale []string `yaml:"scale"`
	// Current command template.
	Current []string `yaml:"current"`
	// Initial counts without a current command.
	Initial map[string]int `yaml:"initial"`
	// Env added to the commands'.
	Env map[string]string `yaml:"env"`
	// Timeout of one command.
	Timeout time.Duration `yaml:"timeout"`
}

// Options are what a driver built from a File gets from the process around it.
type Options struct {
	// Logger for the driver; nil discards.
	Logger *slog.Logger
	// Output receives worker processes' output; nil means os.Stderr.
	Output io.Writer
}

// Loaded is a driver built from a File, with what to do at shutdown.
type Loaded struct {
	// Driver to hand to the controller.
	Driver Driver
	// Shutdown releases what the driver holds: the process driver drains its workers
	// (they are its children); the others hold nothing.
	Shutdown func(ctx context.Context) error
}

func envList(m map[string]string) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	out := make([]string, len(keys))
	for i, k := range keys {
		out[i] = k + "=" + m[k]
	}
	return out
}

// Load parses a driver File (unknown fields are errors) and builds its driver.
func Load(data []byte, opt Options) (*Loaded, error) {
	var f File
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	if err := dec.Decode(&f); err != nil {
		if errors.Is(err, io.EOF) {
			return nil, errors.New("driver config: empty: want kind: process, compose or command")
		}
		return nil, fmt.Errorf("driver config: %w", err)
	}
	noop := func(context.Context) error { return nil }
	switch f.Kind {
	case "process":
		if f.Process == nil {
			return nil, errors.New("driver config: process: required when kind is process")
		}
		cfg := ProcessConfig{Pools: map[string]ProcessPool{}, StopTimeout: f.Process.StopTimeout, Output: opt.Output, Logger: opt.Logger}
		for name, p := range f.Process.Pools {
			cfg.Pools[name] = ProcessPool{Binary: p.Binary, Args: p.Args, Env: envList(p.Env), Dir: p.Dir}
		}
		d, err := NewProcess(cfg)
		if err != nil {
			return nil, fmt.Errorf("driver config: %w", err)
		}
		return &Loaded{Driver: d, Shutdown: d.Shutdown}, nil
	case "compose":
		if f.Compose == nil {
			return nil, errors.New("driver config: compose: required when kind is compose")
		}
		c := f.Compose
		d, err := NewCompose(ComposeConfig{Binary: c.Binary, Files: c.Files, Project: c.Project, Services: c.Services, StopTimeout: c.StopTimeout})
		if err != nil {
			return nil, fmt.Errorf("driver config: %w", err)
		}
		return &Loaded{Driver: d, Shutdown: noop}, nil
	case "command":
		if f.Command == nil {
			return nil, errors.New("driver config: command: required when kind is command")
		}
		c := f.Command
		d, err := NewCommand(CommandConfig{Pools: c.Pools, Scale: c.Scale, Current: c.Current, Initial: c.Initial,
			Env: envList(c.Env), Timeout: c.Timeout})
		if err != nil {
			return nil, fmt.Errorf("driver config: %w", err)
		}
		return &Loaded{Driver: d, Shutdown: noop}, nil
	case "":
		return nil, errors.New("driver config: kind: required (process, compose or command)")
	default:
		return nil, fmt.Errorf("driver config: kind: must be process, compose or command (got %q)", f.Kind)
	}
}
