package cli

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/structpb"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// jsonOptions render -o json: the response as one protojson object, every field present so
// that scripts can rely on keys, lowerCamelCase like the REST API.
var jsonOptions = protojson.MarshalOptions{Multiline: true, Indent: "  ", EmitUnpopulated: true}

func (a *app) jsonOutput() bool { return a.cfg.Output == OutputJSON }

// printJSON writes m to stdout as one protojson object.
func (a *app) printJSON(m proto.Message) error {
	b, err := jsonOptions.Marshal(m)
	if err != nil {
		return fmt.Errorf("encoding %s as JSON: %w", m.ProtoReflect().Descriptor().FullName(), err)
	}
	b = append(b, '\n')
	_, err = a.env.Stdout.Write(b)
	return err
}

// newTable returns a writer that aligns tab-separated columns; Flush it when done.
func newTable(w io.Writer) *tabwriter.Writer {
	return tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
}

// fields prints "Key:  value" lines, aligned, for get commands.
type fields struct{ tw *tabwriter.Writer }

func newFields(w io.Writer) *fields { return &fields{tw: tabwriter.NewWriter(w, 0, 4, 1, ' ', 0)} }

func (f *fields) add(key, format string, args ...any) {
	fmt.Fprintf(f.tw, "%s:\t%s\n", key, fmt.Sprintf(format, args...))
}

func (f *fields) flush() error { return f.tw.Flush() }

// resourceName turns "x" or "collection/x" into "collection/x"; anything else is a usage
// error naming what was expected.
func resourceName(collection, what, arg string) (string, error) {
	id, ok := strings.CutPrefix(arg, collection+"/")
	if !ok {
		id = arg
	}
	if id == "" || strings.Contains(id, "/") {
		return "", usageErrorf("%q is not %s: want ID or %s/ID", arg, what, collection)
	}
	return collection + "/" + id, nil
}

// shortName drops the collection from a resource name for narrow table columns.
func shortName(name string) string {
	if i := strings.LastIndexByte(name, '/'); i >= 0 {
		return name[i+1:]
	}
	return name
}

// orDash returns s, or "-" when it is empty, so that table cells never collapse.
func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// ago renders the age of ts at now like "45s ago", "3m ago", "5h ago", "2d ago".
func ago(now time.Time, ts *timestamppb.Timestamp) string {
	if ts == nil {
		return "-"
	}
	return humanDuration(now.Sub(ts.AsTime())) + " ago"
}

func humanDuration(d time.Duration) string {
	switch {
	case d < 0:
		return "0s"
	case d < 2*time.Minute:
		return fmt.Sprintf("%ds", int(d/time.Second))
	case d < 2*time.Hour:
		return fmt.Sprintf("%dm", int(d/time.Minute))
	case d < 48*time.Hour:
		return fmt.Sprintf("%dh", int(d/time.Hour))
	default:
		return fmt.Sprintf("%dd", int(d/(24*time.Hour)))
	}
}

// timestamp renders ts in local time with its age, or "-".
func timestamp(now time.Time, ts *timestamppb.Timestamp) string {
	if ts == nil {
		return "-"
	}
	return fmt.Sprintf("%s (%s)", ts.AsTime().Local().Format(time.RFC3339), ago(now, ts))
}

// duration renders d, or what an unset duration means.
func duration(d *durationpb.Duration, unset string) string {
	if d == nil {
		return unset
	}
	return d.AsDuration().String()
}

// compactJSON renders s on one line with sorted keys, for key fields; "-" when nil.
func compactJSON(s *structpb.Struct) string {
	if s == nil {
		return "-"
	}
	b, err := json.Marshal(s.AsMap())
	if err != nil {
		return fmt.Sprintf("<%v>", err)
	}
	return string(b)
}

// indentedJSON renders s across lines with sorted keys; "{}" when nil.
func indentedJSON(s *structpb.Struct) ([]byte, error) {
	if s == nil {
		return []byte("{}\n"), nil
	}
	b, err := json.MarshalIndent(s.AsMap(), "", "  ")
	if err != nil {
		return nil, err
	}
	return append(b, '\n'), nil
}

// parseObject parses text, the value of flag, as a JSON object.
func parseObject(flag string, text []byte) (*structpb.Struct, error) {
	s := &structpb.Struct{}
	if err := protojson.Unmarshal(text, s); err != nil {
		return nil, usageErrorf("%s: want a JSON object: %v", flag, err)
	}
	return s, nil
}

// readFileArg reads the file a flag names; "-" reads stdin.
func (a *app) readFileArg(flag, path string) ([]byte, error) {
	if path == "-" {
		b, err := io.ReadAll(a.env.Stdin)
		if err != nil {
			return nil, fmt.Errorf("%s: reading stdin: %w", flag, err)
		}
		return b, nil
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, usageErrorf("%s: %v", flag, err)
	}
	return b, nil
}
