package worker

import (
	"strings"

	"google.golang.org/grpc"
)

// WithDialOptions adds options to the worker's scheduler connections, after its own
// (plain-text credentials, keepalives). The worker-agent command passes
// discovery.DialOptions here, so SCHEDULER_ADDR may be "consul:///agentserver-scheduler"
// (every session resolves the healthy schedulers afresh) or "static:///a:1,b:2".
func WithDialOptions(opts ...grpc.DialOption) Option {
	return func(o *options) { o.dial.opts = append(o.dial.opts, opts...) }
}

// WithSchedulerConn makes every session of the worker a stream over conn, instead of a
// connection dialled to SCHEDULER_ADDR (which then only names the scheduler in logs).
// The all-in-one server passes its scheduler's in-process channel here.
func WithSchedulerConn(conn grpc.ClientConnInterface) Option {
	return func(o *options) { o.dial.conn = conn }
}

// dialSettings is the part of options that WithDialOptions and WithSchedulerConn set.
type dialSettings struct {
	opts []grpc.DialOption
	conn grpc.ClientConnInterface
}

func dialOptions(opts []Option) dialSettings {
	var o options
	for _, opt := range opts {
		opt(&o)
	}
	return o.dial
}

// schedulerTargets splits SCHEDULER_ADDR into the targets the worker rotates through: a
// comma-separated list of host:port addresses, or one resolver target
// ("consul:///service", "static:///a:1,b:2", "dns:///name:port"), whose resolver picks a
// healthy scheduler for each session.
func schedulerTargets(list string) []string {
	list = strings.TrimSpace(list)
	if strings.Contains(list, "://") {
		return []string{list}
	}
	var out []string
	for _, a := range strings.Split(list, ",") {
		if a = strings.TrimSpace(a); a != "" {
			out = append(out, a)
		}
	}
	return out
}

// Pool returns the worker's pool name.
func (w *Worker) Pool() string { return w.cfg.Pool }

// Slots returns the worker's slots by type (gpu=auto resolved), for its registration in
// discovery. The caller must not modify the map.
func (w *Worker) Slots() map[string]int { return w.slots }
