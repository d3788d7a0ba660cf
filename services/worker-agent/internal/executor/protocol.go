package executor

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strconv"
	"unicode/utf8"

	"github.com/agentserver/agentserver/pkg/jsonenc"
)

// request is the worker → executor line of protocol v1.
type request struct {
	Type    string          `json:"type"`
	ID      string          `json:"id"`
	Run     string          `json:"run"`
	Step    string          `json:"step"`
	Attempt int             `json:"attempt"`
	State   json.RawMessage `json:"state"`
	Config  json.RawMessage `json:"config"`
	// Item and Index are set for the items of a map step; Item may be JSON null.
	Item  json.RawMessage `json:"item,omitempty"`
	Index *int            `json:"index,omitempty"`
	// Resume is set when an interrupted step is called again; it may be JSON null.
	Resume json.RawMessage `json:"resume,omitempty"`
	// Epoch is the fencing epoch of the worker's claim of the run (optional v1 extension):
	// executions of one run with different epochs are different claims.
	Epoch int64 `json:"epoch,omitempty"`
}

// appendJSON appends req as json.Marshal encodes it, byte for byte, without reflection (the
// reflective encoder was ~2.5 % of the all-in-one server's CPU in a burn-down). The raw
// fields must hold what json.Marshal produced (compact, valid, HTML-escaped), as every
// caller's do; a nil State is null, as json.Marshal writes a nil RawMessage.
func (req *request) appendJSON(b []byte) []byte {
	b = append(b, `{"type":`...)
	b = jsonenc.AppendString(b, req.Type)
	b = append(b, `,"id":`...)
	b = jsonenc.AppendString(b, req.ID)
	b = append(b, `,"run":`...)
	b = jsonenc.AppendString(b, req.Run)
	b = append(b, `,"step":`...)
	b = jsonenc.AppendString(b, req.Step)
	b = append(b, `,"attempt":`...)
	b = strconv.AppendInt(b, int64(req.Attempt), 10)
	b = append(b, `,"state":`...)
	b = appendRaw(b, req.State)
	b = append(b, `,"config":`...)
	b = appendRaw(b, req.Config)
	if len(req.Item) > 0 {
		b = append(b, `,"item":`...)
		b = append(b, req.Item...)
	}
	if req.Index != nil {
		b = append(b, `,"index":`...)
		b = strconv.AppendInt(b, int64(*req.Index), 10)
	}
	if len(req.Resume) > 0 {
		b = append(b, `,"resume":`...)
		b = append(b, req.Resume...)
	}
	if req.Epoch != 0 {
		b = append(b, `,"epoch":`...)
		b = strconv.AppendInt(b, req.Epoch, 10)
	}
	return append(b, '}')
}

// line is req as the line written to the executor's stdin, newline included.
func (req *request) line() []byte {
	return append(req.appendJSON(make([]byte, 0, 256+len(req.State)+len(req.Config)+len(req.Item)+len(req.Resume))), '\n')
}

func appendRaw(b []byte, raw json.RawMessage) []byte {
	if raw == nil {
		return append(b, "null"...)
	}
	return append(b, raw...)
}

// message is any executor → worker line of protocol v1. Unknown fields are ignored so that v1
// can grow optional fields.
type message struct {
	Type      string          `json:"type"`
	ID        *string         `json:"id"`
	Data      json.RawMessage `json:"data"`
	State     json.RawMessage `json:"state"`
	Next      *string         `json:"next"`
	Prompt    json.RawMessage `json:"prompt"`
	Message   *string         `json:"message"`
	Retryable *bool           `json:"retryable"`
}

const (
	typeEvent     = "event"
	typeResult    = "result"
	typeInterrupt = "interrupt"
	typeError     = "error"
)

// reply is the executor's answer to one request.
type reply struct {
	kind string // typeResult, typeInterrupt or typeError
	// state is the result's raw state; nil when the executor sent none.
	state     json.RawMessage
	next      string
	prompt    any
	message   string
	retryable bool
}

// protocolError is output that breaks protocol v1.
type protocolError struct {
	what string
	line []byte
}

func (e *protocolError) Error() string {
	if e.line == nil {
		return e.what
	}
	return e.what + ": " + snippet(e.line)
}

