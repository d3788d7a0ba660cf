package deploy

import (
	"context"
	"fmt"
	"maps"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/compose-spec/compose-go/v2/cli"
	"github.com/compose-spec/compose-go/v2/loader"
	"github.com/compose-spec/compose-go/v2/types"
	"github.com/stretchr/testify/require"
	"go.yaml.in/yaml/v3"
)

const (
	fileStandard = "docker-compose.yml"
	fileStorage  = "docker-compose.storage.yml"
	fileAllInOne = "docker-compose.allinone.yml"

	// projectName is shared by the standard and storage files, which is what lets them be
	// started apart and still be one project on one set of networks.
	projectName = "agentserver"

	gpuProfile       = "gpu"
	autoscaleProfile = "autoscale"
)

var (
	storageServices  = []string{"postgres", "redis", "minio"}
	standardServices = []string{"gateway", "scheduler", "worker"}
	// profileServices start only with their profile: the GPU pool needs GPUs, and the
	// autoscaler would take the worker count out of `--scale worker=N`'s hands.
	profileServices = map[string]string{"worker-gpu": gpuProfile, "autoscaler": autoscaleProfile}
	allProfiles     = []string{gpuProfile, autoscaleProfile}
)

// loadCompose loads Compose files as `docker compose -f ... config` would, with schema
// validation and consistency checks on. The environment is empty, so the defaults written in
// the files (${VAR:-default}) are what is checked, whatever the shell or a local .env holds.
func loadCompose(ctx context.Context, dir string, profiles []string, files ...string) (*types.Project, error) {
	paths := make([]string, 0, len(files))
	for _, f := range files {
		paths = append(paths, filepath.Join(dir, f))
	}
	opts, err := cli.NewProjectOptions(paths,
		cli.WithWorkingDirectory(dir),
		cli.WithInterpolation(true),
		cli.WithNormalization(true),
		cli.WithConsistency(true),
		cli.WithResolvedPaths(true),
		cli.WithProfiles(profiles),
		cli.WithLoadOptions(func(o *loader.Options) {
			o.SkipValidation = false
			o.SkipConsistencyCheck = false
		}),
	)
	if err != nil {
		return nil, err
	}
	p, err := opts.LoadProject(ctx)
	if err != nil {
		return nil, fmt.Errorf("loading %s: %w", strings.Join(files, " + "), err)
	}
	return p, nil
}

// composeSet holds every supported way of using the Compose files, loaded.
type composeSet struct {
	dir         string
	storage     *types.Project // -f docker-compose.storage.yml
	standard    *types.Project // -f docker-compose.yml
	standardAll *types.Project // -f docker-compose.yml --profile gpu --profile autoscale
	merged      *types.Project // -f docker-compose.storage.yml -f docker-compose.yml
	mergedAll   *types.Project // the same with every profile
	allInOne    *types.Project // -f docker-compose.allinone.yml
}

func loadComposeSet(ctx context.Context, dir string) (*composeSet, error) {
	s := &composeSet{dir: dir}
	var err error
	for _, l := range []struct {
		into     **types.Project
		profiles []string
		files    []string
	}{
		{&s.storage, nil, []string{fileStorage}},
		{&s.standard, nil, []string{fileStandard}},
		{&s.standardAll, allProfiles, []string{fileStandard}},
		{&s.merged, nil, []string{fileStorage, fileStandard}},
		{&s.mergedAll, allProfiles, []string{fileStorage, fileStandard}},
		{&s.allInOne, nil, []string{fileAllInOne}},
	} {
		if *l.into, err = loadCompose(ctx, dir, l.profiles, l.files...); err != nil {
			return nil, err
		}
	}
	return s, nil
}

