package executor

import (
	"context"
	"errors"
	"fmt"
	"syscall"
)

// A replica of an executor whose flow declares `concurrency: N` above 1 takes up to N
// requests at once (an optional extension of protocol v1: the lines are v1's, and every
// answer already names its request by id). Requests are written to its stdin as they come,
// by whichever caller finds no write in progress (it writes what the others queued
// meanwhile too, so a burst of requests is one write); one goroutine per replica reads
// stdout and hands each line to the call whose id it carries.
//
// What one request at a time gave for free is kept as follows:
//   - a crash, or a breach of the protocol (an answer to no request in flight, a line or a
//     request's output over its bound), fails every request in flight on the replica,
//     which is killed and replaced;
//   - a request whose context ends (a cancel, the run's timeout) is abandoned, not killed:
//     the others on the replica go on. It keeps its place among the replica's N until the
//     executor answers it (the answer is dropped), and a replica left with abandoned
//     requests only is killed;
//   - stderr cannot be told apart by request: it goes to the worker's log, with the
//     executor, replica and pid.

// muxState is the request bookkeeping of a replica that takes several requests at once.
// Its fields are guarded by replica.mu.
type muxState struct {
	// calls are the requests in flight, by id; abandoned the ids whose callers gave up.
	calls     map[string]*muxCall
	abandoned map[string]bool
	// failed, once set, is what every request in flight got and every later one gets.
	failed error
	// pending is what is queued for stdin; writing is set while a caller (or, once the
	// pipe was full, a goroutine of its own) writes it. spare is a drained buffer for reuse.
	pending, spare []byte
	writing        bool
	// release gives back the pool's hold of an abandoned request once it ends; onFail tells
	// the pool that the replica is gone.
	release func()
	onFail  func()
}

// muxCall is one request in flight on a replica that takes several.
type muxCall struct {
	// msgs are the answer lines not yet taken by the caller: events, then its final one.
	msgs []muxMsg
	// err ends the call: the replica failed.
	err error
	// bytes counts the request's output, bounded by MaxStepOutputBytes.
	bytes  int64
	signal chan struct{}
}

// wake tells the call's caller that it has something to read (once is enough).
func (c *muxCall) wake() {
	select {
	case c.signal <- struct{}{}:
	default:
	}
}

type muxMsg struct {
	event map[string]any
	rep   *reply
}

// startMux starts the stdout reader of a shared replica (started with shared set).
func (r *replica) startMux(release, onFail func()) {
	r.mux.release, r.mux.onFail = release, onFail
	go r.readMux()
}

// abandonedRequests is the number of abandoned requests the executor has not answered.
func (r *replica) abandonedRequests() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.mux.abandoned)
}

// callMux sends one request and waits for its answer, handing events to onEvent on the
// caller's goroutine. It returns a *failure when the replica failed, or context.Cause(ctx)
// when ctx ended first; abandoned reports that the request was still unanswered then (its
// place on the replica is released when the answer comes or the replica dies).
func (r *replica) callMux(ctx context.Context, req *request, onEvent func(map[string]any)) (rep *reply, abandoned bool, err error) {
	line := req.line()
	c := &muxCall{signal: make(chan struct{}, 1)}
	m := r.mux
	r.mu.Lock()
	if m.failed != nil {
		err := m.failed
		r.mu.Unlock()
		return nil, false, err
	}
	m.calls[req.ID] = c
	r.mu.Unlock()
	r.sendMux(line)
	for {
		select {
		case <-c.signal:
		case <-ctx.Done():
			r.mu.Lock()
			if m.calls[req.ID] == c {
				delete(m.calls, req.ID)
				m.abandoned[req.ID] = true
				abandoned = true
			}
			r.mu.Unlock()
			return nil, abandoned, context.Cause(ctx)
		}
		r.mu.Lock()
		msgs, failed := c.msgs, c.err
		c.msgs = nil
		r.mu.Unlock()
		for _, msg := range msgs {
			if msg.rep != nil {
				return msg.rep, false, nil
			}
			onEvent(msg.event)
		}
		if failed != nil {
			return nil, false, failed
		}
	}
}

// sendMux queues line for stdin and, unless a write is in progress, writes everything
// queued: non-blocking on the caller's goroutine; what does not fit is written by a
// goroutine of its own, which waits for room.
func (r *replica) sendMux(line []byte) {
	r.mu.Lock()
	m := r.mux
	m.pending = append(m.pending, line...)
	if m.writing {
		r.mu.Unlock()
		return
	}
	m.writing = true
	r.drainMux(false)
}

