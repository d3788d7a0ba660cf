package cli

import (
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/fieldmaskpb"
	"google.golang.org/protobuf/types/known/structpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	agentserverv1 "github.com/agentserver/agentserver/gen/agentserver/v1"
)

const testFlow = "executors:\n  - name: echo\n    command: [\"cat\"]\n"

func writeFile(t *testing.T, name, text string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), name)
	require.NoError(t, os.WriteFile(path, []byte(text), 0o600))
	return path
}

func TestAssistantsCreateMapsEveryFlag(t *testing.T) {
	t.Parallel()
	h := newHarness(t, &fakeAPI{})
	h.env[EnvAPIKey] = "secret-key"
	flow := writeFile(t, "flow.yaml", testFlow)

	res := h.run("assistants", "create", "--flow", flow, "--id", "assistants/summarizer",
		"--display-name", "Summarizer", "--slot-type", "gpu", "--priority", "7",
		"--concurrency-limit", "2", "--timeout", "30s", "--max-attempts", "3",
		"--config", `{"model":"small","temperature":0.5}`)

	require.Equal(t, ExitOK, res.code, res.stderr)
	require.Equal(t, "created assistants/summarizer (version 1)\n", res.stdout)
	cfg, err := structpb.NewStruct(map[string]any{"model": "small", "temperature": 0.5})
	require.NoError(t, err)
	requireProtoEqual(t, &agentserverv1.CreateAssistantRequest{
		AssistantId: "summarizer",
		Assistant: &agentserverv1.Assistant{
			DisplayName:      "Summarizer",
			Flow:             testFlow,
			SlotType:         "gpu",
			Priority:         7,
			ConcurrencyLimit: 2,
			Timeout:          durationpb.New(30 * time.Second),
			MaxAttempts:      3,
			Config:           cfg,
		},
	}, only[*agentserverv1.CreateAssistantRequest](t, h.fake, "CreateAssistant"))
	require.Equal(t, []string{"Bearer secret-key"}, h.fake.auth(0))
}

func TestAssistantsCreateReadsFlowFromStdinAndSendsNoKeyByDefault(t *testing.T) {
	t.Parallel()
	h := newHarness(t, &fakeAPI{})
	h.stdin = testFlow

	res := h.run("assistants", "create", "--flow", "-")

	require.Equal(t, ExitOK, res.code, res.stderr)
	req := only[*agentserverv1.CreateAssistantRequest](t, h.fake, "CreateAssistant")
	require.Equal(t, testFlow, req.GetAssistant().GetFlow())
	require.Empty(t, req.GetAssistantId())
	require.Empty(t, h.fake.auth(0))
}

func TestAssistantsCreateRequiresFlow(t *testing.T) {
	t.Parallel()
	h := newHarness(t, &fakeAPI{})

	res := h.run("assistants", "create", "--id", "x")

	require.Equal(t, ExitUsage, res.code)
	require.Contains(t, res.stderr, "--flow is required")
	require.Empty(t, h.fake.methods())
}

func TestAssistantsUpdateMaskHasExactlyTheGivenFlags(t *testing.T) {
	t.Parallel()
	flow := writeFile(t, "flow.yaml", testFlow)
	tests := []struct {
		name string
		args []string
		want *agentserverv1.UpdateAssistantRequest
	}{
		{
			name: "zero values are sent, in proto field order",
			args: []string{"assistants", "update", "summarizer", "--priority", "0", "--flow", flow, "--display-name", "New"},
			want: &agentserverv1.UpdateAssistantRequest{
				Assistant:  &agentserverv1.Assistant{Name: "assistants/summarizer", DisplayName: "New", Flow: testFlow},
				UpdateMask: &fieldmaskpb.FieldMask{Paths: []string{"display_name", "flow", "priority"}},
			},
		},
		{
			name: "timeout 0 clears the timeout",
			args: []string{"assistants", "update", "assistants/summarizer", "--timeout", "0", "--concurrency-limit", "4"},
			want: &agentserverv1.UpdateAssistantRequest{
				Assistant:  &agentserverv1.Assistant{Name: "assistants/summarizer", ConcurrencyLimit: 4},
				UpdateMask: &fieldmaskpb.FieldMask{Paths: []string{"concurrency_limit", "timeout"}},
			},
		},
		{
			name: "slot type, max attempts, timeout and config",
			args: []string{"assistants", "update", "summarizer", "--slot-type", "cpu", "--max-attempts", "5", "--timeout", "1m", "--config", "{}"},
			want: &agentserverv1.UpdateAssistantRequest{
				Assistant: &agentserverv1.Assistant{
					Name: "assistants/summarizer", SlotType: "cpu", MaxAttempts: 5,
					Timeout: durationpb.New(time.Minute), Config: &structpb.Struct{},
				},
				UpdateMask: &fieldmaskpb.FieldMask{Paths: []string{"slot_type", "timeout", "max_attempts", "config"}},
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			h := newHarness(t, &fakeAPI{})
			res := h.run(tt.args...)
			require.Equal(t, ExitOK, res.code, res.stderr)
			require.Contains(t, res.stdout, "updated assistants/summarizer (version 2)")
			requireProtoEqual(t, tt.want, only[*agentserverv1.UpdateAssistantRequest](t, h.fake, "UpdateAssistant"))
		})
	}
}

