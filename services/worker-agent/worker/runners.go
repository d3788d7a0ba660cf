package worker

import "sync"

// runners are the goroutines runs execute on. A goroutine that finished a run waits for the
// next one, so a run usually starts on a stack that the runs before it already grew; a fresh
// goroutine per run grew its stack again every time.
type runners struct {
	jobs     chan func()
	quit     chan struct{}
	stopOnce sync.Once
}

// runnerJobs is how many runs one runner executes before it exits, so that a stack grown
// large by one run is not kept forever.
const runnerJobs = 1 << 12

func newRunners() *runners {
	return &runners{jobs: make(chan func()), quit: make(chan struct{})}
}

// do runs f on an idle runner, or on a new one when none is idle: it never waits.
func (r *runners) do(f func()) {
	select {
	case r.jobs <- f:
	default:
		go r.loop(f)
	}
}

func (r *runners) loop(f func()) {
	for n := 1; ; n++ {
		f()
		if n == runnerJobs {
			// Retire before taking another run: one taken here must run here.
			return
		}
		select {
		case f = <-r.jobs:
		case <-r.quit:
			return
		}
	}
}

// stop ends the idle runners, and the busy ones once their runs end.
func (r *runners) stop() { r.stopOnce.Do(func() { close(r.quit) }) }