// drainMux writes m.pending until it is empty; called with r.mu held, it returns with it
// released. blocking waits for room in the pipe; otherwise a full pipe hands the rest to
// a goroutine.
func (r *replica) drainMux(blocking bool) {
	m := r.mux
	for len(m.pending) > 0 {
		buf := m.pending
		m.pending = m.spare[:0]
		m.spare = nil
		r.mu.Unlock()
		var n int
		var err error
		if blocking {
			n, err = r.stdin.Write(buf)
		} else {
			n, err = r.in.tryWrite(buf)
			if errors.Is(err, syscall.EAGAIN) || errors.Is(err, syscall.EINTR) {
				err = nil
			}
			n = max(n, 0)
		}
		r.mu.Lock()
		if err != nil {
			m.pending, m.writing = nil, false
			r.mu.Unlock()
			// The process is most likely gone (EPIPE): its exit ends stdout, and the reader
			// fails the requests with it; should stdout stay open, after the grace.
			r.markBroken()
			r.graceDeadline()
			return
		}
		if n < len(buf) {
			m.pending = append(buf[n:len(buf):len(buf)], m.pending...)
			if !blocking {
				r.mu.Unlock()
				go func() {
					r.mu.Lock()
					r.drainMux(true)
				}()
				return
			}
			continue
		}
		m.spare = buf[:0]
	}
	m.writing = false
	r.mu.Unlock()
}

// readMux reads the replica's stdout until it ends, handing each line to its request.
func (r *replica) readMux() {
	m := r.mux
	for {
		line, _, err := readLine(r.out, r.cfg.MaxLineBytes, false)
		if errors.Is(err, errLineTooLong) {
			r.breachMux(&protocolError{
				what: fmt.Sprintf("output line longer than %d bytes", r.cfg.MaxLineBytes), line: line})
			return
		}
		if err != nil {
			// No request's context ends this read, and no request's write is waited for.
			r.failMux(r.outputEnded(context.Background(), err, nil))
			return
		}
		id, event, rep, perr := parseAnyMessage(line)
		if perr != nil {
			r.breachMux(perr)
			return
		}
		r.mu.Lock()
		c := m.calls[id]
		if c == nil {
			if m.abandoned[id] {
				release := rep != nil
				if release {
					delete(m.abandoned, id)
				}
				r.mu.Unlock()
				if release {
					m.release()
				}
				continue
			}
			r.mu.Unlock()
			r.breachMux(&protocolError{
				what: fmt.Sprintf("message answers id %q, which is not a request in flight", id), line: line})
			return
		}
		if c.bytes += int64(len(line)) + 1; c.bytes > r.cfg.MaxStepOutputBytes {
			r.mu.Unlock()
			r.breachMux(&protocolError{
				what: fmt.Sprintf("more than %d bytes of output for one request", r.cfg.MaxStepOutputBytes)})
			return
		}
		c.msgs = append(c.msgs, muxMsg{event: event, rep: rep})
		if rep != nil {
			delete(m.calls, id)
		}
		r.mu.Unlock()
		c.wake()
	}
}

// breachMux fails the replica for breaking the protocol; with no request in flight
// (output while idle) nobody hears of it but the worker's log.
func (r *replica) breachMux(err error) {
	r.mu.Lock()
	idle := len(r.mux.calls) == 0
	r.mu.Unlock()
	if idle {
		r.logger.Warn("executor broke protocol v1 while idle; replacing it",
			"executor", r.executor, "replica", r.index, "pid", r.pid, "err", err.Error())
	}
	r.failMux(r.protocolFailure(err))
}

// failMux ends every request in flight with err, releases the abandoned ones, tells the
// pool and kills the replica. Later requests get err at once.
func (r *replica) failMux(err error) {
	m := r.mux
	r.mu.Lock()
	if m.failed == nil {
		m.failed = err
	}
	calls := m.calls
	abandoned := len(m.abandoned)
	m.calls, m.abandoned = map[string]*muxCall{}, map[string]bool{}
	for _, c := range calls {
		c.err = m.failed
	}
	r.broken = true
	r.mu.Unlock()
	// Out of the pool before its callers learn of the failure: the requests they retry
	// start a fresh replica.
	m.onFail()
	for _, c := range calls {
		c.wake()
	}
	for range abandoned {
		m.release()
	}
	r.kill()
}
