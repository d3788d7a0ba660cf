//go:build unix

package pgserver

import (
	"errors"
	"fmt"
	"os"
	"os/user"
	"path/filepath"
	"slices"
	"strconv"
	"syscall"
)

// osIdentity is the unprivileged OS user that initdb and postgres run as when
// this process is root: PostgreSQL refuses to run as root.
type osIdentity struct {
	name   string
	uid    uint32
	gid    uint32
	groups []uint32
}

// lookupIdentity returns the identity to switch to, or nil when this process
// is not root (then the server runs as the current user).
func lookupIdentity(name string) (*osIdentity, error) {
	if os.Geteuid() != 0 {
		return nil, nil
	}
	u, err := user.Lookup(name)
	if err != nil {
		return nil, fmt.Errorf("running as root, so postgres must run as OS user %q, which cannot be looked up (%w): "+
			"install the postgresql package (it creates that user) or create it with `useradd --system %s`", name, err, name)
	}
	id := &osIdentity{name: name}
	uid, err := strconv.ParseUint(u.Uid, 10, 32)
	if err != nil {
		return nil, fmt.Errorf("parsing uid %q of OS user %s: %w", u.Uid, name, err)
	}
	gid, err := strconv.ParseUint(u.Gid, 10, 32)
	if err != nil {
		return nil, fmt.Errorf("parsing gid %q of OS user %s: %w", u.Gid, name, err)
	}
	if uid == 0 {
		return nil, fmt.Errorf("OS user %s is root; postgres needs an unprivileged user", name)
	}
	id.uid, id.gid = uint32(uid), uint32(gid)
	gids, err := u.GroupIds()
	if err != nil {
		return nil, fmt.Errorf("listing groups of OS user %s: %w", name, err)
	}
	for _, g := range gids {
		if n, err := strconv.ParseUint(g, 10, 32); err == nil {
			id.groups = append(id.groups, uint32(n))
		}
	}
	return id, nil
}

// procAttr returns the process attributes of initdb and postgres: their own
// process group, so that a Ctrl-C on the terminal reaches only the parent,
// which then stops postgres in order; the OS user switch when root; and, on
// Linux, a parent-death signal.
func procAttr(id *osIdentity) *syscall.SysProcAttr {
	attr := &syscall.SysProcAttr{Setpgid: true}
	if id != nil {
		attr.Credential = &syscall.Credential{Uid: id.uid, Gid: id.gid, Groups: id.groups}
	}
	setPdeathsig(attr)
	return attr
}

// chownTo hands path to id; a no-op when id is nil.
func chownTo(path string, id *osIdentity) error {
	if id == nil {
		return nil
	}
	if err := os.Chown(path, int(id.uid), int(id.gid)); err != nil {
		return fmt.Errorf("handing %s to OS user %s: %w", path, id.name, err)
	}
	return nil
}

// checkTraversable verifies that id may search every directory above path, so
// that postgres, running as id, reaches its data directory. It reads mode bits
// only (not ACLs): a directory it refuses may still work, but then postgres
// itself would have failed with a less helpful message.
func checkTraversable(path string, id *osIdentity) error {
	if id == nil {
		return nil
	}
	for dir := filepath.Dir(path); ; dir = filepath.Dir(dir) {
		fi, err := os.Stat(dir)
		if err != nil {
			return fmt.Errorf("checking access to %s: %w", dir, err)
		}
		st, ok := fi.Sys().(*syscall.Stat_t)
		if !ok {
			return nil
		}
		var bit os.FileMode = 0o001
		switch {
		case st.Uid == id.uid:
			bit = 0o100
		case st.Gid == id.gid || slices.Contains(id.groups, st.Gid):
			bit = 0o010
		}
		if fi.Mode().Perm()&bit == 0 {
			return fmt.Errorf("postgres runs as OS user %s (PostgreSQL refuses root), which cannot reach %s: "+
				"directory %s (mode %s, owner uid %d) is not searchable by it; choose a data directory it can reach "+
				"(e.g. under /var/lib or /tmp) or run `chmod o+x %s`", id.name, path, dir, fi.Mode(), st.Uid, dir)
		}
		if dir == filepath.Dir(dir) {
			return nil
		}
	}
}

// processAlive reports whether a process with this pid exists.
func processAlive(pid int) bool {
	err := syscall.Kill(pid, 0)
	return err == nil || errors.Is(err, syscall.EPERM)
}
