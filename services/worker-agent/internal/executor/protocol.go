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
	b = appendJSONString(b, req.Type)
	b = append(b, `,"id":`...)
	b = appendJSONString(b, req.ID)
	b = append(b, `,"run":`...)
	b = appendJSONString(b, req.Run)
	b = append(b, `,"step":`...)
	b = appendJSONString(b, req.Step)
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

func appendRaw(b []byte, raw json.RawMessage) []byte {
	if raw == nil {
		return append(b, "null"...)
	}
	return append(b, raw...)
}

// appendJSONString appends s as a JSON string as json.Marshal writes it: directly when it is
// printable ASCII that needs no escape (names, ids), else through json.Marshal.
func appendJSONString(b []byte, s string) []byte {
	for i := 0; i < len(s); i++ {
		if c := s[i]; c < 0x20 || c >= utf8.RuneSelf || c == '"' || c == '\\' || c == '<' || c == '>' || c == '&' {
			q, _ := json.Marshal(s) // a string always encodes
			return append(b, q...)
		}
	}
	b = append(b, '"')
	b = append(b, s...)
	return append(b, '"')
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
	var m message
	trimmed := bytes.TrimSpace(line)
	if len(trimmed) == 0 || trimmed[0] != '{' {
		return nil, nil, &protocolError{what: "output is not a JSON object", line: line}
	}
	if err := json.Unmarshal(trimmed, &m); err != nil {
		return nil, nil, &protocolError{what: fmt.Sprintf("output is not a protocol v1 message (%v)", err), line: line}
	}
	if m.ID == nil {
		return nil, nil, &protocolError{what: "message has no id", line: line}
	}
	if *m.ID != id {
		return nil, nil, &protocolError{what: fmt.Sprintf("message answers id %q, but the request in flight is %q", *m.ID, id), line: line}
	}
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