// composeChecks are the rules the Compose files must follow; each names what it found wrong.
var composeChecks = []struct {
	name  string
	check func(*composeSet) problems
}{
	{"StorageServices", checkStorage},
	{"StandardServices", checkStandardServices},
	{"WorkersScale", checkWorkersScale},
	{"WorkersHoldNoDatabaseCredentials", checkWorkerCredentials},
	{"WorkersDrainBeforeTheyAreKilled", checkWorkerDrain},
	{"PortsMatchTheDefaults", checkPorts},
	{"ImagesBuildFromExistingDockerfiles", checkBuilds},
	{"HealthConditionsHaveHealthChecks", checkHealthConditions},
	{"AddressesReachTheirServices", checkWiring},
	{"FilesStartedApartShareProjectAndNetwork", checkSharedProject},
	{"AllInOne", checkAllInOne},
	{"AutoscalerDrivesThisProject", checkAutoscaler},
}

func TestComposeFiles(t *testing.T) {
	t.Parallel()
	set, err := loadComposeSet(t.Context(), repoRoot(t))
	require.NoError(t, err)
	for _, c := range composeChecks {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			requireNone(t, c.check(set))
		})
	}
}

// composeProblems loads the Compose files in dir and runs every check; a file that does not
// load is a problem too.
func composeProblems(ctx context.Context, dir string) problems {
	set, err := loadComposeSet(ctx, dir)
	if err != nil {
		return problems{err.Error()}
	}
	var ps problems
	for _, c := range composeChecks {
		ps = append(ps, c.check(set)...)
	}
	return ps
}

// --- helpers -------------------------------------------------------------------------------

func label(p *types.Project) string {
	files := make([]string, 0, len(p.ComposeFiles))
	for _, f := range p.ComposeFiles {
		files = append(files, filepath.Base(f))
	}
	if len(files) == 0 {
		return p.Name
	}
	return strings.Join(files, "+")
}

func envValue(svc types.ServiceConfig, key string) (string, bool) {
	v, ok := svc.Environment[key]
	if !ok || v == nil {
		return "", false
	}
	return *v, true
}

func hasHealthcheck(svc types.ServiceConfig) bool {
	h := svc.HealthCheck
	return h != nil && !h.Disable && len(h.Test) > 0 && h.Test[0] != "NONE"
}

func isWorker(name string) bool { return name == "worker" || strings.HasPrefix(name, "worker-") }

// allServices is the enabled and the profile-disabled services: rules about workers hold for
// every worker, started by default or not.
func allServices(p *types.Project) types.Services {
	all := maps.Clone(p.Services)
	maps.Copy(all, p.DisabledServices)
	return all
}

// networkNames resolves a service's networks to the names Docker sees; two projects share a
// network exactly when these names meet.
func networkNames(p *types.Project, svc types.ServiceConfig) []string {
	var names []string
	for key := range svc.Networks {
		if n, ok := p.Networks[key]; ok && n.Name != "" {
			names = append(names, n.Name)
		} else {
			names = append(names, p.Name+"_"+key)
		}
	}
	slices.Sort(names)
	return names
}

func shareNetwork(p *types.Project, a, b types.ServiceConfig) bool {
	nb := networkNames(p, b)
	return slices.ContainsFunc(networkNames(p, a), func(n string) bool { return slices.Contains(nb, n) })
}

func portOf(addr string) string {
	_, port, err := net.SplitHostPort(addr)
	if err != nil {
		return ""
	}
	return port
}

func publishes(svc types.ServiceConfig, published string, target uint32) bool {
	return slices.ContainsFunc(svc.Ports, func(p types.ServicePortConfig) bool {
		return p.Published == published && p.Target == target && (p.Protocol == "" || p.Protocol == "tcp")
	})
}

// imageFor returns the Dockerfile spec and image spec a service builds.
func imageFor(build *types.BuildConfig) (dockerfileSpec, imageSpec, bool) {
	if build == nil {
		return dockerfileSpec{}, imageSpec{}, false
	}
	i := slices.IndexFunc(dockerfileSpecs, func(s dockerfileSpec) bool { return s.file == filepath.Base(build.Dockerfile) })
	if i < 0 {
		return dockerfileSpec{}, imageSpec{}, false
	}
	im, ok := dockerfileSpecs[i].image(build.Target)
	return dockerfileSpecs[i], im, ok
}

// --- checks --------------------------------------------------------------------------------