func TestAssistantsUpdateWithoutFlagsIsAUsageError(t *testing.T) {
	t.Parallel()
	h := newHarness(t, &fakeAPI{})

	res := h.run("assistants", "update", "summarizer")

	require.Equal(t, ExitUsage, res.code)
	require.Contains(t, res.stderr, "nothing to update")
	require.Contains(t, res.stderr, "agentctl assistants update --help")
	require.Empty(t, h.fake.methods())
}

func testAssistant() *agentserverv1.Assistant {
	return &agentserverv1.Assistant{
		Name:        "assistants/summarizer",
		DisplayName: "Summarizer",
		Flow:        testFlow,
		SlotType:    "gpu",
		Priority:    3,
		Timeout:     durationpb.New(5 * time.Minute),
		Version:     4,
		CreateTime:  timestamppb.New(testNow.Add(-48 * time.Hour)),
		UpdateTime:  timestamppb.New(testNow.Add(-90 * time.Second)),
	}
}

func TestAssistantsGet(t *testing.T) {
	t.Parallel()
	h := newHarness(t, &fakeAPI{assistant: testAssistant()})

	res := h.run("assistants", "get", "summarizer")

	require.Equal(t, ExitOK, res.code, res.stderr)
	requireProtoEqual(t, &agentserverv1.GetAssistantRequest{Name: "assistants/summarizer"},
		only[*agentserverv1.GetAssistantRequest](t, h.fake, "GetAssistant"))
	require.Contains(t, res.stdout, "Name:              assistants/summarizer\n")
	require.Contains(t, res.stdout, "Version:           4\n")
	require.Contains(t, res.stdout, "Concurrency limit: unlimited\n")
	require.Contains(t, res.stdout, "Timeout:           5m0s\n")
	require.Contains(t, res.stdout, "(90s ago)")
	require.Contains(t, res.stdout, "Flow:\n  executors:\n    - name: echo\n")
}

func TestAssistantsGetJSONParsesBack(t *testing.T) {
	t.Parallel()
	h := newHarness(t, &fakeAPI{assistant: testAssistant()})

	res := h.run("-o", "json", "assistants", "get", "assistants/summarizer")

	require.Equal(t, ExitOK, res.code, res.stderr)
	var got agentserverv1.Assistant
	require.NoError(t, protojson.Unmarshal([]byte(res.stdout), &got))
	requireProtoEqual(t, testAssistant(), &got)
	require.Contains(t, res.stdout, `"displayName"`, "lowerCamelCase like the REST API")
}

func TestAssistantsListAndDelete(t *testing.T) {
	t.Parallel()
	other := &agentserverv1.Assistant{Name: "assistants/tiny", Version: 1, ConcurrencyLimit: 2}
	h := newHarness(t, &fakeAPI{assistantPages: map[string]*agentserverv1.ListAssistantsResponse{
		"": {Assistants: []*agentserverv1.Assistant{testAssistant(), other}},
	}})

	res := h.run("assistants", "list")
	require.Equal(t, ExitOK, res.code, res.stderr)
	require.Equal(t, ""+
		"ID          DISPLAY NAME  VERSION  SLOT  PRIORITY  CONCURRENCY  TIMEOUT  UPDATED\n"+
		"summarizer  Summarizer    4        gpu   3         unlimited    5m0s     90s ago\n"+
		"tiny        -             1        -     0         2            default  -\n", res.stdout)

	res = h.run("assistants", "delete", "tiny")
	require.Equal(t, ExitOK, res.code, res.stderr)
	require.Equal(t, "deleted assistants/tiny\n", res.stdout)
	requireProtoEqual(t, &agentserverv1.DeleteAssistantRequest{Name: "assistants/tiny"},
		only[*agentserverv1.DeleteAssistantRequest](t, h.fake, "DeleteAssistant"))

	res = h.run("assistants", "delete", "tiny", "-o", "json")
	require.Equal(t, ExitOK, res.code, res.stderr)
	require.JSONEq(t, "{}", res.stdout)
}
