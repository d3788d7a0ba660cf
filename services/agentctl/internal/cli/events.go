package cli

import (
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"strings"
	"time"
	"unicode"

	"github.com/spf13/cobra"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/structpb"

	agentserverv1 "github.com/agentserver/agentserver/gen/agentserver/v1"
)

// Event types that agentctl knows how to summarise; others print their data as JSON.
const (
	eventState         = "state"
	eventStepStarted   = "step_started"
	eventExecutorEvent = "executor_event"
	eventLog           = "log"
)

// eventTimeLayout is the time column of event lines: local time to the millisecond, with the
// date, because an event log can span days.
const eventTimeLayout = "2006-01-02T15:04:05.000Z07:00"

// eventLineJSON renders one event per line for `runs watch -o json`: every field present,
// like -o json elsewhere, but on one line so that the output is a stream of JSON objects.
var eventLineJSON = protojson.MarshalOptions{EmitUnpopulated: true}

func (a *app) newRunsEventsCommand() *cobra.Command {
	var p pageFlags
	cmd := &cobra.Command{
		Use:   "events ID [--all]",
		Short: "List a run's recorded events, oldest first",
		Long: `Events lists the run's event log (state changes, steps started, executor events, logs)
as it is now, one line per event: seq, time, type and a summary. To follow a run live, use
'runs watch'.

With -o json it prints one ListRunEventsResponse; with --all, one holding every page.`,
		Example: `  agentctl runs events r1 --all
  agentctl runs events r1 --all -o json | jq '.events[] | select(.type == "log")'`,
		Args: exactArgs("ID"),
		RunE: func(cmd *cobra.Command, args []string) error {
			name, err := resourceName("runs", "a run id", args[0])
			if err != nil {
				return err
			}
			c, err := a.runClient()
			if err != nil {
				return err
			}
			return printList(cmd.Context(), a, p, listing[*agentserverv1.RunEvent]{
				page: func(ctx context.Context, size int32, token string) ([]*agentserverv1.RunEvent, string, error) {
					resp, err := c.ListRunEvents(ctx, &agentserverv1.ListRunEventsRequest{Name: name, PageSize: size, PageToken: token})
					return resp.GetEvents(), resp.GetNextPageToken(), err
				},
				response: func(items []*agentserverv1.RunEvent, next string) proto.Message {
					return &agentserverv1.ListRunEventsResponse{Events: items, NextPageToken: next}
				},
				noun: "events",
				row:  func(_ time.Time, ev *agentserverv1.RunEvent) string { return eventLine(ev) },
			})
		},
	}
	p.register(cmd.Flags())
	return cmd
}

// eventLine renders ev as "seq  time  type  summary" on one line.
func eventLine(ev *agentserverv1.RunEvent) string {
	ts := "-"
	if ev.GetCreateTime() != nil {
		ts = ev.GetCreateTime().AsTime().Local().Format(eventTimeLayout)
	}
	line := fmt.Sprintf("%-5d  %s  %-14s  %s", ev.GetSeq(), ts, oneLine(ev.GetType()), eventSummary(ev))
	return strings.TrimRight(line, " ")
}

// eventJSONLine renders ev as one protojson object on one line, newline included.
func eventJSONLine(ev *agentserverv1.RunEvent) ([]byte, error) {
	b, err := eventLineJSON.Marshal(ev)
	if err != nil {
		return nil, fmt.Errorf("encoding event %d as JSON: %w", ev.GetSeq(), err)
	}
	return append(b, '\n'), nil
}

// eventSummary says what ev records in a few words. It knows the data of the event types the
// server writes today; keys it does not know are appended as JSON, so nothing is hidden.
func eventSummary(ev *agentserverv1.RunEvent) string {
	data := maps.Clone(ev.GetData().GetFields())
	if data == nil {
		data = map[string]*structpb.Value{}
	}
	take := func(key string) *structpb.Value {
		v := data[key]
		delete(data, key)
		return v
	}
	var b strings.Builder
	word := func(s string) {
		if s == "" {
			return
		}
		if b.Len() > 0 {
			b.WriteByte(' ')
		}
		b.WriteString(s)
	}
	switch ev.GetType() {
	case eventState:
		word(take("state").GetStringValue())
		if step := take("step").GetStringValue(); step != "" {
			word("at step " + step)
		}
		if worker := take("worker").GetStringValue(); worker != "" {
			word("on " + shortName(worker))
		}
		if take("resumed").GetBoolValue() {
			word("(resumed)")
		}
		// The first attempt goes without saying; later ones and retries do not.
		retry, attempt := take("retry"), take("attempt")
		switch {
		case retry.GetBoolValue() && attempt != nil:
			word(fmt.Sprintf("(retry, attempt %s)", valueJSON(attempt)))
		case retry.GetBoolValue():
			word("(retry)")
		case attempt != nil && attempt.GetNumberValue() != 1:
			word(fmt.Sprintf("(attempt %s)", valueJSON(attempt)))
		}
		if e := take("error").GetStringValue(); e != "" {
			word("error: " + e)
		}
		if p, ok := data["prompt"]; ok {
			delete(data, "prompt")
			word("prompt: " + valueJSON(p))
		}
	case eventStepStarted:
		word("step " + take("step").GetStringValue())
	case eventExecutorEvent:
		word(fmt.Sprintf("step %s:", take("step").GetStringValue()))
		if d, ok := data["data"]; ok {
			delete(data, "data")
			word(valueJSON(d))
		}
	case eventLog:
		if ex := take("executor").GetStringValue(); ex != "" {
			word(ex + ":")
		}
		word(take("line").GetStringValue())
	}
	if len(data) > 0 {
		word(valueJSON(structpb.NewStructValue(&structpb.Struct{Fields: data})))
	}
	return oneLine(b.String())
}

// valueJSON renders v as compact JSON with sorted keys.
func valueJSON(v *structpb.Value) string {
	if v == nil {
		return "null"
	}
	b, err := json.Marshal(v.AsInterface())
	if err != nil {
		return fmt.Sprintf("<%v>", err)
	}
	return string(b)
}

// oneLine keeps text from the server on one line and free of terminal control sequences:
// line breaks and other control characters are escaped, tabs stay.
func oneLine(s string) string {
	if !strings.ContainsFunc(s, func(r rune) bool { return r != '\t' && unicode.IsControl(r) }) {
		return s
	}
	var b strings.Builder
	for _, r := range s {
		switch {
		case r == '\n':
			b.WriteString(`\n`)
		case r == '\r':
			b.WriteString(`\r`)
		case r != '\t' && unicode.IsControl(r):
			fmt.Fprintf(&b, `\x%02x`, r)
		default:
			b.WriteRune(r)
		}
	}
	return b.String()
}

// stateOf returns the state a "state" event records, or STATE_UNSPECIFIED for other events.
func stateOf(ev *agentserverv1.RunEvent) agentserverv1.Run_State {
	if ev.GetType() != eventState {
		return agentserverv1.Run_STATE_UNSPECIFIED
	}
	return agentserverv1.Run_State(agentserverv1.Run_State_value[ev.GetData().GetFields()["state"].GetStringValue()])
}

// ended reports whether a run in state s is over for good (INTERRUPTED is not: it can be
// resumed).
func ended(s agentserverv1.Run_State) bool {
	return stopped(s) && s != agentserverv1.Run_INTERRUPTED
}
