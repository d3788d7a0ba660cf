package deploy

import (
	"bytes"
	"context"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"strings"
	"testing"

	"github.com/moby/buildkit/client/llb"
	"github.com/moby/buildkit/client/llb/sourceresolver"
	"github.com/moby/buildkit/frontend/dockerfile/dockerfile2llb"
	"github.com/moby/buildkit/frontend/dockerfile/instructions"
	"github.com/moby/buildkit/frontend/dockerfile/parser"
	"github.com/moby/buildkit/frontend/dockerui"
	digest "github.com/opencontainers/go-digest"
	"github.com/stretchr/testify/require"
	"golang.org/x/mod/modfile"
)

// dockerfileSpec is what one Dockerfile must build.
type dockerfileSpec struct {
	file     string   // name under deploy/docker
	packages []string // Go packages the build stage compiles, as passed to go build
	// images are the runtime stages (build targets), each checked; every stage but the
	// builder needs one. The stage named defaultTarget must be the last, so that a plain
	// `docker build` produces it.
	images []imageSpec
}

// imageSpec is what one runtime stage must be.
type imageSpec struct {
	stage  string   // stage name, the build target
	base   string   // prefix of its base image
	expose []string // ports it EXPOSEs, exactly
	// shell is true where the image has a shell and so must carry a HEALTHCHECK that probes
	// GET /healthz on healthPort; false for distroless, which must run no shell at all.
	shell      bool
	healthPort string
	debs       []string // Debian packages it must install
	// rootWhy, when set, allows the stage to run as root and says why it must.
	rootWhy string
}

// defaultTarget is the name of the last stage of every Dockerfile: the image a plain build
// produces.
const defaultTarget = "runtime"

const distroless = "gcr.io/distroless/static"

var dockerfileSpecs = []dockerfileSpec{
	{
		file:     "gateway.Dockerfile",
		packages: []string{"./services/gateway/cmd/gateway"},
		images:   []imageSpec{{stage: defaultTarget, base: distroless, expose: []string{"8080", "9090", "9094"}}},
	},
	{
		file:     "scheduler.Dockerfile",
		packages: []string{"./services/scheduler/cmd/scheduler"},
		images:   []imageSpec{{stage: defaultTarget, base: distroless, expose: []string{"9091", "9092"}}},
	},
	{
		file:     "autoscaler.Dockerfile",
		packages: []string{"./services/autoscaler/cmd/autoscaler"},
		images: []imageSpec{
			{stage: defaultTarget, base: distroless, expose: []string{"8095"}},
			{
				stage: "compose", base: "docker:", expose: []string{"8095"}, shell: true, healthPort: "8095",
				rootWhy: "the compose driver uses the host's Docker socket, root on the host anyway",
			},
		},
	},
	{
		file:     "worker-agent.Dockerfile",
		packages: []string{"./services/worker-agent/cmd/worker-agent"},
		images: []imageSpec{{
			stage: defaultTarget, base: "debian:bookworm-slim", expose: []string{"9093"},
			shell: true, healthPort: "9093", debs: []string{"python3"},
		}},
	},
	{
		file:     "agentserver.Dockerfile",
		packages: []string{"./services/agentserver/cmd/agentserver", "./services/agentctl/cmd/agentctl"},
		images: []imageSpec{{
			stage: defaultTarget, base: "debian:bookworm-slim", expose: []string{"8080", "9090", "9091"},
			shell: true, healthPort: "8080", debs: []string{"python3", "postgresql-15"},
		}},
	},
}

// image returns the spec of a build target ("" is the default target).
func (d dockerfileSpec) image(target string) (imageSpec, bool) {
	if target == "" {
		target = defaultTarget
	}
	i := slices.IndexFunc(d.images, func(im imageSpec) bool { return im.stage == target })
	if i < 0 {
		return imageSpec{}, false
	}
	return d.images[i], true
}

const (
	dockerfileDir = "deploy/docker"
	builderImage  = "golang:1.26"
	builderStage  = "build"
)

// offlineImages answers BuildKit's base-image lookups without a registry: every image is a
// Linux image for this machine's architecture with the usual PATH, which is all the lint rules
// need.
type offlineImages struct{}

