package flow

import (
	"fmt"
	"sort"
	"strings"
)

// SourceName is the file name that error messages give the flow's YAML text.
const SourceName = "flow.yaml"

// Error is one problem in a flow: where it is, which field, and which rule it breaks.
type Error struct {
	// Line and Column are 1-based positions in the YAML text. Column is 0 when the YAML parser
	// reports only a line (some syntax errors); both are 0 when the problem has no position
	// (an empty document).
	Line, Column int
	// Field is the path of the field, e.g. "executors[0].command"; "flow" for the document as a
	// whole and empty for YAML syntax errors.
	Field string
	// Rule says what the field must be, e.g. "must be a non-empty list of strings".
	Rule string
}

// Error formats the problem as "flow.yaml:LINE:COLUMN: FIELD: RULE".
func (e *Error) Error() string {
	var b strings.Builder
	if e.Line > 0 {
		b.WriteString(SourceName)
		fmt.Fprintf(&b, ":%d", e.Line)
		if e.Column > 0 {
			fmt.Fprintf(&b, ":%d", e.Column)
		}
		b.WriteString(": ")
	}
	if e.Field != "" {
		b.WriteString(e.Field)
		b.WriteString(": ")
	}
	b.WriteString(e.Rule)
	return b.String()
}

// maxListedErrors bounds how many problems Errors.Error spells out; all stay in the slice.
const maxListedErrors = 20

// Errors is every problem Parse found, sorted by position. Parse returns it (never an empty
// one) as its error, so errors.As finds both Errors and the first *Error.
type Errors []*Error

// Error lists the problems one per line (at most 20, then a count of the rest).
func (es Errors) Error() string {
	var b strings.Builder
	for i, e := range es {
		if i == maxListedErrors {
			fmt.Fprintf(&b, "\n(and %d more problems)", len(es)-i)
			break
		}
		if i > 0 {
			b.WriteByte('\n')
		}
		b.WriteString(e.Error())
	}
	return b.String()
}

// Unwrap returns the problems as errors, for errors.Is and errors.As.
func (es Errors) Unwrap() []error {
	out := make([]error, len(es))
	for i, e := range es {
		out[i] = e
	}
	return out
}

func (es Errors) sort() {
	sort.SliceStable(es, func(i, j int) bool {
		if es[i].Line != es[j].Line {
			return es[i].Line < es[j].Line
		}
		return es[i].Column < es[j].Column
	})
}
