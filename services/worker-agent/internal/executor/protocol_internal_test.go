package executor

import (
	"encoding/json"
	"math/rand/v2"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/stretchr/testify/require"
)

// The hand-written request encoder writes what json.Marshal writes, byte for byte.
func TestRequestEncodingMatchesEncodingJSON(t *testing.T) {
	t.Parallel()
	marshal := func(v any) json.RawMessage {
		b, err := json.Marshal(v)
		require.NoError(t, err)
		return b
	}
	index := 3
	base := request{Type: "step", ID: "req-17", Run: "runs/0b0c6f1e-8f0a-4b52-9d55-3f4f5c1c7a10", Step: "plan", Attempt: 2,
		State: marshal(map[string]any{"a": 1, "html": "<b>&</b>", "u": "é\u2028", "n": nil, "l": []any{1.5, "x"}}), Config: marshal(map[string]any{})}
	cases := []request{base, {Type: "step", ID: "req-1", Run: "runs/x", Step: "s", Attempt: 1}} // nil state and config: null
	withItem := base
	withItem.Item, withItem.Index = marshal(nil), &index // a null item is still sent
	cases = append(cases, withItem)
	withResume := base
	withResume.Resume, withResume.Epoch = marshal(map[string]any{"answer": "yes"}), 42
	cases = append(cases, withResume)
	negative := base
	negative.Attempt, negative.Epoch, negative.Index = -1, -9, new(int)
	cases = append(cases, negative)

	// Strings of every kind: each byte value, runes that need escapes, invalid UTF-8.
	rng := rand.New(rand.NewPCG(1, 2))
	alphabet := []string{"a", "Z", "0", " ", "-", "/", "\"", "\\", "<", ">", "&", "\x00", "\x1f", "\t", "\n", "\r", "\b", "\f",
		"\x7f", "é", "\u2028", "\u2029", "😀", "\xff", "\xc3", "\ufffd"}
	for b := range 256 {
		alphabet = append(alphabet, string([]byte{byte(b)}))
	}
	for range 2000 {
		var s []byte
		for range rng.IntN(12) {
			s = append(s, alphabet[rng.IntN(len(alphabet))]...)
		}
		r := base
		switch rng.IntN(4) {
		case 0:
			r.Type = string(s)
		case 1:
			r.ID = string(s)
		case 2:
			r.Run = string(s)
		default:
			r.Step = string(s)
		}
		cases = append(cases, r)
	}
	sawInvalid := false
	for _, r := range cases {
		want, err := json.Marshal(&r)
		require.NoError(t, err)
		require.Equal(t, string(want), string(r.appendJSON(nil)), "%+v", r)
		sawInvalid = sawInvalid || !utf8.ValidString(r.Type+r.ID+r.Run+r.Step)
	}
	require.True(t, sawInvalid, "the cases include invalid UTF-8")
}

// The reflection-free message decoder agrees with json.Unmarshal on every line it accepts,
// and accepts the lines executors write.
func TestMessageDecodingMatchesEncodingJSON(t *testing.T) {
	t.Parallel()
	keys := []string{"type", "id", "data", "state", "next", "prompt", "message", "retryable",
		"Type", "ID", "Id", "STATE", "ſtate", "Retryable", "unknown", "ty\\u0070e", "typé", ""}
	values := []string{`"result"`, `"event"`, `"req-1"`, `null`, `true`, `false`, `12`, `-1.5e3`, `{}`,
		`{"a":[1,{"b":"}"}],"c":"\\""}`, `[1,2]`, `"a\"b"`, `"é"`, `"\u00e9"`, `"x\ny"`, `""`, `[]`,
		`{"k":"v","n":null}`, "\"\xff\"", `"ok"`, `[{"x":[]},"]"]`}
	spaces := []string{"", " ", "\t", "\n ", "  "}
	rng := rand.New(rand.NewPCG(3, 4))
	sp := func() string { return spaces[rng.IntN(len(spaces))] }
	lines := []string{`{}`, `{"type":"result","id":"req-7","state":{}}`, `{"type":"event","id":"req-7","data":{"n":1}}`,
		`{"type":"error","id":"req-7","message":"boom","retryable":true}`, `{"type":"interrupt","id":"req-7","prompt":"?"}`,
		`{"type":"result","id":"req-7","state":{"a":[1,2,{"b":null}]},"next":"s2"}`, `{"type":"result","id":"req-7"} x`,
		`{"type":"result",}`, `{"type" "result"}`, `{"type":"result"`, `{"type":"result","id":"a","id":null}`}
	for range 5000 {
		var b strings.Builder
		b.WriteString("{" + sp())
		for i := range rng.IntN(6) {
			if i > 0 {
				b.WriteString(sp() + "," + sp())
			}
			b.WriteString(`"` + keys[rng.IntN(len(keys))] + `"` + sp() + ":" + sp() + values[rng.IntN(len(values))])
		}
		b.WriteString(sp() + "}")
		lines = append(lines, b.String())
	}
	accepted := 0
	for _, line := range lines {
		var fast, slow message
		ok := fast.decode([]byte(line))
		err := json.Unmarshal([]byte(line), &slow)
		if !ok {
			continue
		}
		accepted++
		require.NoError(t, err, "accepted %s", line)
		require.Equal(t, slow, fast, "decoding %s", line)
	}
	t.Logf("accepted %d of %d", accepted, len(lines))
	require.Greater(t, accepted, len(lines)/10, "the decoder takes the usual lines")
	var m message
	require.True(t, m.decode([]byte(`{"type":"result","id":"req-7","state":{"x":"y"}}`)))
}