func (offlineImages) ResolveImageConfig(_ context.Context, ref string, _ sourceresolver.Opt) (string, digest.Digest, []byte, error) {
	cfg := fmt.Sprintf(`{"architecture":%q,"os":"linux",`+
		`"config":{"Env":["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"]},`+
		`"rootfs":{"type":"layers","diff_ids":["sha256:%s"]}}`, runtime.GOARCH, strings.Repeat("0", 64))
	return ref, "", []byte(cfg), nil
}

// lintDockerfile runs BuildKit's Dockerfile checks, the ones `docker build --check` runs, over
// every stage, and returns each warning or error with its line.
func lintDockerfile(name string, content []byte) problems {
	var ps problems
	sm := llb.NewSourceMap(nil, name, "Dockerfile", content)
	sm.Definition = &llb.Definition{}
	res, err := dockerfile2llb.DockerfileLint(context.Background(), content, dockerfile2llb.ConvertOpt{
		Config:       dockerui.Config{},
		SourceMap:    sm,
		MetaResolver: offlineImages{},
	})
	if err != nil {
		ps.addf("%s: lint: %v", name, err)
		return ps
	}
	for _, w := range res.Warnings {
		line := 0
		if w.Location != nil && len(w.Location.Ranges) > 0 {
			line = int(w.Location.Ranges[0].Start.Line)
		}
		ps.addf("%s:%d: %s: %s", name, line, w.RuleName, w.Detail)
	}
	if res.Error != nil {
		ps.addf("%s: %s", name, res.Error.Message)
	}
	return ps
}

// parseStages parses a Dockerfile into its stages with BuildKit's parser.
func parseStages(content []byte) ([]instructions.Stage, error) {
	res, err := parser.Parse(bytes.NewReader(content))
	if err != nil {
		return nil, err
	}
	stages, _, err := instructions.Parse(res.AST, nil)
	return stages, err
}

// copied is the result of replaying a stage's COPY instructions from the build context:
// destination path in the image → source path relative to the context.
type copied map[string]string

// replayCopies replays the context COPY instructions of a stage (COPY --from is another
// stage's output and is skipped) with Docker's rules: sources are globs relative to the
// context root, a directory source copies its contents, .dockerignore removes files before
// anything is copied. A source that matches nothing is a problem: the build would fail there.
// It also returns the working directory at each command.
func replayCopies(in buildInputs, name string, st instructions.Stage) (copied, []string, problems) {
	var ps problems
	files := copied{}
	workdirs := make([]string, len(st.Commands))
	workdir := "/"
	ignored := func(rel string) bool {
		m, err := in.ignore.MatchesOrParentMatches(rel)
		return err == nil && m
	}
	for i, cmd := range st.Commands {
		workdirs[i] = workdir
		switch c := cmd.(type) {
		case *instructions.WorkdirCommand:
			workdir = path.Join(workdir, c.Path)
			if path.IsAbs(c.Path) {
				workdir = path.Clean(c.Path)
			}
		case *instructions.CopyCommand:
			if c.From != "" {
				continue
			}
			dest := c.DestPath
			if !path.IsAbs(dest) {
				dest = path.Join(workdir, dest)
			}
			destIsDir := strings.HasSuffix(c.DestPath, "/") || len(c.SourcePaths) > 1
			for _, src := range c.SourcePaths {
				clean := path.Clean(strings.TrimPrefix(src, "/"))
				if clean == ".." || strings.HasPrefix(clean, "../") {
					ps.addf("%s: stage %s: COPY %s leaves the build context", name, st.Name, src)
					continue
				}
				matches, err := filepath.Glob(filepath.Join(in.root, filepath.FromSlash(clean)))
				if err != nil {
					ps.addf("%s: stage %s: COPY %s: %v", name, st.Name, src, err)
					continue
				}
				n := 0
				for _, m := range matches {
					rel, _ := filepath.Rel(in.root, m)
					rel = filepath.ToSlash(rel)
					if ignored(rel) {
						continue
					}
					info, err := os.Stat(m)
					if err != nil {
						continue
					}
					if !info.IsDir() {
						dst := dest
						if destIsDir || len(matches) > 1 {
							dst = path.Join(dest, path.Base(rel))
						}
						files[dst] = rel
						n++
						continue
					}
					_ = filepath.WalkDir(m, func(p string, d fs.DirEntry, err error) error {
						if err != nil || d.IsDir() {
							return err
						}
						r, _ := filepath.Rel(in.root, p)
						r = filepath.ToSlash(r)
						if ignored(r) {
							return nil
						}
						inner, _ := filepath.Rel(m, p)
						files[path.Join(dest, filepath.ToSlash(inner))] = r
						n++
						return nil
					})
				}
				if n == 0 {
					ps.addf("%s: stage %s: COPY %s: nothing in the build context matches (missing, or excluded by .dockerignore)", name, st.Name, src)
				}
			}
		}
	}
	return files, workdirs, ps
}

