package flow

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"

	"gopkg.in/yaml.v3"
)

// MaxSourceBytes is the largest flow text Parse accepts.
const MaxSourceBytes = 1 << 20

const (
	// maxVisits bounds the nodes the validator walks, so that aliases repeating a large anchor
	// many times (a "billion laughs" document) cost bounded time and memory.
	maxVisits = 200_000
	// maxErrors bounds the problems collected; the rest are summarised in one last error.
	maxErrors = 200
	// reservedEnvPrefix names the variables the worker sets itself for every replica.
	reservedEnvPrefix = "AGENTSERVER_"
)

var (
	nameRE    = regexp.MustCompile(`^[a-z0-9][a-z0-9_-]{0,62}$`)
	envNameRE = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*$`)
	// yamlLineRE extracts the line from yaml.v3 syntax errors, which carry no column.
	yamlLineRE = regexp.MustCompile(`^yaml: line (\d+): (.*)$`)
)

const (
	ruleName     = "must match [a-z0-9][a-z0-9_-]{0,62} (lower-case letters, digits, '-' and '_')"
	ruleRequired = "is required"
	ruleString   = "must be a string"
	ruleCommand  = "must be a non-empty list of strings"
	ruleMemory   = "must be a positive quantity of bytes such as 512Mi, 2Gi or 1048576"
	ruleWorkdir  = "must be a relative path inside the worker's working directory"
)

// Parse parses and validates a flow's YAML text.
//
// On failure the error is an Errors holding every problem found, sorted by position; each
// names the field path, the rule it breaks and its line:column, e.g.
// `flow.yaml:4:14: executors[0].command: must be a non-empty list of strings`.
// Unknown fields are errors. On success the flow is valid and MaxSteps is set.
func Parse(src []byte) (*Flow, error) {
	if len(bytes.TrimSpace(src)) == 0 {
		return nil, Errors{{Field: "flow", Rule: "must not be empty"}}
	}
	if len(src) > MaxSourceBytes {
		return nil, Errors{{Field: "flow", Rule: fmt.Sprintf("must be at most %d bytes", MaxSourceBytes)}}
	}
	root, errs := decodeDocument(src)
	if errs != nil {
		return nil, errs
	}
	p := &parser{}
	f := p.flow(root)
	if len(p.errs) > 0 {
		p.errs.sort()
		if p.dropped > 0 {
			p.errs = append(p.errs, &Error{Field: "flow", Rule: fmt.Sprintf("%d more problems not listed", p.dropped)})
		}
		return nil, p.errs
	}
	return f, nil
}

// decodeDocument parses src into the root node of its single YAML document.
func decodeDocument(src []byte) (root *yaml.Node, errs Errors) {
	// The YAML library is third-party code fed untrusted text: a panic in it must be a parse
	// error, never a crashed gateway. Our own validation runs outside this recover.
	defer func() {
		if r := recover(); r != nil {
			root, errs = nil, Errors{{Rule: fmt.Sprintf("invalid YAML: %v", r)}}
		}
	}()
	dec := yaml.NewDecoder(bytes.NewReader(src))
	var doc yaml.Node
	if err := dec.Decode(&doc); err != nil {
		if errors.Is(err, io.EOF) {
			return nil, Errors{{Field: "flow", Rule: "must not be empty"}}
		}
		return nil, Errors{syntaxError(err)}
	}
	var extra yaml.Node
	switch err := dec.Decode(&extra); {
	case errors.Is(err, io.EOF):
	case err != nil:
		return nil, Errors{syntaxError(err)}
	default:
		at := &extra
		if len(extra.Content) > 0 {
			at = extra.Content[0]
		}
		return nil, Errors{{Line: at.Line, Column: at.Column, Field: "flow", Rule: "must be a single YAML document"}}
	}
	if doc.Kind != yaml.DocumentNode || len(doc.Content) == 0 {
		return nil, Errors{{Field: "flow", Rule: "must not be empty"}}
	}
	return doc.Content[0], nil
}

func syntaxError(err error) *Error {
	msg := err.Error()
	if m := yamlLineRE.FindStringSubmatch(msg); m != nil {
		line, _ := strconv.Atoi(m[1])
		return &Error{Line: line, Rule: "invalid YAML: " + m[2]}
	}
	return &Error{Rule: "invalid YAML: " + strings.TrimPrefix(msg, "yaml: ")}
}

type parser struct {
	errs    Errors
	dropped int
	visits  int
	aborted bool
}

func (p *parser) fail(at *yaml.Node, field, rule string) {
	if p.aborted {
		return
	}
	if len(p.errs) >= maxErrors {
		p.dropped++
		return
	}
	p.errs = append(p.errs, &Error{Line: at.Line, Column: at.Column, Field: field, Rule: rule})
}

// visit counts a node walked and reports false once the walk has grown too large.
func (p *parser) visit(at *yaml.Node) bool {
	if p.aborted {
		return false
	}
	p.visits++
	if p.visits > maxVisits {
		p.aborted = true
		// The problems found so far are mostly the expansion repeating itself: report only this.
		p.errs = Errors{&Error{Line: at.Line, Column: at.Column, Field: "flow", Rule: fmt.Sprintf("is too large once aliases are expanded (more than %d nodes)", maxVisits)}}
		p.dropped = 0
		return false
	}
	return true
}

// deref follows aliases to the node they name.
func deref(n *yaml.Node) *yaml.Node {
	for i := 0; n.Kind == yaml.AliasNode && n.Alias != nil && i < 32; i++ {
		n = n.Alias
	}
	return n
}

func isNull(n *yaml.Node) bool {
	d := deref(n)
	return d.Kind == yaml.ScalarNode && d.ShortTag() == "!!null"
}

func join(path, field string) string {
	if path == "" {
		return field
	}
	return path + "." + field
}

func index(path string, i int) string { return fmt.Sprintf("%s[%d]", path, i) }

func display(path string) string {
	if path == "" {
		return "flow"
	}
	return path
}

// entry is one key and its value in a mapping; value is nil-free and may be an alias.
type entry struct {
	key, value *yaml.Node
}

// mapping checks that n is a mapping whose keys are distinct strings among allowed (any, when
// allowed is nil) and returns its entries by key and in order.
func (p *parser) mapping(n *yaml.Node, path string, allowed []string) (map[string]entry, []string, bool) {
	d := deref(n)
	if d.Kind != yaml.MappingNode {
		p.fail(n, display(path), "must be a mapping")
		return nil, nil, false
	}
	fields := make(map[string]entry, len(d.Content)/2)
	var order []string
	for i := 0; i+1 < len(d.Content); i += 2 {
		k, v := d.Content[i], d.Content[i+1]
		if !p.visit(k) {
			return fields, order, true
		}
		kd := deref(k)
		if kd.Kind != yaml.ScalarNode {
			p.fail(k, display(path), "keys must be strings")
			continue
		}
		name := kd.Value
		field := join(path, name)
		if allowed != nil && !contains(allowed, name) {
			p.fail(k, field, "unknown field (allowed: "+strings.Join(allowed, ", ")+")")
			continue
		}
		if prev, dup := fields[name]; dup {
			p.fail(k, field, fmt.Sprintf("is defined twice (first at line %d)", prev.key.Line))
			continue
		}
		fields[name] = entry{key: k, value: v}
		order = append(order, name)
	}
	return fields, order, true
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// str returns the value of a string scalar.
func (p *parser) str(n *yaml.Node, field string) (string, bool) {
	d := deref(n)
	if d.Kind != yaml.ScalarNode || d.ShortTag() != "!!str" {
		p.fail(n, field, ruleString)
		return "", false
	}
	return d.Value, true
}

// ident returns the value of a string scalar that matches nameRE.
func (p *parser) ident(n *yaml.Node, field string) (string, bool) {
	s, ok := p.str(n, field)
	if !ok {
		return "", false
	}
	if !nameRE.MatchString(s) {
		p.fail(n, field, ruleName)
		return s, false
	}
	return s, true
}

// intRange returns the value of an integer scalar in [lo, hi].
func (p *parser) intRange(n *yaml.Node, field string, lo, hi int64) (int, bool) {
	rule := fmt.Sprintf("must be an integer between %d and %d", lo, hi)
	d := deref(n)
	if d.Kind != yaml.ScalarNode || d.ShortTag() != "!!int" {
		p.fail(n, field, rule)
		return 0, false
	}
	var v int64
	if err := d.Decode(&v); err != nil || v < lo || v > hi {
		p.fail(n, field, rule)
		return 0, false
	}
	return int(v), true
}

// sequence returns the items of a sequence, reporting rule when n is not one or is empty.
func (p *parser) sequence(n *yaml.Node, field, rule string, allowEmpty bool) ([]*yaml.Node, bool) {
	d := deref(n)
	if d.Kind != yaml.SequenceNode || (!allowEmpty && len(d.Content) == 0) {
		p.fail(n, field, rule)
		return nil, false
	}
	return d.Content, true
}

// ref is a name that must be resolved once all names are known.
type ref struct {
	node  *yaml.Node
	field string
	name  string
}

func (p *parser) flow(root *yaml.Node) *Flow {
	f := &Flow{MaxSteps: DefaultMaxSteps}
	fields, _, ok := p.mapping(root, "", []string{"max_steps", "executors", "steps"})
	if !ok {
		return nil
	}

	if e, ok := fields["max_steps"]; ok && !isNull(e.value) {
		if v, ok := p.intRange(e.value, "max_steps", 1, MaxMaxSteps); ok {
			f.MaxSteps = v
		}
	}

	// Every executor name written, valid or not, so that a bad name is reported once (where it
	// is defined) rather than again at every step that uses it.
	executorNames := map[string]bool{}
	executorCount := 0
	var executorsNode *yaml.Node
	if e, ok := fields["executors"]; !ok || isNull(e.value) {
		p.fail(root, "executors", ruleRequired)
	} else if items, ok := p.sequence(e.value, "executors", "must be a non-empty list of executors", false); ok {
		executorsNode = e.value
		executorCount = len(items)
		firstLine := map[string]int{}
		for i, item := range items {
			if !p.visit(item) {
				break
			}
			ex, nameNode, ok := p.executor(item, index("executors", i))
			if nameNode != nil {
				executorNames[ex.Name] = true
				if line, dup := firstLine[ex.Name]; dup {
					p.fail(nameNode, index("executors", i)+".name", fmt.Sprintf("must be unique: executor %q is already defined at line %d", ex.Name, line))
					ok = false
				} else {
					firstLine[ex.Name] = nameNode.Line
				}
			}
			if ok {
				f.Executors = append(f.Executors, ex)
			}
		}
	}

	var refs []ref
	stepNames := map[string]bool{}
	declaredSteps := 0
	if e, ok := fields["steps"]; ok && !isNull(e.value) {
		if items, ok := p.sequence(e.value, "steps", "must be a list of steps", true); ok {
			declaredSteps = len(items)
			firstLine := map[string]int{}
			for i, item := range items {
				if !p.visit(item) {
					break
				}
				path := index("steps", i)
				st, nameNode, stepRefs, ok := p.step(item, path)
				refs = append(refs, stepRefs...)
				if nameNode != nil {
					stepNames[st.Name] = true
					if line, dup := firstLine[st.Name]; dup {
						p.fail(nameNode, path+".name", fmt.Sprintf("must be unique: step %q is already defined at line %d", st.Name, line))
						ok = false
					} else {
						firstLine[st.Name] = nameNode.Line
					}
				}
				if ok {
					f.DeclaredSteps = append(f.DeclaredSteps, st)
				}
			}
		}
	}

	for _, r := range refs {
		switch {
		case strings.HasSuffix(r.field, ".executor") && !executorNames[r.name]:
			p.fail(r.node, r.field, fmt.Sprintf("must name an executor: there is no executor %q", r.name))
		case strings.HasSuffix(r.field, ".next") && !stepNames[r.name]:
			p.fail(r.node, r.field, fmt.Sprintf("must name a step: there is no step %q", r.name))
		}
	}

	if declaredSteps == 0 && executorCount > 1 {
		p.fail(executorsNode, "steps", "is required when the flow has more than one executor (a flow without steps runs its single executor once)")
	}
	return f
}

var executorFields = []string{"name", "command", "replicas", "concurrency", "resources", "env", "workdir", "slot"}

// executor validates one executor; nameNode is set when the name is a string (valid or not).
func (p *parser) executor(n *yaml.Node, path string) (ex Executor, nameNode *yaml.Node, ok bool) {
	fields, _, ok := p.mapping(n, path, executorFields)
	if !ok {
		return ex, nil, false
	}
	before := len(p.errs) + p.dropped

	if e, found := fields["name"]; !found || isNull(e.value) {
		p.fail(n, path+".name", ruleRequired)
	} else if s, isStr := p.str(e.value, path+".name"); isStr {
		ex.Name, nameNode = s, e.value
		if !nameRE.MatchString(s) {
			p.fail(e.value, path+".name", ruleName)
		}
	}

	if e, found := fields["command"]; !found || isNull(e.value) {
		p.fail(n, path+".command", ruleRequired+" ("+strings.TrimPrefix(ruleCommand, "must be ")+")")
	} else if items, isSeq := p.sequence(e.value, path+".command", ruleCommand, false); isSeq {
		for i, item := range items {
			if !p.visit(item) {
				break
			}
			s, isStr := p.str(item, index(path+".command", i))
			if isStr && i == 0 && s == "" {
				p.fail(item, index(path+".command", i), "must not be empty (it names the program)")
			}
			ex.Command = append(ex.Command, s)
		}
	}

	if e, found := fields["replicas"]; found && !isNull(e.value) {
		ex.Replicas, _ = p.intRange(e.value, path+".replicas", 1, MaxReplicas)
	}

	if e, found := fields["concurrency"]; found && !isNull(e.value) {
		ex.Concurrency, _ = p.intRange(e.value, path+".concurrency", 1, MaxConcurrency)
	}

	if e, found := fields["resources"]; found && !isNull(e.value) {
		res, _, isMap := p.mapping(e.value, path+".resources", []string{"memory"})
		if m, found := res["memory"]; isMap && found && !isNull(m.value) {
			d := deref(m.value)
			tag := d.ShortTag()
			if d.Kind != yaml.ScalarNode || (tag != "!!str" && tag != "!!int" && tag != "!!float") {
				p.fail(m.value, path+".resources.memory", ruleMemory)
			} else if v, err := ParseQuantity(d.Value); err != nil {
				p.fail(m.value, path+".resources.memory", ruleMemory)
			} else {
				ex.Resources.Memory = v
			}
		}
	}

	if e, found := fields["env"]; found && !isNull(e.value) {
		env, order, isMap := p.mapping(e.value, path+".env", nil)
		if isMap && len(order) > 0 {
			ex.Env = make(map[string]string, len(order))
		}
		for _, k := range order {
			kv := env[k]
			field := path + ".env." + k
			if !envNameRE.MatchString(k) {
				field = path + ".env[" + strconv.Quote(k) + "]"
			}
			switch {
			case !envNameRE.MatchString(k):
				p.fail(kv.key, field, "names must match [A-Za-z_][A-Za-z0-9_]*")
				continue
			case strings.HasPrefix(k, reservedEnvPrefix):
				p.fail(kv.key, field, "is reserved: the worker sets "+reservedEnvPrefix+"* variables itself")
				continue
			}
			d := deref(kv.value)
			switch d.ShortTag() {
			case "!!str", "!!int", "!!float", "!!bool":
				if d.Kind == yaml.ScalarNode {
					ex.Env[k] = d.Value
					continue
				}
			}
			p.fail(kv.value, field, "must be a string")
		}
	}

	if e, found := fields["workdir"]; found && !isNull(e.value) {
		if s, isStr := p.str(e.value, path+".workdir"); isStr {
			if !filepath.IsLocal(s) {
				p.fail(e.value, path+".workdir", ruleWorkdir)
			}
			ex.Workdir = s
		}
	}

	if e, found := fields["slot"]; found && !isNull(e.value) {
		ex.Slot, _ = p.ident(e.value, path+".slot")
	}

	return ex, nameNode, len(p.errs)+p.dropped == before
}

// step validates one step; nameNode is set when the name is a string (valid or not), and refs
// lists the executor and next names to check once every name is known.
func (p *parser) step(n *yaml.Node, path string) (st Step, nameNode *yaml.Node, refs []ref, ok bool) {
	fields, _, ok := p.mapping(n, path, []string{"name", "executor", "map", "next"})
	if !ok {
		return st, nil, nil, false
	}
	before := len(p.errs) + p.dropped

	if e, found := fields["name"]; !found || isNull(e.value) {
		p.fail(n, path+".name", ruleRequired)
	} else if s, isStr := p.str(e.value, path+".name"); isStr {
		st.Name, nameNode = s, e.value
		if !nameRE.MatchString(s) {
			p.fail(e.value, path+".name", ruleName)
		}
	}

	if e, found := fields["executor"]; !found || isNull(e.value) {
		p.fail(n, path+".executor", ruleRequired)
	} else if s, isStr := p.str(e.value, path+".executor"); isStr {
		st.Executor = s
		refs = append(refs, ref{node: e.value, field: path + ".executor", name: s})
	}

	if e, found := fields["map"]; found && !isNull(e.value) {
		if s, isStr := p.str(e.value, path+".map"); isStr {
			if s == "" {
				p.fail(e.value, path+".map", "must not be empty (it names a list in the state)")
			}
			st.Map = s
		}
	}

	if e, found := fields["next"]; found && !isNull(e.value) {
		if s, isStr := p.str(e.value, path+".next"); isStr {
			st.Next = s
			refs = append(refs, ref{node: e.value, field: path + ".next", name: s})
		}
	}
	// References are checked later and may still fail the flow; ok only covers this step's
	// own fields.
	return st, nameNode, refs, len(p.errs)+p.dropped == before
}
