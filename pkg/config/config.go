// Package config binds command-line flags to environment variables and an optional YAML
// file so every service reads its settings the same way: a flag wins over its variable,
// which wins over the file (-config FILE or AGENTSERVER_CONFIG; keys are the flag names),
// which wins over the default. It owns parsing and reporting bad values; it never holds
// settings itself.
package config

import (
	"flag"
	"fmt"
	"os"
	"sort"
	"strconv"
	"time"

	"gopkg.in/yaml.v3"
)

// Set is a flag set whose flags may be given by environment variables too.
type Set struct {
	fs     *flag.FlagSet
	errs   *[]error
	prefix string
	// fromEnv records the flags whose value came from the environment.
	fromEnv map[string]bool
	file    *string
	// lookup reads an environment variable; os.LookupEnv unless replaced in tests.
	lookup func(string) (string, bool)
}

// New returns a Set for the named command. A bad flag value is reported by Parse; a bad
// environment value by Parse too, naming the variable.
func New(name string) *Set {
	s := &Set{fs: flag.NewFlagSet(name, flag.ContinueOnError), errs: new([]error), lookup: os.LookupEnv,
		fromEnv: make(map[string]bool), file: new(string)}
	s.fs.StringVar(s.file, "config", os.Getenv("AGENTSERVER_CONFIG"),
		"YAML `file` of settings; keys are flag names, e.g. slots: cpu=4,gpu=1 (env AGENTSERVER_CONFIG)")
	return s
}

// Prefixed returns a view of s whose flag names start with prefix (e.g. "scheduler-"),
// so several services' settings can share one command line. Variable names are kept.
func (s *Set) Prefixed(prefix string) *Set {
	c := *s
	c.prefix += prefix
	return &c
}

// WithLookup replaces how environment variables are read (tests).
func (s *Set) WithLookup(lookup func(string) (string, bool)) *Set {
	s.lookup = lookup
	*s.file, _ = lookup("AGENTSERVER_CONFIG")
	return s
}

// FlagSet returns the underlying flag set.
func (s *Set) FlagSet() *flag.FlagSet { return s.fs }

func (s *Set) env(name string) (string, bool) {
	if name == "" {
		return "", false
	}
	v, ok := s.lookup(name)
	return v, ok && v != ""
}

// fromEnvironment notes that flagName took its value from the environment.
func (s *Set) fromEnvironment(flagName, env string) {
	if _, ok := s.env(env); ok {
		s.fromEnv[s.prefix+flagName] = true
	}
}

func usage(usage, env string) string {
	if env == "" {
		return usage
	}
	return fmt.Sprintf("%s (env %s)", usage, env)
}

// String defines a string setting.
func (s *Set) String(p *string, flagName, env, def, help string) {
	s.fromEnvironment(flagName, env)
	if v, ok := s.env(env); ok {
		def = v
	}
	s.fs.StringVar(p, s.prefix+flagName, def, usage(help, env))
}

// Int defines an int setting.
func (s *Set) Int(p *int, flagName, env string, def int, help string) {
	s.fromEnvironment(flagName, env)
	if v, ok := s.env(env); ok {
		n, err := strconv.Atoi(v)
		if err != nil {
			*s.errs = append(*s.errs, fmt.Errorf("%s=%q: must be an integer", env, v))
		} else {
			def = n
		}
	}
	s.fs.IntVar(p, s.prefix+flagName, def, usage(help, env))
}

// Duration defines a duration setting (Go syntax: 500ms, 10s, 1m30s).
func (s *Set) Duration(p *time.Duration, flagName, env string, def time.Duration, help string) {
	s.fromEnvironment(flagName, env)
	if v, ok := s.env(env); ok {
		d, err := time.ParseDuration(v)
		if err != nil {
			*s.errs = append(*s.errs, fmt.Errorf("%s=%q: must be a duration such as 500ms, 10s or 1m", env, v))
		} else {
			def = d
		}
	}
	s.fs.DurationVar(p, s.prefix+flagName, def, usage(help, env))
}

// Bool defines a boolean setting.
func (s *Set) Bool(p *bool, flagName, env string, def bool, help string) {
	s.fromEnvironment(flagName, env)
	if v, ok := s.env(env); ok {
		b, err := strconv.ParseBool(v)
		if err != nil {
			*s.errs = append(*s.errs, fmt.Errorf("%s=%q: must be true or false", env, v))
		} else {
			def = b
		}
	}
	s.fs.BoolVar(p, s.prefix+flagName, def, usage(help, env))
}

// Parse parses args and returns the first problem with a flag or a variable.
func (s *Set) Parse(args []string) error {
	if len(*s.errs) > 0 {
		return (*s.errs)[0]
	}
	if err := s.fs.Parse(args); err != nil {
		return err
	}
	if *s.file == "" {
		return nil
	}
	return s.applyFile(*s.file)
}

// applyFile sets, from the YAML file, every flag not given on the command line or by its
// environment variable.
func (s *Set) applyFile(path string) error {
	raw, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("reading config file: %w", err)
	}
	var values map[string]any
	if err := yaml.Unmarshal(raw, &values); err != nil {
		return fmt.Errorf("config file %s: not a YAML mapping of settings: %w", path, err)
	}
	explicit := make(map[string]bool)
	s.fs.Visit(func(f *flag.Flag) { explicit[f.Name] = true })
	keys := make([]string, 0, len(values))
	for k := range values {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		if k == "config" || s.fs.Lookup(k) == nil {
			return fmt.Errorf("config file %s: %q is not a setting of %s (settings are the flag names listed by -help)", path, k, s.fs.Name())
		}
		if explicit[k] || s.fromEnv[k] {
			continue
		}
		v := values[k]
		if _, isMap := v.(map[string]any); isMap || v == nil {
			return fmt.Errorf("config file %s: %s: must be a single value", path, k)
		}
		if err := s.fs.Set(k, fmt.Sprint(v)); err != nil {
			return fmt.Errorf("config file %s: %s: %w", path, k, err)
		}
	}
	return nil
}
