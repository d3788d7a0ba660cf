package pgserver

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
)

// ErrNoInstallation is returned (wrapped) by FindBinDir when no PostgreSQL
// server installation can be found on this machine.
var ErrNoInstallation = errors.New("no PostgreSQL server installation found")

// debianRoot is where Debian and Ubuntu install one directory per major version.
const debianRoot = "/usr/lib/postgresql"

// FindBinDir returns the directory that holds the PostgreSQL server binaries
// (initdb and postgres). It looks, in order, at $PG_BINDIR, at `pg_config
// --bindir` when that installation has initdb (a client-only pg_config, as
// from libpq-dev, is skipped), at the newest /usr/lib/postgresql/*/bin, and at
// initdb on $PATH. The error names the package to install when none is found.
func FindBinDir() (string, error) {
	if dir := os.Getenv("PG_BINDIR"); dir != "" {
		if !hasServerBinaries(dir) {
			return "", fmt.Errorf("PG_BINDIR=%s holds no initdb and postgres executables: point it at a PostgreSQL server installation's bin directory", dir)
		}
		return dir, nil
	}
	if out, err := exec.Command("pg_config", "--bindir").Output(); err == nil {
		if dir := strings.TrimSpace(string(out)); hasServerBinaries(dir) {
			return dir, nil
		}
	}
	if dir := newestDebianBinDir(); dir != "" {
		return dir, nil
	}
	if initdb, err := exec.LookPath("initdb"); err == nil {
		if real, err := filepath.EvalSymlinks(initdb); err == nil && hasServerBinaries(filepath.Dir(real)) {
			return filepath.Dir(real), nil
		}
	}
	return "", fmt.Errorf("%w (looked at $PG_BINDIR, pg_config --bindir, %s/*/bin and $PATH): "+
		"install it with `apt-get install postgresql` (Debian/Ubuntu; deploy/scripts/install-deps.sh does it), "+
		"or set PG_BINDIR to the directory holding initdb and postgres", ErrNoInstallation, debianRoot)
}

// debianBinDir returns the bin directory of major version major in the
// Debian layout, or "" when that version is not installed.
func debianBinDir(major string) string {
	dir := filepath.Join(debianRoot, major, "bin")
	if hasServerBinaries(dir) {
		return dir
	}
	return ""
}

func newestDebianBinDir() string {
	entries, err := os.ReadDir(debianRoot)
	if err != nil {
		return ""
	}
	var versions []string
	for _, e := range entries {
		if debianBinDir(e.Name()) != "" {
			versions = append(versions, e.Name())
		}
	}
	if len(versions) == 0 {
		return ""
	}
	slices.SortFunc(versions, compareVersions)
	return debianBinDir(versions[len(versions)-1])
}

// compareVersions orders PostgreSQL major versions numerically ("9.6" < "10" < "15").
func compareVersions(a, b string) int {
	as, bs := strings.Split(a, "."), strings.Split(b, ".")
	for i := 0; i < len(as) || i < len(bs); i++ {
		var x, y int
		if i < len(as) {
			x, _ = strconv.Atoi(as[i])
		}
		if i < len(bs) {
			y, _ = strconv.Atoi(bs[i])
		}
		if x != y {
			return x - y
		}
	}
	return strings.Compare(a, b)
}

func hasServerBinaries(dir string) bool {
	for _, name := range []string{"initdb", "postgres"} {
		fi, err := os.Stat(filepath.Join(dir, name))
		if err != nil || fi.IsDir() || fi.Mode().Perm()&0o111 == 0 {
			return false
		}
	}
	return true
}

// serverMajorVersion runs `postgres -V` ("postgres (PostgreSQL) 15.13 (Debian
// 15.13-0+deb12u1)") and returns the major version as PG_VERSION spells it:
// "15", or "9.6" for releases before 10.
func serverMajorVersion(binDir string) (string, error) {
	out, err := exec.Command(filepath.Join(binDir, "postgres"), "-V").Output()
	if err != nil {
		return "", fmt.Errorf("running %s -V: %w", filepath.Join(binDir, "postgres"), err)
	}
	_, rest, ok := strings.Cut(string(out), "(PostgreSQL) ")
	if !ok {
		return "", fmt.Errorf("unrecognised output of postgres -V: %q", out)
	}
	version, _, _ := strings.Cut(strings.TrimSpace(rest), " ")
	parts := strings.Split(version, ".")
	if n, err := strconv.Atoi(parts[0]); err == nil && n < 10 && len(parts) > 1 {
		return parts[0] + "." + parts[1], nil
	}
	// Development builds say "17devel" or "17beta1".
	major := parts[0]
	if i := strings.IndexFunc(major, func(r rune) bool { return r < '0' || r > '9' }); i >= 0 {
		major = major[:i]
	}
	return major, nil
}
