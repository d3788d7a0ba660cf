//go:build tools

// Package consul pins the Consul agent (github.com/hashicorp/consul, MPL-2.0) that the
// discovery tests and local distributed-mode runs use. It is its own module, kept out of
// go.work on purpose, so Consul's large dependency graph never enters the services' builds.
// Build it with deploy/scripts/build-consul.sh.
package consul

import _ "github.com/hashicorp/consul"
