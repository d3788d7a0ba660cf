package policy

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"math"
	"regexp"
	"strconv"
	"strings"
	"time"

	"gopkg.in/yaml.v3"
)

// Defaults of a pool and of the gateways, from the spec's "Auto-Scaling Triggers".
const (
	// DefaultInterval is how often the policy is evaluated.
	DefaultInterval = 15 * time.Second
	// DefaultSlotsPerWorker is the slot count of a worker (shared/DESIGN.md §5).
	DefaultSlotsPerWorker = 4
	// DefaultUpUtilization is the average slot utilisation above which a pool grows.
	DefaultUpUtilization = 0.80
	// DefaultDownUtilization is the average slot utilisation below which a pool shrinks.
	DefaultDownUtilization = 0.20
	// DefaultUpSustained is how long a scale-up condition must hold before it fires.
	DefaultUpSustained = 30 * time.Second
	// DefaultDownSustained is how long a scale-down condition must hold before it fires.
	DefaultDownSustained = 5 * time.Minute
	// DefaultUpCooldown is the least time between any scaling action and a scale-up.
	DefaultUpCooldown = time.Minute
	// DefaultDownCooldown is the least time between any scaling action and a scale-down.
	DefaultDownCooldown = 2 * time.Minute
	// DefaultMinReplicas is the least replicas of a pool or of the gateways.
	DefaultMinReplicas = 1
	// DefaultGatewayName is the driver pool name of the gateways.
	DefaultGatewayName = "gateway"
	// DefaultGatewayDownRatio is the fraction of the p95 target below which gateways shrink.
	DefaultGatewayDownRatio = 0.5
)

// Config is a validated scaling policy: one entry per worker pool and, optionally, the
// gateways. Build it with Parse (defaults applied) or by hand and check it with Validate.
type Config struct {
	// Interval is how often the controller (or the simulator) evaluates the policy.
	Interval time.Duration
	// Pools are the worker pools, each scaled independently, in evaluation order.
	Pools []PoolConfig
	// Gateway scales the gateways on p95 latency; nil leaves them alone.
	Gateway *GatewayConfig
}

// PoolConfig is the policy of one worker pool.
type PoolConfig struct {
	// Name of the pool as workers report it (WORKER_POOL) and as the driver knows it.
	Name string
	// SlotType whose queue depth and utilisation drive the pool (e.g. "cpu", "gpu").
	SlotType string
	// MinReplicas is the least workers the pool runs (0 allows scaling to zero).
	MinReplicas int
	// MaxReplicas is the most workers the pool runs.
	MaxReplicas int
	// SlotsPerWorker estimates the capacity of workers that have not registered yet.
	SlotsPerWorker int
	// ScaleUp says when and by how much the pool grows.
	ScaleUp ScaleUp
	// ScaleDown says when and by how much the pool shrinks.
	ScaleDown ScaleDown
}

// Step is how many replicas one action adds or removes: the larger of Step and
// StepPercent of the current replicas (rounded up).
type Step struct {
	// Count is the fixed number of replicas per action (at least 1).
	Count int
	// Percent of the current replicas per action; 0 uses Count only.
	Percent int
}

// ScaleUp holds the scale-up triggers of a pool.
type ScaleUp struct {
	// QueueDepth: the pool grows when more runs than this wait (beyond the capacity of
	// replicas still starting). A pool at zero replicas grows on any waiting run.
	QueueDepth int
	// Utilization: the pool grows when average slot utilisation is above this (0–1].
	Utilization float64
	// Sustained is how long a trigger must hold, observation after observation, to fire.
	Sustained time.Duration
	// Cooldown is the least time between the pool's last scaling action and a scale-up.
	Cooldown time.Duration
	// Step is the size of one scale-up.
	Step Step
}