// goBuildCommand finds the stage's RUN that calls go build, with the working directory it runs
// in.
func goBuildCommand(st instructions.Stage, workdirs []string) (string, string, bool) {
	for i, cmd := range st.Commands {
		if r, ok := cmd.(*instructions.RunCommand); ok {
			line := strings.Join(r.CmdLine, " ")
			if strings.Contains(line, "go build") {
				return line, workdirs[i], true
			}
		}
	}
	return "", "", false
}

var numericUser = regexp.MustCompile(`^([0-9]+)(?::([0-9]+))?$`)

// checkDockerfile holds one Dockerfile to its spec.
func checkDockerfile(in buildInputs, spec dockerfileSpec, content []byte) problems {
	name := path.Join(dockerfileDir, spec.file)
	ps := lintDockerfile(name, content)
	stages, err := parseStages(content)
	if err != nil {
		ps.addf("%s: %v", name, err)
		return ps
	}
	if len(stages) < 2 {
		ps.addf("%s: want a multi-stage build (builder, runtime), found %d stage(s)", name, len(stages))
		return ps
	}

	// Builder: golang image, the repository root as context, a static, reproducible build.
	build := stages[0]
	if build.Name != builderStage || build.BaseName != builderImage {
		ps.addf("%s: first stage must be `FROM %s AS %s`, found FROM %s AS %s", name, builderImage, builderStage, build.BaseName, build.Name)
	}
	files, workdirs, copyProblems := replayCopies(in, name, build)
	ps = append(ps, copyProblems...)
	line, workdir, ok := goBuildCommand(build, workdirs)
	if !ok {
		ps.addf("%s: the %s stage has no RUN with go build", name, builderStage)
	} else {
		for _, want := range []string{"CGO_ENABLED=0", "-trimpath"} {
			if !strings.Contains(line, want) {
				ps.addf("%s: go build must run with %s", name, want)
			}
		}
		for _, pkg := range spec.packages {
			if !slices.Contains(strings.Fields(line), pkg) {
				ps.addf("%s: go build must build %s", name, pkg)
			}
		}
		ps = append(ps, checkBuildContext(in, name, files, workdir, spec.packages)...)
	}

	// Runtime images: every stage after the builder is a build target with a spec; the
	// default target is the last stage.
	if last := stages[len(stages)-1]; last.Name != defaultTarget {
		ps.addf("%s: the last stage must be %q, the image a plain build produces; found %q", name, defaultTarget, last.Name)
	}
	for _, st := range stages[1:] {
		im, ok := spec.image(st.Name)
		if !ok {
			ps.addf("%s: stage %q has no spec in dockerfile_test.go", name, st.Name)
			continue
		}
		if !strings.HasPrefix(st.BaseName, im.base) {
			ps.addf("%s: stage %s must be FROM %s..., found %s", name, st.Name, im.base, st.BaseName)
		}
		_, _, copyProblems := replayCopies(in, name, st)
		ps = append(ps, copyProblems...)
		ps = append(ps, checkRuntime(name, im, st)...)
	}
	for _, im := range spec.images {
		if !slices.ContainsFunc(stages, func(st instructions.Stage) bool { return st.Name == im.stage }) {
			ps.addf("%s: has no stage %q", name, im.stage)
		}
	}
	return ps
}

