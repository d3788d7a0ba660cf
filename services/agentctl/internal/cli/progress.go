package cli

import (
	"fmt"

	"github.com/schollz/progressbar/v3"

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
