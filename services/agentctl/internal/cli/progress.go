package cli

import (
	"fmt"
	"io"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/schollz/progressbar/v3"
	"golang.org/x/term"

	agentserverv1 "github.com/agentserver/agentserver/gen/agentserver/v1"
)

// progress shows a person what a wait is doing.
type progress interface {
	update(run *agentserverv1.Run)
	done()
}

// newProgress returns a spinner on stderr with the run's state and the time waited, or
// nothing when stderr is not a terminal (logs and pipes get no control characters).
func (a *app) newProgress(name string) progress {
	if !a.env.IsTerminal(a.env.Stderr) {
		return noProgress{}
	}
	bar := progressbar.NewOptions(-1,
		progressbar.OptionSetWriter(a.env.Stderr),
		progressbar.OptionSpinnerType(14),
		progressbar.OptionSetElapsedTime(true),
		progressbar.OptionSetDescription(name+" waiting"),
		progressbar.OptionClearOnFinish(),
	)
	_ = bar.RenderBlank()
	return &spinner{bar: bar, name: name}
}

type spinner struct {
	bar  *progressbar.ProgressBar
	name string
}

func (s *spinner) update(run *agentserverv1.Run) {
	desc := fmt.Sprintf("%s %s", s.name, run.GetState())
	if run.GetAttempt() > 1 {
		desc += fmt.Sprintf(" (attempt %d)", run.GetAttempt())
	}
	s.bar.Describe(desc)
}

// done clears the spinner's line and stops its ticker.
func (s *spinner) done() { _ = s.bar.Finish() }

type noProgress struct{}

func (noProgress) update(*agentserverv1.Run) {}
func (noProgress) done()                     {}

// watchDisplay is the status line of `runs watch` on a terminal (stderr): the run's state, its
// current step, the steps done, the time since the run was created and its last event. Event
// lines go to stdout above it. It redraws itself a few times a second so that the spinner and
// the time move while no event arrives.
//
// It draws its own line rather than using progressbar because event lines must be printed
// between a clear and a redraw under one lock, which progressbar's ticker does not allow.
// A nil *watchDisplay draws nothing: logs and pipes get plain lines only.
type watchDisplay struct {
	w     io.Writer
	now   func() time.Time
	width int
	name  string

	mu       sync.Mutex
	state    agentserverv1.Run_State
	step     string
	finished map[string]bool
	// since is when the run was created (its first event), until when it ended.
	since, until time.Time
	seen         bool
	last         string
	frame        int
	drawn        bool

	stop    chan struct{}
	stopped sync.WaitGroup
}

// spinnerFrames animate the status line.
var spinnerFrames = []string{"⠋", "⠙", "⠹", "⠸", "⠼", "⠴", "⠦", "⠧", "⠇", "⠏"}

// newWatchDisplay starts the status line of a watch of the run name, or returns nil when
// stderr is not a terminal.
func (a *app) newWatchDisplay(name string) *watchDisplay {
	if !a.env.IsTerminal(a.env.Stderr) {
		return nil
	}
	d := &watchDisplay{
		w:        a.env.Stderr,
		now:      a.env.Now,
		width:    terminalWidth(a.env.Stderr),
		name:     name,
		finished: map[string]bool{},
		since:    a.env.Now(),
		stop:     make(chan struct{}),
	}
	d.mu.Lock()
	d.draw()
	d.mu.Unlock()
	d.stopped.Add(1)
	go d.tick(200 * time.Millisecond)
	return d
}

func (d *watchDisplay) tick(every time.Duration) {
	defer d.stopped.Done()
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-d.stop:
			return
		case <-t.C:
			d.mu.Lock()
			d.frame++
			d.draw()
			d.mu.Unlock()
		}
	}
}

// print writes b, the rendering of ev, to out above the status line, and shows ev in it.
func (d *watchDisplay) print(out io.Writer, b []byte, ev *agentserverv1.RunEvent) error {
	if d == nil {
		_, err := out.Write(b)
		return err
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	d.clear()
	_, err := out.Write(b)
	d.record(ev)
	d.draw()
	return err
}

// note writes a line for a person to w (stderr), above the status line when there is one.
func (d *watchDisplay) note(w io.Writer, msg string) {
	if d == nil {
		fmt.Fprintln(w, msg)
		return
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	d.clear()
	fmt.Fprintln(d.w, msg)
	d.draw()
}

// close stops the redraws and erases the status line.
func (d *watchDisplay) close() {
	if d == nil {
		return
	}
	close(d.stop)
	d.stopped.Wait()
	d.mu.Lock()
	defer d.mu.Unlock()
	d.clear()
}

// record updates the status from ev. A step counts as done once another one starts (there is
// no step-ended event), or when the run succeeds; a step started again, after a resume or a
// retry, counts once.
func (d *watchDisplay) record(ev *agentserverv1.RunEvent) {
	if ts := ev.GetCreateTime(); ts != nil && !d.seen {
		d.since, d.seen = ts.AsTime(), true
	}
	d.last = fmt.Sprintf("#%d %s %s", ev.GetSeq(), oneLine(ev.GetType()), eventSummary(ev))
	switch ev.GetType() {
	case eventStepStarted:
		step := ev.GetData().GetFields()["step"].GetStringValue()
		if d.step != "" && d.step != step {
			d.finished[d.step] = true
		}
		d.step = step
	case eventState:
		s := stateOf(ev)
		if s == agentserverv1.Run_STATE_UNSPECIFIED {
			return
		}
		d.state = s
		if s == agentserverv1.Run_SUCCEEDED && d.step != "" {
			d.finished[d.step], d.step = true, ""
		}
		if ended(s) && ev.GetCreateTime() != nil {
			d.until = ev.GetCreateTime().AsTime()
		}
	}
}

// draw rewrites the status line; callers hold mu.
func (d *watchDisplay) draw() {
	parts := []string{d.name}
	if d.state != agentserverv1.Run_STATE_UNSPECIFIED {
		parts = append(parts, d.state.String())
	}
	if d.step != "" {
		parts = append(parts, "step "+oneLine(d.step))
	}
	if n := len(d.finished); n == 1 {
		parts = append(parts, "1 step done")
	} else {
		parts = append(parts, fmt.Sprintf("%d steps done", n))
	}
	end := d.now()
	if !d.until.IsZero() {
		end = d.until
	}
	parts = append(parts, max(end.Sub(d.since), 0).Round(time.Second).String())
	if d.last != "" {
		parts = append(parts, d.last)
	}
	line := spinnerFrames[d.frame%len(spinnerFrames)] + " " + strings.Join(parts, "  ")
	fmt.Fprintf(d.w, "\r\033[K%s", truncate(line, d.width-1))
	d.drawn = true
}

// clear erases the status line; callers hold mu.
func (d *watchDisplay) clear() {
	if d.drawn {
		_, _ = io.WriteString(d.w, "\r\033[K")
		d.drawn = false
	}
}

// terminalWidth returns the width of the terminal w writes to, or 80.
func terminalWidth(w io.Writer) int {
	if f, ok := w.(*os.File); ok {
		if cols, _, err := term.GetSize(int(f.Fd())); err == nil && cols > 0 {
			return cols
		}
	}
	return 80
}

// truncate shortens s to at most n runes, marking the cut with an ellipsis.
func truncate(s string, n int) string {
	r := []rune(s)
	if len(r) <= n || n < 1 {
		return s
	}
	return string(r[:n-1]) + "…"
}
