package cli

import (
	"github.com/spf13/cobra"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/types/known/structpb"

	agentserverv1 "github.com/agentserver/agentserver/gen/agentserver/v1"
)

func (a *app) newRunsResumeCommand() *cobra.Command {
	var (
		value, valueFile string
		wait             bool
	)
	cmd := &cobra.Command{
		Use:   "resume ID (--value JSON | --value-file FILE) [--wait]",
		Short: "Answer an INTERRUPTED run and let it continue",
		Long: `Resume continues an INTERRUPTED run: the interrupted step is called again with the value
as its "resume" input. The value is any JSON value (a string needs its quotes: '"yes"').
'runs get ID' shows what the run asks for (its prompt).

With --wait it then waits until the run ends (or is INTERRUPTED again), printing its output
and exiting like 'runs wait'.`,
		Example: `  agentctl runs resume r1 --value '{"approved": true}'
  agentctl runs resume r1 --value '"yes"' --wait
  agentctl runs resume r1 --value-file answer.json`,
		Args: exactArgs("ID"),
		RunE: func(cmd *cobra.Command, args []string) error {
			name, err := resourceName("runs", "a run id", args[0])
			if err != nil {
				return err
			}
			var text []byte
			flag := "--value"
			switch {
			case changed(cmd, "value") && changed(cmd, "value-file"):
				return usageErrorf("give --value or --value-file, not both")
			case changed(cmd, "value"):
				text = []byte(value)
			case changed(cmd, "value-file"):
				flag = "--value-file"
				if text, err = a.readFileArg(flag, valueFile); err != nil {
					return err
				}
			default:
				return usageErrorf("--value or --value-file is required: the answer to the run's prompt, as JSON")
			}
			v, err := parseValue(flag, text)
			if err != nil {
				return err
			}
			c, err := a.runClient()
			if err != nil {
				return err
			}
			ctx, cancel := a.callContext(cmd.Context())
			resumed, err := c.ResumeRun(ctx, &agentserverv1.ResumeRunRequest{Name: name, Value: v})
			cancel()
			if err != nil {
				return err
			}
			return a.reportStarted(cmd.Context(), c, "resumed", resumed, wait)
		},
	}
	fs := cmd.Flags()
	fs.StringVar(&value, "value", "", `the answer, a JSON value, e.g. '{"approved":true}' or '"yes"'`)
	fs.StringVar(&valueFile, "value-file", "", "file with the answer as JSON (- reads stdin)")
	fs.BoolVar(&wait, "wait", false, "wait until the run ends and print its output")
	return cmd
}

// parseValue parses text, the value of flag, as any JSON value.
func parseValue(flag string, text []byte) (*structpb.Value, error) {
	v := &structpb.Value{}
	if err := protojson.Unmarshal(text, v); err != nil {
		return nil, usageErrorf(`%s: want JSON (a string needs its quotes, e.g. '"yes"'): %v`, flag, err)
	}
	return v, nil
}