// ScaleDown holds the scale-down trigger of a pool.
type ScaleDown struct {
	// Utilization: the pool shrinks when average slot utilisation stays below this.
	Utilization float64
	// Sustained is how long utilisation must stay low to fire.
	Sustained time.Duration
	// Cooldown is the least time between the pool's last scaling action and a scale-down.
	Cooldown time.Duration
	// Step is the size of one scale-down.
	Step Step
}

// GatewayConfig is the policy of the gateways, scaled on request latency.
type GatewayConfig struct {
	// Name under which the driver knows the gateways.
	Name string
	// MinReplicas is the least gateways.
	MinReplicas int
	// MaxReplicas is the most gateways.
	MaxReplicas int
	// LatencyP95Target: gateways grow while p95 latency is above it.
	LatencyP95Target time.Duration
	// Up holds sustain, cooldown and step of a scale-up.
	Up GatewayAction
	// Down holds sustain, cooldown and step of a scale-down.
	Down GatewayAction
	// DownRatio: gateways shrink while p95 stays below DownRatio × LatencyP95Target.
	DownRatio float64
}

// GatewayAction is the timing and size of one gateway scaling direction.
type GatewayAction struct {
	// Sustained is how long the trigger must hold to fire.
	Sustained time.Duration
	// Cooldown is the least time since the last gateway scaling action.
	Cooldown time.Duration
	// Step is the size of one action.
	Step Step
}

// FieldError is one invalid setting of a policy: the field's path (e.g.
// "pools[1].max_replicas"), its line in the YAML file when known, and the rule it breaks.
type FieldError struct {
	// Path of the field in the YAML document.
	Path string
	// Line of the field in the YAML document; 0 when unknown.
	Line int
	// Msg states the rule the value breaks.
	Msg string
}

// Error implements error.
func (e *FieldError) Error() string {
	if e.Line > 0 {
		return fmt.Sprintf("%s (line %d): %s", e.Path, e.Line, e.Msg)
	}
	return e.Path + ": " + e.Msg
}

// The YAML document, with pointers where "unset" and "zero" differ.
type fileConfig struct {
	Interval *time.Duration `yaml:"interval"`
	Pools    []filePool     `yaml:"pools"`
	Gateways *fileGateway   `yaml:"gateways"`
}

type filePool struct {
	Name           string        `yaml:"name"`
	SlotType       string        `yaml:"slot_type"`
	MinReplicas    *int          `yaml:"min_replicas"`
	MaxReplicas    *int          `yaml:"max_replicas"`
	SlotsPerWorker *int          `yaml:"slots_per_worker"`
	ScaleUp        fileScaleUp   `yaml:"scale_up"`
	ScaleDown      fileScaleDown `yaml:"scale_down"`
}

type fileAction struct {
	Sustained   *time.Duration `yaml:"sustained"`
	Cooldown    *time.Duration `yaml:"cooldown"`
	Step        *int           `yaml:"step"`
	StepPercent *int           `yaml:"step_percent"`
}

type fileScaleUp struct {
	QueueDepth  *int     `yaml:"queue_depth"`
	Utilization *float64 `yaml:"utilization"`
	fileAction  `yaml:",inline"`
}

type fileScaleDown struct {
	Utilization *float64 `yaml:"utilization"`
	fileAction  `yaml:",inline"`
}

type fileGateway struct {
	Name             string          `yaml:"name"`
	MinReplicas      *int            `yaml:"min_replicas"`
	MaxReplicas      *int            `yaml:"max_replicas"`
	LatencyP95Target *time.Duration  `yaml:"latency_p95_target"`
	ScaleUp          fileAction      `yaml:"scale_up"`
	ScaleDown        fileGatewayDown `yaml:"scale_down"`
}

type fileGatewayDown struct {
	LatencyRatio *float64 `yaml:"latency_ratio"`
	fileAction   `yaml:",inline"`
}