func checkStorage(s *composeSet) problems {
	var ps problems
	images := map[string]string{"postgres": "postgres:15", "redis": "redis:7", "minio": "minio/minio:"}
	for _, p := range []*types.Project{s.storage, s.merged} {
		for _, name := range storageServices {
			svc, ok := p.Services[name]
			if !ok {
				ps.addf("%s: storage service %q is missing", label(p), name)
				continue
			}
			if !strings.Contains(svc.Image, images[name]) {
				ps.addf("%s: %s runs image %q, want %s…", label(p), name, svc.Image, images[name])
			}
			if !hasHealthcheck(svc) {
				ps.addf("%s: %s has no healthcheck", label(p), name)
			}
			named := slices.ContainsFunc(svc.Volumes, func(v types.ServiceVolumeConfig) bool {
				_, declared := p.Volumes[v.Source]
				return v.Type == types.VolumeTypeVolume && declared
			})
			if !named {
				ps.addf("%s: %s keeps its data in no named volume", label(p), name)
			}
		}
	}
	return ps
}

func checkStandardServices(s *composeSet) problems {
	var ps problems
	for _, p := range []*types.Project{s.standard, s.merged} {
		for _, name := range standardServices {
			if _, ok := p.Services[name]; !ok {
				ps.addf("%s: service %q is missing", label(p), name)
			}
		}
		for name, profile := range profileServices {
			if _, ok := p.Services[name]; ok {
				ps.addf("%s: %s must start only with --profile %s", label(p), name, profile)
			}
		}
	}
	for _, p := range []*types.Project{s.standardAll, s.mergedAll} {
		for name, profile := range profileServices {
			if _, ok := p.Services[name]; !ok {
				ps.addf("%s --profile %s: %s is missing", label(p), profile, name)
			}
		}
	}
	return ps
}

func checkWorkersScale(s *composeSet) problems {
	var ps problems
	for _, p := range []*types.Project{s.standardAll, s.mergedAll} {
		for name, svc := range allServices(p) {
			if !isWorker(name) {
				continue
			}
			if svc.ContainerName != "" {
				ps.addf("%s: %s sets container_name %q, so --scale %s=N cannot create a second container", label(p), name, svc.ContainerName, name)
			}
			if len(svc.Ports) > 0 {
				ps.addf("%s: %s publishes ports %v: replicas would fight over host ports; use expose", label(p), name, svc.Ports)
			}
		}
	}
	return ps
}

// defaultDrainGrace is the worker-agent's default WORKER_DRAIN_GRACE.
const defaultDrainGrace = 30 * time.Second

// checkWorkerDrain: on SIGTERM a worker drains for WORKER_DRAIN_GRACE; Docker must wait longer
// than that before it kills the container, or runs die mid-drain.
func checkWorkerDrain(s *composeSet) problems {
	var ps problems
	for _, p := range []*types.Project{s.standardAll, s.mergedAll} {
		for name, svc := range allServices(p) {
			if !isWorker(name) {
				continue
			}
			grace := defaultDrainGrace
			if v, ok := envValue(svc, "WORKER_DRAIN_GRACE"); ok {
				d, err := time.ParseDuration(v)
				if err != nil {
					ps.addf("%s: %s WORKER_DRAIN_GRACE=%q: %v", label(p), name, v, err)
					continue
				}
				grace = d
			}
			if svc.StopGracePeriod == nil || time.Duration(*svc.StopGracePeriod) <= grace {
				ps.addf("%s: %s stop_grace_period must exceed its drain grace %s", label(p), name, grace)
			}
		}
	}
	return ps
}

// credentialKey matches environment names that carry credentials or addresses of a data store.
var credentialKey = regexp.MustCompile(`^(DATABASE_|POSTGRES|PG[A-Z]|REDIS_|MINIO_|AWS_|S3_)`)

var credentialValue = regexp.MustCompile(`(?i)\b(postgres|postgresql|redis|rediss|s3)://`)

