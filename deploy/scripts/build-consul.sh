#!/usr/bin/env bash
# build-consul.sh: builds the pinned Consul agent (v1.14.11, MPL-2.0) into
# <repo>/bin/consul from the tools/consul module, for the discovery tests
# (pkg/discovery) and for running distributed mode locally.
#
# tools/consul is its own module and is deliberately NOT in go.work: Consul's
# dependency graph is huge and must stay out of the services' builds, hence
# GOWORK=off. The version comes from tools/consul/go.mod and go.sum, so the
# build is reproducible and needs only the Go module proxy.
#
# Skips the build when bin/consul already reports the pinned version; set
# FORCE=1 to rebuild. The build takes a few minutes and about 2 GiB of RAM.
set -euo pipefail

want="v1.14.11"
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
out="$root/bin/consul"

if [[ "${FORCE:-0}" != 1 && -x "$out" ]] && "$out" version 2>/dev/null | head -n 1 | grep -qx "Consul $want"; then
	echo "build-consul: $out is already Consul $want"
	exit 0
fi

mkdir -p "$root/bin"
echo "build-consul: building Consul $want into $out (takes a few minutes)"
start=$SECONDS
# Build to a temporary name and rename, so an interrupted build never leaves a
# half-written binary that a later run would take for the real one.
(cd "$root/tools/consul" && GOWORK=off GOFLAGS="${GOFLAGS:-} -mod=readonly" CGO_ENABLED=0 \
	go build -trimpath -o "$out.tmp" github.com/hashicorp/consul)
mv -f "$out.tmp" "$out"
echo "build-consul: done in $((SECONDS - start))s: $("$out" version | head -n 1)"