// parseMessage decodes one stdout line answering request id. It returns the event data for an
// event (never nil) or the reply for a final message.
func parseMessage(line []byte, id string) (data map[string]any, rep *reply, err error) {
	got, data, rep, err := parseAnyMessage(line)
	if (err == nil || got != "") && got != id {
		return nil, nil, &protocolError{what: fmt.Sprintf("message answers id %q, but the request in flight is %q", got, id), line: line}
	}
	return data, rep, err
}

// parseAnyMessage decodes one stdout line and returns the request id it answers, and the
// event data for an event (never nil) or the reply for a final message.
func parseAnyMessage(line []byte) (id string, data map[string]any, rep *reply, err error) {
	var m message
	trimmed := bytes.TrimSpace(line)
	if len(trimmed) == 0 || trimmed[0] != '{' {
		return "", nil, nil, &protocolError{what: "output is not a JSON object", line: line}
	}
	if !m.decode(trimmed) {
		m = message{}
		if err := json.Unmarshal(trimmed, &m); err != nil {
			return "", nil, nil, &protocolError{what: fmt.Sprintf("output is not a protocol v1 message (%v)", err), line: line}
		}
	}
	if m.ID == nil {
		return "", nil, nil, &protocolError{what: "message has no id", line: line}
	}
	data, rep, err = m.interpret(line)
	return *m.ID, data, rep, err
}

// interpret turns a decoded message with an id into event data or a reply.
func (m *message) interpret(line []byte) (data map[string]any, rep *reply, err error) {
	switch m.Type {
	case typeEvent:
		data = map[string]any{}
		if !isNull(m.Data) {
			if err := json.Unmarshal(m.Data, &data); err != nil {
				return nil, nil, &protocolError{what: "event data must be a JSON object", line: line}
			}
		}
		return data, nil, nil
	case typeResult:
		rep = &reply{kind: typeResult}
		if !isNull(m.State) {
			rep.state = m.State
		}
		if m.Next != nil {
			rep.next = *m.Next
		}
		return nil, rep, nil
	case typeInterrupt:
		rep = &reply{kind: typeInterrupt}
		if !isNull(m.Prompt) {
			if err := json.Unmarshal(m.Prompt, &rep.prompt); err != nil {
				return nil, nil, &protocolError{what: "interrupt prompt is not valid JSON", line: line}
			}
		}
		return nil, rep, nil
	case typeError:
		rep = &reply{kind: typeError, message: "executor reported an error without a message"}
		if m.Message != nil && *m.Message != "" {
			rep.message = *m.Message
		}
		if m.Retryable != nil {
			rep.retryable = *m.Retryable
		}
		return nil, rep, nil
	case "":
		return nil, nil, &protocolError{what: "message has no type", line: line}
	default:
		return nil, nil, &protocolError{what: fmt.Sprintf("message has unknown type %q", m.Type), line: line}
	}
}

// decode fills m from the JSON object data as json.Unmarshal would, without reflection, for
// the lines executors write: valid JSON whose keys and whose string values for m's string
// fields are plain ASCII without escapes, and whose fields have the types m asks. It
// reports false, leaving m partly filled, for anything else; the caller then runs
// json.Unmarshal on a fresh message, which decodes it or says what is wrong. (The
// reflective decode was ~4 % of the all-in-one server's CPU in a burn-down.)
func (m *message) decode(data []byte) bool {
	if !json.Valid(data) {
		return false
	}
	i := skipSpace(data, 1) // data[0] is '{'
	if data[i] == '}' {
		return true
	}
	for {
		// data is valid JSON: a key string, a colon, a value, then ',' or '}'.
		key, end, ok := plainString(data, i)
		if !ok {
			return false
		}
		i = skipSpace(data, skipSpace(data, end)+1)
		vend := skipValue(data, i)
		if !m.set(key, data[i:vend]) {
			return false
		}
		i = skipSpace(data, vend)
		if data[i] == '}' {
			return true
		}
		i = skipSpace(data, i+1)
	}
}

