package deploy

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

// The tests below break one deployment file at a time, in a copy, and require the checks to
// notice: a check that cannot fail proves nothing.

// composeMutations each break one rule of TestComposeFiles.
var composeMutations = []struct {
	name, file, old, new, want string
}{
	{
		name: "worker gets a database URL", file: fileStandard,
		old:  "      SCHEDULER_ADDR: scheduler:9091\n      WORKER_SLOTS",
		new:  "      SCHEDULER_ADDR: scheduler:9091\n      DATABASE_URL: postgres://agentserver:agentserver@postgres:5432/agentserver\n      WORKER_SLOTS",
		want: "must hold no database credentials but sets DATABASE_URL",
	},
	{
		name: "worker joins the data network", file: fileStandard,
		old:  "    networks: [default]\n    depends_on:\n      scheduler:\n        condition: service_started\n\n  worker-gpu:",
		new:  "    networks: [default, data]\n    depends_on:\n      scheduler:\n        condition: service_started\n\n  worker-gpu:",
		want: "must not reach the database",
	},
	{
		name: "worker gets a container name", file: fileStandard,
		old:  "      dockerfile: deploy/docker/worker-agent.Dockerfile\n",
		new:  "      dockerfile: deploy/docker/worker-agent.Dockerfile\n    container_name: worker\n",
		want: "sets container_name",
	},
	{
		name: "worker publishes a host port", file: fileStandard,
		old:  "    expose:\n      - \"9093\"\n",
		new:  "    ports:\n      - \"9093:9093\"\n",
		want: "publishes ports",
	},
	{
		name: "worker is killed mid-drain", file: fileStandard,
		old: "stop_grace_period: 45s", new: "stop_grace_period: 10s",
		want: "stop_grace_period must exceed",
	},
	{
		name: "gateway REST port moves", file: fileStandard,
		old: `"8080:8080"`, new: `"8081:8080"`,
		want: "gateway must publish 8080:8080",
	},
	{
		name: "worker dials the wrong scheduler port", file: fileStandard,
		old: "SCHEDULER_ADDR: scheduler:9091\n      WORKER_SLOTS", new: "SCHEDULER_ADDR: scheduler:9999\n      WORKER_SLOTS",
		want: "SCHEDULER_ADDR to port 9091",
	},
	{
		name: "gateway database password drifts from postgres", file: fileStandard,
		old:  "DATABASE_URL: postgres://agentserver:${POSTGRES_PASSWORD:-agentserver}@postgres:5432/agentserver?sslmode=disable\n      DATABASE_READ_URL",
		new:  "DATABASE_URL: postgres://agentserver:secret@postgres:5432/agentserver?sslmode=disable\n      DATABASE_READ_URL",
		want: "does not match postgres's POSTGRES_USER",
	},
	{
		name: "Dockerfile path is wrong", file: fileStandard,
		old: "dockerfile: deploy/docker/gateway.Dockerfile", new: "dockerfile: deploy/docker/gateway.dockerfile",
		want: "gateway.dockerfile",
	},
	{
		name: "standard file depends on a storage service", file: fileStandard,
		old:  "    depends_on:\n      scheduler:\n        condition: service_started\n\n  worker-gpu:",
		new:  "    depends_on:\n      postgres:\n        condition: service_healthy\n\n  worker-gpu:",
		want: "depends on undefined service",
	},
	{
		name: "waiting on a service without health check", file: fileStandard,
		old:  "    depends_on:\n      scheduler:\n        condition: service_started\n\n  worker-gpu:",
		new:  "    depends_on:\n      scheduler:\n        condition: service_healthy\n\n  worker-gpu:",
		want: "has no health check",
	},
	{
		name: "redis loses its health check", file: fileStorage,
		old: "      test: [\"CMD\", \"redis-cli\", \"ping\"]\n", new: "      disable: true\n",
		want: "redis has no healthcheck",
	},
	{
		name: "storage network loses its shared name", file: fileStorage,
		old: "  data:\n    name: agentserver-data\n", new: "  data: {}\n",
		want: "needs an explicit name",
	},
	{
		name: "storage file gets another project name", file: fileStorage,
		old: "name: agentserver\n", new: "name: agentserver-storage\n",
		want: `project name "agentserver-storage"`,
	},
	{
		name: "postgres image is not pinned", file: fileStorage,
		old: "image: postgres:15", new: "image: postgres",
		want: "want postgres:15",
	},
	{
		name: "autoscaler starts by default", file: fileStandard,
		old: "    profiles: [autoscale]\n", new: "",
		want: "autoscaler must start only with --profile autoscale",
	},
	{
		name: "workers report another pool than the autoscaler scales", file: fileStandard,
		old: "WORKER_POOL: ${WORKER_POOL:-cpu}", new: "WORKER_POOL: ${WORKER_POOL:-general}",
		want: `whose workers report pool "general"`,
	},
	{
		name: "autoscaler driver names a missing service", file: "deploy/autoscaler/driver.yaml",
		old: "    cpu: worker\n", new: "    cpu: workers\n",
		want: `as service "workers", which does not exist`,
	},
	{
		name: "autoscaler policy scales gateways", file: "deploy/autoscaler/policy.yaml",
		old: "# No gateways section", new: "gateways: {name: gateway, max_replicas: 2}\n# No gateways section",
		want: "policy scales gateways",
	},
	{
		name: "autoscaler reads a policy that is not mounted", file: fileStandard,
		old: "AUTOSCALER_POLICY: /srv/agentserver/project/deploy/autoscaler/policy.yaml", new: "AUTOSCALER_POLICY: /etc/policy.yaml",
		want: "AUTOSCALER_POLICY /etc/policy.yaml is no file of the repository",
	},
	{
		name: "all-in-one misspells a key", file: fileAllInOne,
		old: "    ports:\n      - \"8080:8080\"", new: "    prots:\n      - \"8080:8080\"",
		want: "prots",
	},
	{
		name: "all-in-one stops waiting for postgres", file: fileAllInOne,
		old: "      postgres:\n        condition: service_healthy\n", new: "      postgres:\n        condition: service_started\n",
		want: "must wait for postgres to be healthy",
	},
}

