package deploy

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/moby/patternmatcher"
	"github.com/moby/patternmatcher/ignorefile"
	"github.com/stretchr/testify/require"
	"golang.org/x/mod/modfile"
)

// problems collects what a check found wrong, one sentence each, so that a run reports every
// broken rule at once instead of stopping at the first.
type problems []string

func (p *problems) addf(format string, args ...any) {
	*p = append(*p, fmt.Sprintf(format, args...))
}

// requireNone fails the test with every problem listed.
func requireNone(t *testing.T, ps problems) {
	t.Helper()
	if len(ps) > 0 {
		t.Fatalf("%d problem(s):\n  - %s", len(ps), strings.Join(ps, "\n  - "))
	}
}

// repoRoot is the repository root: the directory of the Compose files and the build context of
// every Dockerfile. go test runs in deploy/.
func repoRoot(t testing.TB) string {
	t.Helper()
	wd, err := os.Getwd()
	require.NoError(t, err)
	root := filepath.Dir(wd)
	require.FileExists(t, filepath.Join(root, "go.work"), "the deploy tests run in deploy/ of the agentserver repository")
	return root
}

// loadIgnore reads the build context's .dockerignore the way BuildKit does.
func loadIgnore(content []byte) (*patternmatcher.PatternMatcher, error) {
	patterns, err := ignorefile.ReadAll(bytes.NewReader(content))
	if err != nil {
		return nil, fmt.Errorf("reading .dockerignore: %w", err)
	}
	return patternmatcher.New(patterns)
}

// workModules lists the module directories of go.work, relative to the repository root, in
// slash form ("gen", "services/gateway").
func workModules(content []byte) ([]string, error) {
	wf, err := modfile.ParseWork("go.work", content, nil)
	if err != nil {
		return nil, fmt.Errorf("parsing go.work: %w", err)
	}
	dirs := make([]string, 0, len(wf.Use))
	for _, u := range wf.Use {
		dirs = append(dirs, filepath.ToSlash(filepath.Clean(u.Path)))
	}
	return dirs, nil
}

// buildInputs is what the Dockerfile checks read besides the Dockerfile itself; the mutation
// tests replace one part at a time.
type buildInputs struct {
	root    string
	ignore  *patternmatcher.PatternMatcher
	modules []string
}

func loadBuildInputs(t testing.TB, root string) buildInputs {
	t.Helper()
	ignoreContent, err := os.ReadFile(filepath.Join(root, ".dockerignore"))
	require.NoError(t, err)
	ignore, err := loadIgnore(ignoreContent)
	require.NoError(t, err)
	workContent, err := os.ReadFile(filepath.Join(root, "go.work"))
	require.NoError(t, err)
	modules, err := workModules(workContent)
	require.NoError(t, err)
	return buildInputs{root: root, ignore: ignore, modules: modules}
}

// replaceOnce returns content with old replaced by new, and fails the test unless old occurs
// exactly once: a mutation that no longer applies must not pass silently.
func replaceOnce(t *testing.T, content, old, new string) string {
	t.Helper()
	require.Equal(t, 1, strings.Count(content, old), "mutation anchor %q must occur exactly once", old)
	return strings.Replace(content, old, new, 1)
}
