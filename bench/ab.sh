#!/bin/bash
# Interleaved A/B of agentserver trees with benchall --only ours: PAIRS rounds, each running
# every TREE once in turn, printing per workload (sustained with 8 and 16 creators,
# burn-down, fixed rate) the throughput and every process's CPU per run. This machine's
# speed drifts from one minute to the next; compare adjacent lines, and for the sustained
# workloads compare CPU per run against agentctl's (the load client, which
# the trees share) rather than absolute rates. Build each tree's binaries first (benchall
# builds them itself from --repo).
#
#   git worktree add /tmp/base HEAD~1
#   bench/ab.sh 3 "$PWD" /tmp/base
#   AB_BURNDOWN=150000 bench/ab.sh 3 "$PWD" /tmp/base   # burn-down size (default 30,000)
#   AB_SESSIONS=500 bench/ab.sh 3 "$PWD" /tmp/base      # also the sessions workload on 500 threads
set -euo pipefail
pairs=${1:?usage: ab.sh PAIRS TREE...}
shift
cd "$(dirname "$0")"
out=$(mktemp)
trap 'rm -f "$out"' EXIT
for _ in $(seq "$pairs"); do
  for tree in "$@"; do
    GOWORK=off go run ./cmd/benchall --only ours --rounds 1 --sustained-duration 8s \
      --sustained-max 100000 --burndown ${AB_BURNDOWN:-30000} --rate-duration 5s --sessions ${AB_SESSIONS:-0} --repo "$tree" --out "$out" >/dev/null 2>&1
    python3 - "$tree" "$out" <<'PY'
import json, sys
tree, path = sys.argv[1], sys.argv[2]
runs = json.load(open(path))["results"]["ours"]
line = [tree]
for w in ("sustained", "sustained_wide", "burndown", "sessions"):
    if w not in runs:
        continue
    r = runs[w][0]
    cpu = {c["name"]: c["per_run_us"] for c in r["cpu"]}
    line.append(f"{w} {r['throughput_per_s']:.0f}/s µs/run: agentserver {cpu.get('agentserver', 0):.0f}"
                f" executors {cpu.get('agentserver-children', 0):.0f} postgres {cpu.get('postgres', 0):.0f}"
                f" agentctl {cpu.get('agentctl', 0):.0f}")
lat = runs["latency"][0]["enqueue_to_start_ms"]
line.append(f"500/s start p50 {lat['p50']:.2f} p99 {lat['p99']:.2f} ms")
print(" | ".join(line), flush=True)
PY
  done
done