func TestComposeChecksCatchBrokenFiles(t *testing.T) {
	t.Parallel()
	root := repoRoot(t)
	for _, m := range composeMutations {
		t.Run(m.name, func(t *testing.T) {
			t.Parallel()
			dir := t.TempDir()
			files := []string{fileStandard, fileStorage, fileAllInOne, "deploy/autoscaler/policy.yaml", "deploy/autoscaler/driver.yaml"}
			for _, spec := range dockerfileSpecs {
				files = append(files, dockerfileDir+"/"+spec.file)
			}
			require.Contains(t, files, m.file)
			for _, f := range files {
				content, err := os.ReadFile(filepath.Join(root, f))
				require.NoError(t, err)
				text := string(content)
				if f == m.file {
					text = replaceOnce(t, text, m.old, m.new)
				}
				target := filepath.Join(dir, filepath.FromSlash(f))
				require.NoError(t, os.MkdirAll(filepath.Dir(target), 0o755))
				require.NoError(t, os.WriteFile(target, []byte(text), 0o644))
			}
			ps := composeProblems(t.Context(), dir)
			t.Logf("caught:\n  - %s", strings.Join(ps, "\n  - "))
			require.NotEmpty(t, ps, "the checks passed a broken %s", m.file)
			require.Contains(t, strings.Join(ps, "\n"), m.want)
		})
	}
}