// Parse reads a policy from YAML, applies the defaults and validates it. Unknown fields
// are errors; every invalid value is reported as a *FieldError naming the field, its line
// and the rule, all of them joined in one error.
func Parse(data []byte) (Config, error) {
	var root yaml.Node
	dec := yaml.NewDecoder(bytes.NewReader(data))
	if err := dec.Decode(&root); err != nil {
		if errors.Is(err, io.EOF) {
			return Config{}, errors.New("policy: empty document: at least one pool or the gateways must be configured")
		}
		return Config{}, fmt.Errorf("policy: %w", err)
	}
	var fc fileConfig
	strict := yaml.NewDecoder(bytes.NewReader(data))
	strict.KnownFields(true)
	if err := strict.Decode(&fc); err != nil {
		return Config{}, fmt.Errorf("policy: %w", err)
	}
	cfg, errs := fc.resolve()
	missing := map[string]bool{}
	for _, e := range errs {
		missing[e.Path] = true
	}
	for _, e := range cfg.validate() {
		if !missing[e.Path] { // "required" says it already
			errs = append(errs, e)
		}
	}
	if len(errs) == 0 {
		return cfg, nil
	}
	joined := make([]error, 0, len(errs))
	for _, fe := range errs {
		if fe.Line == 0 {
			fe.Line = lineOf(&root, fe.Path)
		}
		joined = append(joined, fe)
	}
	return Config{}, fmt.Errorf("policy: %w", errors.Join(joined...))
}

func orInt(p *int, def int) int {
	if p == nil {
		return def
	}
	return *p
}

func orFloat(p *float64, def float64) float64 {
	if p == nil {
		return def
	}
	return *p
}

func orDuration(p *time.Duration, def time.Duration) time.Duration {
	if p == nil {
		return def
	}
	return *p
}

func (a fileAction) step() Step {
	return Step{Count: orInt(a.Step, 1), Percent: orInt(a.StepPercent, 0)}
}

// resolve applies the defaults. Settings with no default are reported when missing.
func (fc fileConfig) resolve() (Config, []*FieldError) {
	var errs []*FieldError
	cfg := Config{Interval: orDuration(fc.Interval, DefaultInterval)}
	for i, fp := range fc.Pools {
		p := PoolConfig{
			Name:           fp.Name,
			SlotType:       fp.SlotType,
			MinReplicas:    orInt(fp.MinReplicas, DefaultMinReplicas),
			SlotsPerWorker: orInt(fp.SlotsPerWorker, DefaultSlotsPerWorker),
		}
		if p.SlotType == "" {
			p.SlotType = p.Name
		}
		if fp.MaxReplicas == nil {
			errs = append(errs, &FieldError{Path: fmt.Sprintf("pools[%d].max_replicas", i), Msg: "required"})
		} else {
			p.MaxReplicas = *fp.MaxReplicas
		}
		p.ScaleUp = ScaleUp{
			// One worker's worth of waiting runs.
			QueueDepth:  orInt(fp.ScaleUp.QueueDepth, p.SlotsPerWorker),
			Utilization: orFloat(fp.ScaleUp.Utilization, DefaultUpUtilization),
			Sustained:   orDuration(fp.ScaleUp.Sustained, DefaultUpSustained),
			Cooldown:    orDuration(fp.ScaleUp.Cooldown, DefaultUpCooldown),
			Step:        fp.ScaleUp.step(),
		}
		p.ScaleDown = ScaleDown{
			Utilization: orFloat(fp.ScaleDown.Utilization, DefaultDownUtilization),
			Sustained:   orDuration(fp.ScaleDown.Sustained, DefaultDownSustained),
			Cooldown:    orDuration(fp.ScaleDown.Cooldown, DefaultDownCooldown),
			Step:        fp.ScaleDown.step(),
		}
		cfg.Pools = append(cfg.Pools, p)
	}
	if g := fc.Gateways; g != nil {
		gc := &GatewayConfig{
			Name:        g.Name,
			MinReplicas: orInt(g.MinReplicas, DefaultMinReplicas),
			Up: GatewayAction{
				Sustained: orDuration(g.ScaleUp.Sustained, DefaultUpSustained),
				Cooldown:  orDuration(g.ScaleUp.Cooldown, DefaultUpCooldown),
				Step:      g.ScaleUp.step(),
			},
			Down: GatewayAction{
				Sustained: orDuration(g.ScaleDown.Sustained, DefaultDownSustained),
				Cooldown:  orDuration(g.ScaleDown.Cooldown, DefaultDownCooldown),
				Step:      g.ScaleDown.step(),
			},
			DownRatio: orFloat(g.ScaleDown.LatencyRatio, DefaultGatewayDownRatio),
		}
		if gc.Name == "" {
			gc.Name = DefaultGatewayName
		}
		if g.MaxReplicas == nil {
			errs = append(errs, &FieldError{Path: "gateways.max_replicas", Msg: "required"})
		} else {
			gc.MaxReplicas = *g.MaxReplicas
		}
		if g.LatencyP95Target == nil {
			errs = append(errs, &FieldError{Path: "gateways.latency_p95_target", Msg: "required (e.g. 500ms)"})
		} else {
			gc.LatencyP95Target = *g.LatencyP95Target
		}
		cfg.Gateway = gc
	}
	return cfg, errs
}