// checkWorkerCredentials holds the design's rule that a worker runs user code and so holds no
// database credentials: none in its environment, no env_file or secret that could bring them,
// and no network on which it could reach the storage services at all.
func checkWorkerCredentials(s *composeSet) problems {
	var ps problems
	for _, pair := range []struct{ storage, services *types.Project }{
		{s.storage, s.standardAll}, // started apart
		{s.mergedAll, s.mergedAll}, // merged
	} {
		var dataNets []string
		for _, name := range storageServices {
			if svc, ok := pair.storage.Services[name]; ok {
				dataNets = append(dataNets, networkNames(pair.storage, svc)...)
			}
		}
		p := pair.services
		for name, svc := range allServices(p) {
			if !isWorker(name) {
				continue
			}
			for key, v := range svc.Environment {
				if credentialKey.MatchString(key) {
					ps.addf("%s: %s must hold no database credentials but sets %s", label(p), name, key)
				}
				if v != nil && credentialValue.MatchString(*v) {
					ps.addf("%s: %s sets %s to a data store URL", label(p), name, key)
				}
			}
			if len(svc.EnvFiles) > 0 {
				ps.addf("%s: %s reads env_file %v, which could carry credentials", label(p), name, svc.EnvFiles)
			}
			if len(svc.Secrets) > 0 {
				ps.addf("%s: %s mounts secrets", label(p), name)
			}
			for _, n := range networkNames(p, svc) {
				if slices.Contains(dataNets, n) {
					ps.addf("%s: %s is on network %q with the storage services: it must not reach the database", label(p), name, n)
				}
			}
		}
	}
	return ps
}

func checkPorts(s *composeSet) problems {
	var ps problems
	wantEnv := func(p *types.Project, svc, key, port string) {
		v, ok := envValue(p.Services[svc], key)
		if !ok || portOf(v) != port {
			ps.addf("%s: %s must set %s to port %s (found %q)", label(p), svc, key, port, v)
		}
	}
	for _, p := range []*types.Project{s.standard, s.merged} {
		gw := p.Services["gateway"]
		if !publishes(gw, "8080", 8080) || !publishes(gw, "9090", 9090) {
			ps.addf("%s: gateway must publish 8080:8080 (REST) and 9090:9090 (gRPC), found %v", label(p), gw.Ports)
		}
		wantEnv(p, "gateway", "GATEWAY_HTTP_ADDR", "8080")
		wantEnv(p, "gateway", "GATEWAY_GRPC_ADDR", "9090")
		wantEnv(p, "scheduler", "SCHEDULER_GRPC_ADDR", "9091")
		wantEnv(p, "worker", "SCHEDULER_ADDR", "9091")
	}
	p := s.allInOne
	as := p.Services["agentserver"]
	if !publishes(as, "8080", 8080) || !publishes(as, "9090", 9090) {
		ps.addf("%s: agentserver must publish 8080:8080 and 9090:9090, found %v", label(p), as.Ports)
	}
	wantEnv(p, "agentserver", "GATEWAY_HTTP_ADDR", "8080")
	wantEnv(p, "agentserver", "GATEWAY_GRPC_ADDR", "9090")

	// What a container listens on must be what its image declares.
	for _, p := range []*types.Project{s.mergedAll, s.allInOne} {
		for name, svc := range allServices(p) {
			spec, im, ok := imageFor(svc.Build)
			if !ok {
				continue
			}
			var ports []string
			for _, port := range svc.Ports {
				ports = append(ports, fmt.Sprint(port.Target))
			}
			ports = append(ports, svc.Expose...)
			for _, port := range ports {
				if !slices.Contains(im.expose, port) {
					ps.addf("%s: %s uses port %s, which %s (target %s) does not EXPOSE (%v)", label(p), name, port, spec.file, im.stage, im.expose)
				}
			}
		}
	}
	return ps
}