// dockerfileMutations each break one rule of TestDockerfilesMatchTheirSpecs, in a Dockerfile,
// in .dockerignore or in go.work.
var dockerfileMutations = []struct {
	name, file, old, new, want string
	ignore, work               string // replace .dockerignore or go.work content when set
}{
	{
		name: "COPY source does not exist", file: "gateway.Dockerfile",
		old: "COPY pkg/ pkg/\n", new: "COPY pkgs/ pkg/\n",
		want: "COPY pkgs/: nothing in the build context matches",
	},
	{
		name: "go.work module not copied", file: "gateway.Dockerfile",
		old: "COPY tools/go.* tools/\n", new: "",
		want: "go.work uses ./tools but the builder does not copy tools/go.mod",
	},
	{
		name: "module sources not copied", file: "scheduler.Dockerfile",
		old: "COPY pkg/ pkg/\n", new: "",
		want: "needs the sources of ./pkg",
	},
	{
		name: "new go.work module", file: "gateway.Dockerfile",
		work: "go 1.26.7\n\nuse (\n\t./gen\n\t./pkg\n\t./services/gateway\n\t./deploy\n)\n",
		want: "go.work uses ./deploy",
	},
	{
		name: ".dockerignore drops pkg", file: "gateway.Dockerfile",
		ignore: ".git\n.env\n**/.env\nbin\n.state\npkg\n",
		want:   "COPY pkg/: nothing in the build context matches",
	},
	{
		name: "runs as root", file: "gateway.Dockerfile",
		old: "USER 65532:65532", new: "USER 0:0",
		want: "runs as root",
	},
	{
		name: "user by name", file: "worker-agent.Dockerfile",
		old: "USER 10001:10001", new: "USER agentserver",
		want: "must set a numeric USER (uid:gid)",
	},
	{
		name: "port not exposed", file: "gateway.Dockerfile",
		old: "EXPOSE 8080 9090 9094", new: "EXPOSE 8080 9090",
		want: "EXPOSE [8080 9090], want [8080 9090 9094]",
	},
	{
		name: "cgo build", file: "scheduler.Dockerfile",
		old: "CGO_ENABLED=0 ", new: "",
		want: "CGO_ENABLED=0",
	},
	{
		name: "wrong builder image", file: "autoscaler.Dockerfile",
		old: "golang:1.26 AS build", new: "golang:1.25 AS build",
		want: "first stage must be",
	},
	{
		name: "lint: inconsistent casing", file: "gateway.Dockerfile",
		old: "golang:1.26 AS build", new: "golang:1.26 as build",
		want: "FromAsCasing",
	},
	{
		name: "lint: undefined variable", file: "agentserver.Dockerfile",
		old: "ENV PATH=/usr/lib/postgresql/15/bin:$PATH", new: "ENV PATH=/usr/lib/postgresql/15/bin:$PTH",
		want: "UndefinedVar",
	},
	{
		name: "shell in distroless", file: "gateway.Dockerfile",
		old: "EXPOSE 8080 9090 9094\n", new: "EXPOSE 8080 9090 9094\nRUN mkdir /data\n",
		want: "has no shell, so it cannot RUN",
	},
	{
		name: "shell-form entrypoint", file: "scheduler.Dockerfile",
		old: `ENTRYPOINT ["/usr/local/bin/scheduler"]`, new: "ENTRYPOINT /usr/local/bin/scheduler",
		want: "ENTRYPOINT must use the exec (JSON) form",
	},
	{
		name: "entrypoint binary not copied", file: "gateway.Dockerfile",
		old: "COPY --from=build /out/gateway /usr/local/bin/gateway", new: "COPY --from=build /out/gateway /usr/local/bin/gw",
		want: "not copied from the build stage",
	},
	{
		name: "worker loses its health check", file: "worker-agent.Dockerfile",
		old: "HEALTHCHECK --interval", new: "# HEALTHCHECK --interval",
		want: "no HEALTHCHECK",
	},
	{
		name: "all-in-one without PostgreSQL", file: "agentserver.Dockerfile",
		old: " postgresql-15 ", new: " ",
		want: "must install the Debian package postgresql-15",
	},
	{
		name: "distroless runtime swapped for a shell image", file: "scheduler.Dockerfile",
		old: "FROM gcr.io/distroless/static-debian12:nonroot AS runtime", new: "FROM alpine:3 AS runtime",
		want: "stage runtime must be FROM gcr.io/distroless/static",
	},
}

func TestDockerfileChecksCatchBrokenFiles(t *testing.T) {
	t.Parallel()
	root := repoRoot(t)
	base := loadBuildInputs(t, root)
	for _, m := range dockerfileMutations {
		t.Run(m.name, func(t *testing.T) {
			t.Parallel()
			in := base
			if m.ignore != "" {
				ignore, err := loadIgnore([]byte(m.ignore))
				require.NoError(t, err)
				in.ignore = ignore
			}
			if m.work != "" {
				modules, err := workModules([]byte(m.work))
				require.NoError(t, err)
				in.modules = modules
			}
			i := 0
			for i < len(dockerfileSpecs) && dockerfileSpecs[i].file != m.file {
				i++
			}
			require.Less(t, i, len(dockerfileSpecs), "no spec for %s", m.file)
			content, err := os.ReadFile(filepath.Join(root, dockerfileDir, m.file))
			require.NoError(t, err)
			text := string(content)
			if m.old != "" {
				text = replaceOnce(t, text, m.old, m.new)
			}
			ps := checkDockerfile(in, dockerfileSpecs[i], []byte(text))
			t.Logf("caught:\n  - %s", strings.Join(ps, "\n  - "))
			require.NotEmpty(t, ps, "the checks passed a broken %s", m.file)
			require.Contains(t, strings.Join(ps, "\n"), m.want)
		})
	}
}