// Validate checks a Config built by hand; Parse calls it too. Every problem is reported,
// as *FieldError values joined in one error.
func (c Config) Validate() error {
	errs := c.validate()
	if len(errs) == 0 {
		return nil
	}
	joined := make([]error, len(errs))
	for i, e := range errs {
		joined[i] = e
	}
	return errors.Join(joined...)
}

var nameRE = regexp.MustCompile(`^[a-z0-9]([a-z0-9._-]{0,61}[a-z0-9])?$`)

func (c Config) validate() []*FieldError {
	var errs []*FieldError
	add := func(path, format string, args ...any) {
		errs = append(errs, &FieldError{Path: path, Msg: fmt.Sprintf(format, args...)})
	}
	if c.Interval <= 0 {
		add("interval", "must be > 0 (e.g. 15s)")
	}
	if len(c.Pools) == 0 && c.Gateway == nil {
		add("pools", "at least one pool or the gateways must be configured")
	}
	names := map[string]string{}
	for i, p := range c.Pools {
		at := fmt.Sprintf("pools[%d]", i)
		switch {
		case p.Name == "":
			add(at+".name", "required")
		case !nameRE.MatchString(p.Name):
			add(at+".name", "must be lower-case letters, digits, '.', '_' or '-', starting and ending with a letter or digit (got %q)", p.Name)
		case names[p.Name] != "":
			add(at+".name", "duplicates %s (%q)", names[p.Name], p.Name)
		default:
			names[p.Name] = at + ".name"
		}
		if p.SlotType == "" {
			add(at+".slot_type", "required")
		}
		if p.MinReplicas < 0 {
			add(at+".min_replicas", "must be >= 0 (got %d)", p.MinReplicas)
		}
		if p.MaxReplicas < 1 {
			add(at+".max_replicas", "must be >= 1 (got %d)", p.MaxReplicas)
		} else if p.MaxReplicas < p.MinReplicas {
			add(at+".max_replicas", "must be >= min_replicas (%d)", p.MinReplicas)
		}
		if p.SlotsPerWorker < 1 {
			add(at+".slots_per_worker", "must be >= 1 (got %d)", p.SlotsPerWorker)
		}
		u, d := p.ScaleUp, p.ScaleDown
		if u.QueueDepth < 0 {
			add(at+".scale_up.queue_depth", "must be >= 0 (got %d)", u.QueueDepth)
		}
		if !(u.Utilization > 0 && u.Utilization <= 1) {
			add(at+".scale_up.utilization", "must be in (0, 1] (got %s)", fmtFloat(u.Utilization))
		}
		if !(d.Utilization >= 0 && d.Utilization < 1) {
			add(at+".scale_down.utilization", "must be in [0, 1) (got %s)", fmtFloat(d.Utilization))
		} else if u.Utilization > 0 && d.Utilization >= u.Utilization {
			add(at+".scale_down.utilization", "must be < scale_up.utilization (%s), or the pool would flap", fmtFloat(u.Utilization))
		}
		validateAction(add, at+".scale_up", u.Sustained, u.Cooldown, u.Step)
		validateAction(add, at+".scale_down", d.Sustained, d.Cooldown, d.Step)
	}
	if g := c.Gateway; g != nil {
		switch {
		case !nameRE.MatchString(g.Name):
			add("gateways.name", "must be lower-case letters, digits, '.', '_' or '-', starting and ending with a letter or digit (got %q)", g.Name)
		case names[g.Name] != "":
			add("gateways.name", "duplicates %s (%q); the driver could not tell them apart", names[g.Name], g.Name)
		}
		if g.MinReplicas < 0 {
			add("gateways.min_replicas", "must be >= 0 (got %d)", g.MinReplicas)
		}
		if g.MaxReplicas < 1 {
			add("gateways.max_replicas", "must be >= 1 (got %d)", g.MaxReplicas)
		} else if g.MaxReplicas < g.MinReplicas {
			add("gateways.max_replicas", "must be >= min_replicas (%d)", g.MinReplicas)
		}
		if g.LatencyP95Target <= 0 {
			add("gateways.latency_p95_target", "must be > 0 (e.g. 500ms)")
		}
		if !(g.DownRatio >= 0 && g.DownRatio < 1) {
			add("gateways.scale_down.latency_ratio", "must be in [0, 1) so that scale-down sits below the target (got %s)", fmtFloat(g.DownRatio))
		}
		validateAction(add, "gateways.scale_up", g.Up.Sustained, g.Up.Cooldown, g.Up.Step)
		validateAction(add, "gateways.scale_down", g.Down.Sustained, g.Down.Cooldown, g.Down.Step)
	}
	return errs
}