// set stores the value v of key as json.Unmarshal would: keys match m's fields regardless
// of case (as bytes.EqualFold, which is encoding/json's rule), a later key wins, null
// leaves a string alone and clears a pointer, a raw field keeps the value's bytes (null
// too), and unknown keys are ignored. It reports false for a value of another type, or a
// string it does not decode itself.
func (m *message) set(key, v []byte) bool {
	str := func(dst **string) bool {
		if v[0] == 'n' {
			*dst = nil
			return true
		}
		b, _, ok := plainString(v, 0)
		if !ok {
			return false
		}
		s := string(b)
		*dst = &s
		return true
	}
	raw := func(dst *json.RawMessage) bool {
		*dst = append((*dst)[:0], v...)
		return true
	}
	switch {
	case bytes.EqualFold(key, []byte("type")):
		if v[0] == 'n' {
			return true
		}
		b, _, ok := plainString(v, 0)
		m.Type = string(b)
		return ok
	case bytes.EqualFold(key, []byte("id")):
		return str(&m.ID)
	case bytes.EqualFold(key, []byte("next")):
		return str(&m.Next)
	case bytes.EqualFold(key, []byte("message")):
		return str(&m.Message)
	case bytes.EqualFold(key, []byte("data")):
		return raw(&m.Data)
	case bytes.EqualFold(key, []byte("state")):
		return raw(&m.State)
	case bytes.EqualFold(key, []byte("prompt")):
		return raw(&m.Prompt)
	case bytes.EqualFold(key, []byte("retryable")):
		switch v[0] {
		case 'n':
			m.Retryable = nil
		case 't', 'f':
			b := v[0] == 't'
			m.Retryable = &b
		default:
			return false
		}
	}
	return true
}

// plainString returns the contents of the JSON string starting at data[i] and the index
// after it, when it is printable ASCII without escapes (ok false otherwise, or when data[i]
// does not start a string).
func plainString(data []byte, i int) (s []byte, end int, ok bool) {
	if data[i] != '"' {
		return nil, 0, false
	}
	for j := i + 1; j < len(data); j++ {
		switch c := data[j]; {
		case c == '"':
			return data[i+1 : j], j + 1, true
		case c == '\\' || c >= utf8.RuneSelf:
			return nil, 0, false
		}
	}
	return nil, 0, false
}

func skipSpace(data []byte, i int) int {
	for i < len(data) && (data[i] == ' ' || data[i] == '\t' || data[i] == '\n' || data[i] == '\r') {
		i++
	}
	return i
}

// skipValue returns the index after the JSON value starting at data[i]; data is valid JSON.
func skipValue(data []byte, i int) int {
	depth := 0
	for ; i < len(data); i++ {
		switch data[i] {
		case '"':
			for i++; data[i] != '"'; i++ {
				if data[i] == '\\' {
					i++
				}
			}
			if depth == 0 {
				return i + 1
			}
		case '{', '[':
			depth++
		case '}', ']':
			if depth == 0 {
				return i // the end of the enclosing object
			}
			if depth--; depth == 0 {
				return i + 1
			}
		case ',', ' ', '\t', '\n', '\r':
			if depth == 0 {
				return i
			}
		}
	}
	return i
}

func isNull(raw json.RawMessage) bool {
	t := bytes.TrimSpace(raw)
	return len(t) == 0 || string(t) == "null"
}

// snippetBytes bounds how much of a bad line an error message quotes.
const snippetBytes = 200

// snippet quotes the start of b for an error message.
func snippet(b []byte) string {
	if len(b) <= snippetBytes {
		return strconv.Quote(string(b))
	}
	cut := snippetBytes
	for cut > 0 && !utf8.RuneStart(b[cut]) {
		cut--
	}
	return strconv.Quote(string(b[:cut])) + fmt.Sprintf("… (%d bytes)", len(b))
}

var errLineTooLong = errors.New("line too long")

// readLine reads the next line, without its "\n" or "\r\n". A line longer than max bytes is cut to
// its first max bytes: with discardRest the rest of the line is consumed and truncated is true;
// without it readLine stops there and returns errLineTooLong. A last line with no newline is
// returned before io.EOF.
func readLine(br *bufio.Reader, max int, discardRest bool) (line []byte, truncated bool, err error) {
	n := 0
	for {
		frag, e := br.ReadSlice('\n')
		complete := e == nil
		if complete {
			frag = frag[:len(frag)-1]
		}
		if room := max - len(line); room > 0 {
			line = append(line, frag[:min(room, len(frag))]...)
		}
		n += len(frag)
		if n > max {
			truncated = true
			if !discardRest {
				return line, true, errLineTooLong
			}
		}
		switch {
		case complete, e == io.EOF && n > 0:
			if !truncated {
				line = bytes.TrimSuffix(line, []byte("\r"))
			}
			if line == nil {
				line = []byte{}
			}
			return line, truncated, nil
		case errors.Is(e, bufio.ErrBufferFull):
			continue
		default:
			return nil, false, e
		}
	}
}
