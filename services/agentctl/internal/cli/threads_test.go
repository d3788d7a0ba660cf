package cli

import (
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/types/known/timestamppb"

	agentserverv1 "github.com/agentserver/agentserver/gen/agentserver/v1"
)

func TestThreadsCreate(t *testing.T) {
	t.Parallel()
	h := newHarness(t, &fakeAPI{})

	res := h.run("threads", "create", "--state", `{"history": []}`, "--metadata", `{"user": "ada"}`)

	require.Equal(t, ExitOK, res.code, res.stderr)
	require.Equal(t, "created threads/t1\n", res.stdout)
	require.Equal(t, "run on it with: agentctl runs create --assistant ID --thread t1\n", res.stderr)
	requireProtoEqual(t, &agentserverv1.CreateThreadRequest{
		Thread: &agentserverv1.Thread{Metadata: mustStruct(t, map[string]any{"user": "ada"})},
		State:  mustStruct(t, map[string]any{"history": []any{}}),
	}, only[*agentserverv1.CreateThreadRequest](t, h.fake, "CreateThread"))
}

func TestThreadsCreateWithNothingAndFromStdin(t *testing.T) {
	t.Parallel()
	h := newHarness(t, &fakeAPI{})

	res := h.run("threads", "create", "-o", "json")
	require.Equal(t, ExitOK, res.code, res.stderr)
	var got agentserverv1.Thread
	require.NoError(t, protojson.Unmarshal([]byte(res.stdout), &got))
	require.Equal(t, "threads/t1", got.GetName())

	h.stdin = `{"n": 1}`
	res = h.run("threads", "create", "--state-file", "-")
	require.Equal(t, ExitOK, res.code, res.stderr)

	reqs := h.fake.requests("CreateThread")
	require.Len(t, reqs, 2)
	requireProtoEqual(t, &agentserverv1.CreateThreadRequest{Thread: &agentserverv1.Thread{}}, reqs[0])
	requireProtoEqual(t, &agentserverv1.CreateThreadRequest{
		Thread: &agentserverv1.Thread{}, State: mustStruct(t, map[string]any{"n": 1}),
	}, reqs[1])
}

func TestThreadsCreateUsageErrors(t *testing.T) {
	t.Parallel()
	tests := []struct {
		args []string
		want string
	}{
		{[]string{"--state", "[1]"}, "--state: want a JSON object"},
		{[]string{"--metadata", "x"}, "--metadata: want a JSON object"},
		{[]string{"--state", "{}", "--state-file", "-"}, "not both"},
		{[]string{"extra"}, "takes no arguments"},
	}
	for _, tt := range tests {
		t.Run(strings.Join(tt.args, " "), func(t *testing.T) {
			t.Parallel()
			h := newHarness(t, &fakeAPI{})
			res := h.run(append([]string{"threads", "create"}, tt.args...)...)
			require.Equal(t, ExitUsage, res.code, res.stderr)
			require.Contains(t, res.stderr, tt.want)
			require.Empty(t, h.fake.methods())
		})
	}
}

func listedThread(i int, active string) *agentserverv1.Thread {
	return &agentserverv1.Thread{
		Name:       "threads/t" + string(rune('0'+i)),
		ActiveRun:  active,
		CreateTime: timestamppb.New(testNow.Add(-time.Duration(i) * time.Hour)),
		UpdateTime: timestamppb.New(testNow.Add(-time.Duration(i) * time.Minute)),
	}
}

func TestThreadsGetListDelete(t *testing.T) {
	t.Parallel()
	thread := listedThread(1, "runs/r7")
	thread.Metadata = mustStruct(t, map[string]any{"user": "ada"})
	h := newHarness(t, &fakeAPI{thread: thread, threadPages: map[string]*agentserverv1.ListThreadsResponse{
		"":   {Threads: []*agentserverv1.Thread{listedThread(1, "runs/r7")}, NextPageToken: "p2"},
		"p2": {Threads: []*agentserverv1.Thread{listedThread(2, "")}},
	}})

	res := h.run("threads", "get", "t1")
	require.Equal(t, ExitOK, res.code, res.stderr)
	requireProtoEqual(t, &agentserverv1.GetThreadRequest{Name: "threads/t1"}, only[*agentserverv1.GetThreadRequest](t, h.fake, "GetThread"))
	for _, want := range []string{
		"Name:       threads/t1\n",
		"Active run: runs/r7\n",
		"(60m ago)",
		`Metadata:   {"user":"ada"}` + "\n",
	} {
		require.Contains(t, res.stdout, want)
	}

	res = h.run("threads", "list", "--all")
	require.Equal(t, ExitOK, res.code, res.stderr)
	require.Equal(t, ""+
		"ID  ACTIVE RUN  CREATED  UPDATED\n"+
		"t1  r7          60m ago  60s ago\n"+
		"t2  -           2h ago   2m ago\n", res.stdout)
	require.Len(t, h.fake.requests("ListThreads"), 2)

	res = h.run("thread", "list", "-o", "json")
	require.Equal(t, ExitOK, res.code, res.stderr)
	var page agentserverv1.ListThreadsResponse
	require.NoError(t, protojson.Unmarshal([]byte(res.stdout), &page))
	require.Equal(t, "p2", page.GetNextPageToken())

	res = h.run("threads", "delete", "threads/t1")
	require.Equal(t, ExitOK, res.code, res.stderr)
	require.Equal(t, "deleted threads/t1\n", res.stdout)
	requireProtoEqual(t, &agentserverv1.DeleteThreadRequest{Name: "threads/t1"}, only[*agentserverv1.DeleteThreadRequest](t, h.fake, "DeleteThread"))
}

func TestThreadsState(t *testing.T) {
	t.Parallel()
	st := &agentserverv1.ThreadState{
		Thread:     "threads/t1",
		Values:     mustStruct(t, map[string]any{"history": []any{"hi"}, "count": 1}),
		Run:        "runs/r9",
		UpdateTime: timestamppb.New(testNow.Add(-5 * time.Minute)),
	}
	h := newHarness(t, &fakeAPI{threadState: st})

	res := h.run("threads", "state", "t1")

	require.Equal(t, ExitOK, res.code, res.stderr)
	require.JSONEq(t, `{"history": ["hi"], "count": 1}`, res.stdout)
	require.Equal(t, "written by runs/r9 5m ago\n", res.stderr)
	requireProtoEqual(t, &agentserverv1.GetThreadStateRequest{Name: "threads/t1"},
		only[*agentserverv1.GetThreadStateRequest](t, h.fake, "GetThreadState"))

	res = h.run("threads", "state", "t1", "-o", "json")
	require.Equal(t, ExitOK, res.code, res.stderr)
	var got agentserverv1.ThreadState
	require.NoError(t, protojson.Unmarshal([]byte(res.stdout), &got))
	requireProtoEqual(t, st, &got)
}

func TestThreadsNotFoundSaysHowToList(t *testing.T) {
	t.Parallel()
	h := newHarness(t, &fakeAPI{})

	res := h.run("threads", "state", "nope")

	require.Equal(t, ExitFailure, res.code)
	require.Contains(t, res.stderr, "Error: NotFound: threads/nope not found")
	require.Contains(t, res.stderr, "`agentctl threads list` shows what exists")
}