func validateAction(add func(string, string, ...any), at string, sustained, cooldown time.Duration, step Step) {
	if sustained < 0 {
		add(at+".sustained", "must be >= 0 (got %s)", sustained)
	}
	if cooldown < 0 {
		add(at+".cooldown", "must be >= 0 (got %s)", cooldown)
	}
	if step.Count < 1 {
		add(at+".step", "must be >= 1 (got %d)", step.Count)
	}
	if step.Percent < 0 || step.Percent > 1000 {
		add(at+".step_percent", "must be in [0, 1000] (got %d)", step.Percent)
	}
}

func fmtFloat(f float64) string {
	if math.IsNaN(f) {
		return "NaN"
	}
	return strconv.FormatFloat(f, 'g', -1, 64)
}

// lineOf finds the line of path ("pools[1].scale_up.step") in a YAML document; it
// falls back to the closest existing parent, and 0 when nothing matches.
func lineOf(root *yaml.Node, path string) int {
	n := root
	if n.Kind == yaml.DocumentNode && len(n.Content) > 0 {
		n = n.Content[0]
	}
	line := 0
	for _, part := range strings.Split(path, ".") {
		key, idx := part, -1
		if i := strings.IndexByte(part, '['); i >= 0 && strings.HasSuffix(part, "]") {
			key = part[:i]
			if v, err := strconv.Atoi(part[i+1 : len(part)-1]); err == nil {
				idx = v
			}
		}
		k, next := mappingEntry(n, key)
		if next == nil {
			return line
		}
		line = k.Line
		n = next
		if idx >= 0 {
			if n.Kind != yaml.SequenceNode || idx >= len(n.Content) {
				return line
			}
			n = n.Content[idx]
			line = n.Line
		}
	}
	return line
}

func mappingEntry(n *yaml.Node, key string) (k, v *yaml.Node) {
	if n == nil || n.Kind != yaml.MappingNode {
		return nil, nil
	}
	for i := 0; i+1 < len(n.Content); i += 2 {
		if n.Content[i].Value == key {
			return n.Content[i], n.Content[i+1]
		}
	}
	return nil, nil
}
