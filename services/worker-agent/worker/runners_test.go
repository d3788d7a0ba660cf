package worker

import (
	"sync"
	"testing"
	"time"
)

// Every job handed to the runners runs, including those handed over as runners retire
// after runnerJobs runs (a retiring runner once took a job and exited without running it,
// which left runs of a busy worker RUNNING forever after about 4,096 runs per runner).
func TestRunnersRunEveryJob(t *testing.T) {
	t.Parallel()
	r := newRunners()
	defer r.stop()
	const jobs = 3*runnerJobs + 7
	var wg sync.WaitGroup
	wg.Add(jobs)
	sem := make(chan struct{}, 4) // at most 4 at once, like a worker with 4 slots
	for range jobs {
		sem <- struct{}{}
		r.do(func() {
			<-sem
			wg.Done()
		})
	}
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(30 * time.Second):
		t.Fatal("some jobs never ran")
	}
}