// checkBuilds: every built service builds from the repository root with a Dockerfile that
// exists under deploy/docker and has a spec, and names its image, so that replicas share one
// build; every pulled image has a pinned tag.
func checkBuilds(s *composeSet) problems {
	var ps problems
	for _, p := range []*types.Project{s.mergedAll, s.allInOne} {
		for name, svc := range allServices(p) {
			if svc.Build == nil {
				tag := svc.Image[strings.LastIndex(svc.Image, "/")+1:]
				if _, t, ok := strings.Cut(tag, ":"); !ok || t == "latest" {
					ps.addf("%s: %s image %q must pin a tag", label(p), name, svc.Image)
				}
				continue
			}
			if filepath.Clean(svc.Build.Context) != filepath.Clean(s.dir) {
				ps.addf("%s: %s builds with context %s, want the repository root", label(p), name, svc.Build.Context)
			}
			df := filepath.Join(svc.Build.Context, svc.Build.Dockerfile)
			if rel, err := filepath.Rel(s.dir, df); err != nil || filepath.ToSlash(filepath.Dir(rel)) != dockerfileDir {
				ps.addf("%s: %s Dockerfile %s must be under %s", label(p), name, svc.Build.Dockerfile, dockerfileDir)
			}
			if _, err := dockerfileHealth(df); err != nil {
				ps.addf("%s: %s: Dockerfile %s: %v", label(p), name, svc.Build.Dockerfile, err)
			}
			if _, _, ok := imageFor(svc.Build); !ok {
				ps.addf("%s: %s builds %s (target %q), which has no spec in dockerfile_test.go", label(p), name, svc.Build.Dockerfile, svc.Build.Target)
			}
			if svc.Image == "" {
				ps.addf("%s: %s builds an image without naming it", label(p), name)
			}
		}
	}
	return ps
}

// checkHealthConditions: Compose refuses service_healthy on a service without a health check,
// from the file or from its image.
func checkHealthConditions(s *composeSet) problems {
	var ps problems
	for _, p := range []*types.Project{s.storage, s.standardAll, s.mergedAll, s.allInOne} {
		for name, svc := range allServices(p) {
			for dep, cfg := range svc.DependsOn {
				if cfg.Condition != types.ServiceConditionHealthy {
					continue
				}
				target, ok := allServices(p)[dep]
				if !ok {
					ps.addf("%s: %s depends on %s, which is not defined", label(p), name, dep)
					continue
				}
				healthy := hasHealthcheck(target)
				if !healthy && target.Build != nil {
					healthy, _ = dockerfileHealth(filepath.Join(target.Build.Context, target.Build.Dockerfile))
				}
				if !healthy {
					ps.addf("%s: %s waits for %s to be healthy, but %s has no health check", label(p), name, dep, dep)
				}
			}
		}
	}
	return ps
}

// checkWiring: every address in a service's environment names a service of the project on a
// network they share, on the port that service listens on, with the credentials it was given.
func checkWiring(s *composeSet) problems {
	var ps problems
	for _, p := range []*types.Project{s.mergedAll, s.allInOne} {
		all := allServices(p)
		for name, svc := range all {
			for _, key := range []string{"DATABASE_URL", "DATABASE_READ_URL", "REDIS_URL", "SCHEDULER_ADDR"} {
				v, ok := envValue(svc, key)
				if !ok || v == "" {
					continue
				}
				host, port := "", ""
				var u *url.URL
				if key == "SCHEDULER_ADDR" {
					var err error
					if host, port, err = net.SplitHostPort(v); err != nil {
						ps.addf("%s: %s %s=%q is not host:port", label(p), name, key, v)
						continue
					}
				} else {
					var err error
					if u, err = url.Parse(v); err != nil {
						ps.addf("%s: %s %s is not a URL: %v", label(p), name, key, err)
						continue
					}
					host, port = u.Hostname(), u.Port()
				}
				target, ok := all[host]
				if !ok {
					ps.addf("%s: %s %s names host %q, which is no service of the project", label(p), name, key, host)
					continue
				}
				if !shareNetwork(p, svc, target) {
					ps.addf("%s: %s cannot reach %s (%s): they share no network", label(p), name, host, key)
				}
				switch {
				case key == "SCHEDULER_ADDR":
					listen, ok := envValue(target, "SCHEDULER_GRPC_ADDR")
					if !ok {
						listen = ":9091"
					}
					if port != portOf(listen) {
						ps.addf("%s: %s %s uses port %s, but %s listens on %s", label(p), name, key, port, host, listen)
					}
				case strings.HasPrefix(target.Image, "postgres:"):
					if port != "5432" {
						ps.addf("%s: %s %s uses port %q, want 5432", label(p), name, key, port)
					}
					user, _ := envValue(target, "POSTGRES_USER")
					pass, _ := envValue(target, "POSTGRES_PASSWORD")
					db, _ := envValue(target, "POSTGRES_DB")
					gotPass, _ := u.User.Password()
					if u.User.Username() != user || gotPass != pass || strings.TrimPrefix(u.Path, "/") != db {
						ps.addf("%s: %s %s does not match %s's POSTGRES_USER, POSTGRES_PASSWORD and POSTGRES_DB", label(p), name, key, host)
					}
				case strings.HasPrefix(target.Image, "redis:"):
					if port != "6379" {
						ps.addf("%s: %s %s uses port %q, want 6379", label(p), name, key, port)
					}
				}
			}
		}
	}
	return ps
}

