package deploy

import (
	"bufio"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/hashicorp/hcl/v2/hclparse"
	"github.com/hashicorp/hcl/v2/hclsyntax"
	"github.com/stretchr/testify/require"
)

// The NGINX, PgBouncer and Consul files are examples to copy, not run by anything here; these
// tests keep them parseable and keep the points they exist to make.

func TestNginxExample(t *testing.T) {
	t.Parallel()
	content, err := os.ReadFile(filepath.Join(repoRoot(t), "deploy/nginx/nginx.conf"))
	require.NoError(t, err)
	text := string(content)

	// Directives only: comments and quoted strings cannot unbalance the braces.
	depth := 0
	sc := bufio.NewScanner(strings.NewReader(text))
	for n := 1; sc.Scan(); n++ {
		line, _, _ := strings.Cut(sc.Text(), "#")
		line = regexp.MustCompile(`"[^"]*"`).ReplaceAllString(line, "")
		depth += strings.Count(line, "{") - strings.Count(line, "}")
		require.GreaterOrEqual(t, depth, 0, "line %d closes a block that is not open", n)
	}
	require.Zero(t, depth, "unclosed block")

	for _, want := range []string{
		"upstream agentserver_rest {",
		"upstream agentserver_grpc {",
		"proxy_pass http://agentserver_rest;",
		"grpc_pass grpc://agentserver_grpc;",
		"listen 8080;",
		"listen 9090 http2;",
		"proxy_buffering off;", // SSE
	} {
		require.Contains(t, text, want)
	}
	require.Equal(t, 2, strings.Count(text, "# hash $http_x_thread_id consistent;"), "each upstream carries the commented consistent-hash variant")
	require.Regexp(t, `server \S+:8080 max_fails=\d+ fail_timeout=\S+;`, text)
	require.Regexp(t, `server \S+:9090 max_fails=\d+ fail_timeout=\S+;`, text)

	// Where NGINX is installed, let it check the file too, with the example's gateway host
	// names (which would not resolve here) replaced by loopback addresses.
	nginx, err := exec.LookPath("nginx")
	if err != nil {
		t.Log("nginx not installed: skipping nginx -t")
		return
	}
	dir := t.TempDir()
	local := regexp.MustCompile(`server gateway-\d+:`).ReplaceAllString(text, "server 127.0.0.1:")
	conf := filepath.Join(dir, "nginx.conf")
	require.NoError(t, os.WriteFile(conf, []byte(local), 0o644))
	out, err := exec.CommandContext(t.Context(), nginx, "-t", "-q", "-e", "stderr", "-p", dir, "-c", conf,
		"-g", "pid "+filepath.Join(dir, "nginx.pid")+";").CombinedOutput()
	require.NoError(t, err, "nginx -t:\n%s", out)
}

func TestPgBouncerExample(t *testing.T) {
	t.Parallel()
	content, err := os.ReadFile(filepath.Join(repoRoot(t), "deploy/pgbouncer/pgbouncer.ini"))
	require.NoError(t, err)
	sections := map[string]map[string]string{}
	section := ""
	sc := bufio.NewScanner(strings.NewReader(string(content)))
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		switch {
		case line == "" || strings.HasPrefix(line, ";") || strings.HasPrefix(line, "#"):
		case strings.HasPrefix(line, "[") && strings.HasSuffix(line, "]"):
			section = strings.Trim(line, "[]")
			sections[section] = map[string]string{}
		default:
			key, value, ok := strings.Cut(line, "=")
			require.True(t, ok && section != "", "line %d: want key = value inside a section: %q", n, line)
			sections[section][strings.TrimSpace(key)] = strings.TrimSpace(value)
		}
	}
	require.Contains(t, sections["databases"], "agentserver")
	require.Equal(t, "transaction", sections["pgbouncer"]["pool_mode"])
	require.NotEmpty(t, sections["pgbouncer"]["listen_port"])
	require.Contains(t, string(content), "LISTEN connection must bypass PgBouncer")
}

func TestConsulExample(t *testing.T) {
	t.Parallel()
	f, diags := hclparse.NewParser().ParseHCLFile(filepath.Join(repoRoot(t), "deploy/consul/agent.hcl"))
	require.False(t, diags.HasErrors(), diags.Error())
	body, ok := f.Body.(*hclsyntax.Body)
	require.True(t, ok)
	for _, attr := range []string{"datacenter", "data_dir", "server", "bootstrap_expect", "client_addr"} {
		require.Contains(t, body.Attributes, attr)
	}

	// Where deploy/scripts/build-consul.sh has built the pinned agent, let it check the file.
	consul := filepath.Join(repoRoot(t), "bin", "consul")
	if _, err := os.Stat(consul); err != nil {
		t.Log("bin/consul not built: skipping consul validate")
		return
	}
	out, err := exec.CommandContext(t.Context(), consul, "validate", filepath.Join(repoRoot(t), "deploy/consul/agent.hcl")).CombinedOutput()
	require.NoError(t, err, "consul validate:\n%s", out)
}