// checkBuildContext checks that the files the builder copied are enough to build: go.work and
// go.work.sum, every go.work module's go.mod (go refuses a workspace with a module missing)
// and its go.sum where the repository has one, and the sources of each built package's module
// and of the local modules it replaces.
func checkBuildContext(in buildInputs, name string, files copied, workdir string, pkgs []string) problems {
	var ps problems
	at := func(rel string) string { return path.Join(workdir, rel) }
	for _, f := range []string{"go.work", "go.work.sum"} {
		if _, ok := files[at(f)]; !ok {
			ps.addf("%s: the builder does not copy %s to %s", name, f, at(f))
		}
	}
	for _, mod := range in.modules {
		if _, ok := files[at(mod+"/go.mod")]; !ok {
			ps.addf("%s: go.work uses ./%s but the builder does not copy %s/go.mod", name, mod, mod)
		}
		if _, err := os.Stat(filepath.Join(in.root, mod, "go.sum")); err == nil {
			if _, ok := files[at(mod+"/go.sum")]; !ok {
				ps.addf("%s: the builder does not copy %s/go.sum", name, mod)
			}
		}
	}
	for _, pkg := range pkgs {
		mod := owningModule(in.modules, strings.TrimPrefix(pkg, "./"))
		if mod == "" {
			ps.addf("%s: %s is in no module of go.work", name, pkg)
			continue
		}
		need := []string{mod}
		if content, err := os.ReadFile(filepath.Join(in.root, mod, "go.mod")); err == nil {
			if mf, err := modfile.Parse("go.mod", content, nil); err == nil {
				for _, r := range mf.Replace {
					if modfile.IsDirectoryPath(r.New.Path) {
						need = append(need, path.Clean(path.Join(mod, r.New.Path)))
					}
				}
			}
		}
		for _, dir := range need {
			if !hasGoFiles(filepath.Join(in.root, dir)) {
				continue // nothing to copy yet
			}
			if !copiesGoFiles(files, at(dir)) {
				ps.addf("%s: %s needs the sources of ./%s, which the builder does not copy", name, pkg, dir)
			}
		}
	}
	return ps
}

// owningModule returns the go.work module directory that holds dir, the longest match.
func owningModule(modules []string, dir string) string {
	best := ""
	for _, m := range modules {
		if (dir == m || strings.HasPrefix(dir, m+"/")) && len(m) > len(best) {
			best = m
		}
	}
	return best
}

func hasGoFiles(dir string) bool {
	found := false
	_ = filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err == nil && !d.IsDir() && strings.HasSuffix(p, ".go") {
			found = true
			return fs.SkipAll
		}
		return nil
	})
	return found
}

func copiesGoFiles(files copied, dir string) bool {
	for dst := range files {
		if strings.HasPrefix(dst, dir+"/") && strings.HasSuffix(dst, ".go") {
			return true
		}
	}
	return false
}