// checkSharedProject: the standard and storage files, started apart, must land in one project
// on a network they both declare (neither external, so either may be started first, and the
// merged form still creates it), with the gateway and scheduler on it.
func checkSharedProject(s *composeSet) problems {
	var ps problems
	for _, p := range []*types.Project{s.storage, s.standard, s.merged} {
		if p.Name != projectName {
			ps.addf("%s: project name %q, want %q (name: in the file)", label(p), p.Name, projectName)
		}
	}
	if s.allInOne.Name == projectName {
		ps.addf("%s: the all-in-one project must not share the name %q with the standard deployment", label(s.allInOne), projectName)
	}
	for _, name := range storageServices {
		svc, ok := s.storage.Services[name]
		if !ok {
			continue
		}
		for key := range svc.Networks {
			n := s.storage.Networks[key]
			if n.Name == "" || n.Name == s.storage.Name+"_"+key {
				ps.addf("%s: network %q of %s needs an explicit name: shared by both files", label(s.storage), key, name)
			}
			if n.External {
				ps.addf("%s: network %q must not be external", label(s.storage), key)
			}
			for _, user := range []string{"gateway", "scheduler"} {
				if !slices.Contains(networkNames(s.standard, s.standard.Services[user]), n.Name) {
					ps.addf("%s: %s is not on network %q, where %s is", label(s.standard), user, n.Name, name)
				}
			}
		}
	}
	for key, n := range s.standard.Networks {
		if n.External {
			ps.addf("%s: network %q must not be external: the merged form would then need it to exist", label(s.standard), key)
		}
	}
	return ps
}

func checkAllInOne(s *composeSet) problems {
	var ps problems
	p := s.allInOne
	for _, name := range []string{"agentserver", "postgres", "redis"} {
		if _, ok := p.Services[name]; !ok {
			ps.addf("%s: service %q is missing", label(p), name)
		}
	}
	as, ok := p.Services["agentserver"]
	if !ok {
		return ps
	}
	if !slices.Equal([]string(as.Command), []string{"dev"}) {
		ps.addf("%s: agentserver must run `agentserver dev`, command is %v", label(p), as.Command)
	}
	if spec, _, ok := imageFor(as.Build); !ok || spec.file != "agentserver.Dockerfile" {
		ps.addf("%s: agentserver must build from %s/agentserver.Dockerfile", label(p), dockerfileDir)
	}
	for _, dep := range []string{"postgres", "redis"} {
		if as.DependsOn[dep].Condition != types.ServiceConditionHealthy {
			ps.addf("%s: agentserver must wait for %s to be healthy", label(p), dep)
		}
	}
	return ps
}

// autoscalerDriver is the part of the autoscaler's driver file these checks read.
type autoscalerDriver struct {
	Kind    string `yaml:"kind"`
	Compose struct {
		Files    []string          `yaml:"files"`
		Project  string            `yaml:"project"`
		Services map[string]string `yaml:"services"`
	} `yaml:"compose"`
}

