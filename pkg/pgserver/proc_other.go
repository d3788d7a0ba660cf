//go:build !unix

package pgserver

import (
	"os"
	"syscall"
)

// osIdentity is unused where there is no root to step down from.
type osIdentity struct{ name string }

func lookupIdentity(string) (*osIdentity, error) { return nil, nil }
func procAttr(*osIdentity) *syscall.SysProcAttr  { return nil }
func chownTo(string, *osIdentity) error          { return nil }
func checkTraversable(string, *osIdentity) error { return nil }

func processAlive(pid int) bool {
	p, err := os.FindProcess(pid)
	if err != nil {
		return false
	}
	_ = p.Release()
	return true
}