// checkRuntime checks the final stage: non-root numeric user, the ports, the entrypoint, a
// health check where there is a shell to run it and no shell use where there is none.
func checkRuntime(name string, spec imageSpec, st instructions.Stage) problems {
	var ps problems
	var (
		user       string
		exposed    []string
		health     *instructions.HealthCheckCommand
		entrypoint *instructions.EntrypointCommand
		binaries   []string // files the stage copies from the builder
		installs   []string // RUN lines
	)
	for _, cmd := range st.Commands {
		switch c := cmd.(type) {
		case *instructions.UserCommand:
			user = c.User
		case *instructions.ExposeCommand:
			for _, p := range c.Ports {
				exposed = append(exposed, strings.TrimSuffix(p, "/tcp"))
			}
		case *instructions.HealthCheckCommand:
			health = c
		case *instructions.EntrypointCommand:
			entrypoint = c
		case *instructions.CopyCommand:
			if c.From == builderStage {
				for _, src := range c.SourcePaths {
					dst := c.DestPath
					if strings.HasSuffix(dst, "/") || len(c.SourcePaths) > 1 {
						dst = path.Join(dst, path.Base(src))
					}
					binaries = append(binaries, dst)
				}
			}
		case *instructions.RunCommand:
			installs = append(installs, strings.Join(c.CmdLine, " "))
			if !spec.shell {
				ps.addf("%s: the runtime image has no shell, so it cannot RUN %q", name, strings.Join(c.CmdLine, " "))
			}
		case *instructions.CmdCommand:
			if c.PrependShell && !spec.shell {
				ps.addf("%s: the runtime image has no shell: CMD must use the exec (JSON) form", name)
			}
		}
	}

	if m := numericUser.FindStringSubmatch(user); m == nil {
		ps.addf("%s: stage %s must set a numeric USER (uid:gid), found %q", name, st.Name, user)
	} else if (m[1] == "0" || m[2] == "0") && spec.rootWhy == "" {
		ps.addf("%s: stage %s runs as root (USER %s)", name, st.Name, user)
	}

	slices.Sort(exposed)
	want := slices.Sorted(slices.Values(spec.expose))
	if !slices.Equal(exposed, want) {
		ps.addf("%s: stage %s: EXPOSE %v, want %v", name, st.Name, exposed, want)
	}

	switch {
	case entrypoint == nil:
		ps.addf("%s: stage %s has no ENTRYPOINT", name, st.Name)
	case entrypoint.PrependShell:
		ps.addf("%s: ENTRYPOINT must use the exec (JSON) form so the service gets signals", name)
	default:
		binary := ""
		for _, arg := range entrypoint.CmdLine {
			if strings.HasPrefix(arg, "/usr/local/bin/") {
				binary = arg
			}
		}
		if !slices.Contains(binaries, binary) {
			ps.addf("%s: ENTRYPOINT runs %q, which is not copied from the %s stage (copied: %v)", name, binary, builderStage, binaries)
		}
	}

	if spec.shell {
		if health == nil || len(health.Health.Test) == 0 || health.Health.Test[0] == "NONE" {
			ps.addf("%s: stage %s has a shell but no HEALTHCHECK", name, st.Name)
		} else {
			probe := strings.Join(health.Health.Test, " ")
			if !strings.Contains(probe, "127.0.0.1:"+spec.healthPort+"/healthz") && !strings.Contains(probe, "localhost:"+spec.healthPort+"/healthz") {
				ps.addf("%s: HEALTHCHECK must probe GET /healthz on port %s, found %q", name, spec.healthPort, probe)
			}
		}
	} else if health != nil && len(health.Health.Test) > 0 && health.Health.Test[0] == "CMD-SHELL" {
		ps.addf("%s: the runtime image has no shell, so a shell-form HEALTHCHECK would always fail", name)
	}

	installed := strings.Fields(strings.Join(installs, " "))
	for _, deb := range spec.debs {
		if !slices.Contains(installed, deb) {
			ps.addf("%s: the runtime image must install the Debian package %s", name, deb)
		}
	}
	return ps
}

func TestDockerfilesMatchTheirSpecs(t *testing.T) {
	t.Parallel()
	root := repoRoot(t)
	in := loadBuildInputs(t, root)
	for _, spec := range dockerfileSpecs {
		t.Run(spec.file, func(t *testing.T) {
			t.Parallel()
			content, err := os.ReadFile(filepath.Join(root, dockerfileDir, spec.file))
			require.NoError(t, err)
			requireNone(t, checkDockerfile(in, spec, content))
		})
	}
}

// TestEveryDockerfileHasASpec keeps deploy/docker and dockerfileSpecs in step: one Dockerfile
// per service, each of them checked.
func TestEveryDockerfileHasASpec(t *testing.T) {
	t.Parallel()
	root := repoRoot(t)
	found, err := filepath.Glob(filepath.Join(root, dockerfileDir, "*Dockerfile*"))
	require.NoError(t, err)
	var names, specs []string
	for _, f := range found {
		names = append(names, filepath.Base(f))
	}
	for _, s := range dockerfileSpecs {
		specs = append(specs, s.file)
	}
	require.ElementsMatch(t, specs, names)
}