// autoscalerPolicy is the part of the autoscaler's policy file these checks read.
type autoscalerPolicy struct {
	Pools []struct {
		Name string `yaml:"name"`
	} `yaml:"pools"`
	Gateways any `yaml:"gateways"`
}

// checkAutoscaler: the autoscaler reads its policy and compose driver from this repository,
// mounted read-only, and drives this project through the Docker socket; every pool of the
// policy maps to a service whose workers report that pool.
func checkAutoscaler(s *composeSet) problems {
	var ps problems
	p := s.standardAll
	svc, ok := p.Services["autoscaler"]
	if !ok {
		return ps // reported by checkStandardServices
	}
	mount, socket := "", false
	for _, v := range svc.Volumes {
		switch {
		case v.Type != types.VolumeTypeBind:
		case v.Source == "/var/run/docker.sock":
			socket = true
		case filepath.Clean(v.Source) == filepath.Clean(s.dir):
			mount = v.Target
			if !v.ReadOnly {
				ps.addf("%s: autoscaler must mount the repository read-only", label(p))
			}
		}
	}
	if !socket {
		ps.addf("%s: autoscaler needs /var/run/docker.sock for the compose driver", label(p))
	}
	if mount == "" {
		ps.addf("%s: autoscaler does not mount the repository, where its policy and driver are", label(p))
		return ps
	}
	// inRepo maps a path in the container to the repository file it shows.
	inRepo := func(what, containerPath string) (string, bool) {
		rel, ok := strings.CutPrefix(containerPath, strings.TrimSuffix(mount, "/")+"/")
		file := filepath.Join(s.dir, filepath.FromSlash(rel))
		if _, err := os.Stat(file); !ok || err != nil {
			ps.addf("%s: autoscaler %s %s is no file of the repository mounted at %s", label(p), what, containerPath, mount)
			return "", false
		}
		return file, true
	}
	load := func(key string, into any) bool {
		v, _ := envValue(svc, key)
		file, ok := inRepo(key, v)
		if !ok {
			return false
		}
		data, err := os.ReadFile(file)
		if err == nil {
			err = yaml.Unmarshal(data, into)
		}
		if err != nil {
			ps.addf("%s: autoscaler %s: %v", label(p), key, err)
			return false
		}
		return true
	}

	var drv autoscalerDriver
	if !load("AUTOSCALER_DRIVER", &drv) {
		return ps
	}
	if drv.Kind != "compose" {
		ps.addf("%s: the autoscaler's driver kind is %q, want compose", label(p), drv.Kind)
	}
	if drv.Compose.Project != projectName {
		ps.addf("%s: the autoscaler's driver scales project %q, want %q", label(p), drv.Compose.Project, projectName)
	}
	if !slices.ContainsFunc(drv.Compose.Files, func(f string) bool {
		file, ok := inRepo("driver file", f)
		return ok && file == filepath.Join(s.dir, fileStandard)
	}) {
		ps.addf("%s: the autoscaler's driver must read %s", label(p), fileStandard)
	}
	for pool, name := range drv.Compose.Services {
		target, ok := allServices(p)[name]
		if !ok {
			ps.addf("%s: the autoscaler's driver scales pool %s as service %q, which does not exist", label(p), pool, name)
			continue
		}
		if got, _ := envValue(target, "WORKER_POOL"); got != pool {
			ps.addf("%s: the autoscaler scales pool %s as %s, whose workers report pool %q", label(p), pool, name, got)
		}
	}

	var pol autoscalerPolicy
	if !load("AUTOSCALER_POLICY", &pol) {
		return ps
	}
	for _, pool := range pol.Pools {
		if _, ok := drv.Compose.Services[pool.Name]; !ok {
			ps.addf("%s: the autoscaler's policy scales pool %s, which its driver does not map to a service", label(p), pool.Name)
		}
	}
	if pol.Gateways != nil {
		ps.addf("%s: the autoscaler's policy scales gateways, but the gateway publishes fixed host ports", label(p))
	}
	return ps
}