func TestDockerignoreKeepsSecretsAndHistoryOut(t *testing.T) {
	t.Parallel()
	in := loadBuildInputs(t, repoRoot(t))
	for _, p := range []string{".git", ".git/config", ".env", "services/gateway/.env", "bin/gateway", ".state/db"} {
		m, err := in.ignore.MatchesOrParentMatches(p)
		require.NoError(t, err)
		require.True(t, m, ".dockerignore must exclude %s from the build context", p)
	}
}

// TestDockerBuildStagesResolveTheirPackages rebuilds each builder stage's source tree from its
// COPY instructions in a temporary directory and asks the go command to resolve the packages
// the stage builds there, as `go build` in the image would: it proves the COPY set is enough
// (every module, go.sum and source the build needs). Packages not written yet are skipped.
func TestDockerBuildStagesResolveTheirPackages(t *testing.T) {
	t.Parallel()
	goBin, err := exec.LookPath("go")
	if err != nil {
		t.Skip("no go command on PATH")
	}
	root := repoRoot(t)
	in := loadBuildInputs(t, root)
	for _, spec := range dockerfileSpecs {
		t.Run(spec.file, func(t *testing.T) {
			t.Parallel()
			for _, pkg := range spec.packages {
				if !hasGoFiles(filepath.Join(root, pkg)) {
					t.Skipf("%s has no Go files yet", pkg)
				}
			}
			content, err := os.ReadFile(filepath.Join(root, dockerfileDir, spec.file))
			require.NoError(t, err)
			stages, err := parseStages(content)
			require.NoError(t, err)
			files, workdirs, ps := replayCopies(in, spec.file, stages[0])
			requireNone(t, ps)
			_, workdir, ok := goBuildCommand(stages[0], workdirs)
			require.True(t, ok, "no go build in the builder stage")

			tree := t.TempDir()
			for dst, src := range files {
				rel, err := filepath.Rel(workdir, dst)
				if err != nil || strings.HasPrefix(rel, "..") {
					continue
				}
				data, err := os.ReadFile(filepath.Join(root, src))
				require.NoError(t, err)
				target := filepath.Join(tree, rel)
				require.NoError(t, os.MkdirAll(filepath.Dir(target), 0o755))
				require.NoError(t, os.WriteFile(target, data, 0o644))
			}

			args := append([]string{"list", "-deps", "-f", "{{if .Error}}{{.ImportPath}}: {{.Error}}{{end}}"}, spec.packages...)
			cmd := exec.CommandContext(t.Context(), goBin, args...)
			cmd.Dir = tree
			cmd.Env = append(withoutGoEnv(os.Environ()), "GOWORK=", "GOFLAGS=-mod=readonly", "CGO_ENABLED=0", "GOOS=linux")
			out, err := cmd.CombinedOutput()
			require.NoError(t, err, "go list in the replayed %s stage:\n%s", builderStage, out)
			require.Empty(t, strings.TrimSpace(string(out)), "packages that do not resolve in the replayed %s stage", builderStage)
		})
	}
}

// withoutGoEnv drops the variables that would point the go command away from the replayed
// tree (this package's own tests may run with GOWORK=off).
func withoutGoEnv(env []string) []string {
	out := env[:0:0]
	for _, kv := range env {
		k, _, _ := strings.Cut(kv, "=")
		switch k {
		case "GOWORK", "GOFLAGS", "CGO_ENABLED", "GOOS", "GOARCH":
			continue
		}
		out = append(out, kv)
	}
	return out
}

// dockerfileHealth reports whether the image built from a Dockerfile carries a HEALTHCHECK in
// its final stage; Compose inherits it when the service sets none.
func dockerfileHealth(file string) (bool, error) {
	content, err := os.ReadFile(file)
	if err != nil {
		return false, err
	}
	stages, err := parseStages(content)
	if err != nil {
		return false, fmt.Errorf("%s: %w", file, err)
	}
	if len(stages) == 0 {
		return false, nil
	}
	for _, cmd := range slices.Backward(stages[len(stages)-1].Commands) {
		if h, ok := cmd.(*instructions.HealthCheckCommand); ok {
			return len(h.Health.Test) > 0 && h.Health.Test[0] != "NONE", nil
		}
	}
	return false, nil
}
