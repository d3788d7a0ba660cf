#!/bin/bash
# real-gpu-check.sh: the worker-agent's GPU code against a real NVIDIA GPU.
#
#   deploy/scripts/real-gpu-check.sh build DIR   # here (needs Go): test binaries and worker-agent into DIR
#   deploy/scripts/real-gpu-check.sh run DIR OUT # on the GPU machine (needs the driver, python3
#                                                # and PyTorch; not Go), from the repository root
#
# "run" records what the driver says (nvidia-smi, as the worker reads it, with and without a
# header; nvidia-smi -q), runs package internal/gpu's tests and the worker's GPU tests with
# TestOnRealGPU switched on (AGENTSERVER_TEST_REAL_GPU=1), and `worker-agent --probe` with
# each discovery mode, writing each into OUT. It exits non-zero when a test fails.
set -euo pipefail
cmd=${1:-}; dir=${2:?usage: $0 build DIR | run DIR OUT}
root=$(cd "$(dirname "$0")/../.." && pwd)
dir=$(cd "$dir" 2>/dev/null && pwd || { mkdir -p "$dir" && cd "$dir" && pwd; })
case $cmd in
build)
	cd "$root/services/worker-agent"
	go test -c -ldflags='-s -w' -o "$dir/worker.test" ./worker
	go test -c -ldflags='-s -w' -o "$dir/gpu.test" ./internal/gpu
	CGO_ENABLED=0 go build -ldflags='-s -w' -o "$dir/worker-agent" ./cmd/worker-agent
	echo "built into $dir; on the GPU machine: $0 run $dir OUT"
	;;
run)
	out=${3:?usage: $0 run DIR OUT}
	mkdir -p "$out"
	q=index,uuid,name,memory.total,memory.used,utilization.gpu,temperature.gpu
	nvidia-smi --query-gpu=$q --format=csv,noheader,nounits >"$out/smi-noheader.csv"
	nvidia-smi --query-gpu=$q --format=csv,nounits >"$out/smi-header.csv"
	nvidia-smi -q >"$out/smi-q.txt"
	status=0
	(cd "$root/services/worker-agent/internal/gpu" && timeout 120 "$dir/gpu.test" -test.v -test.count=1) >"$out/gpu-tests.log" 2>&1 || status=1
	(cd "$root/services/worker-agent/worker" && AGENTSERVER_TEST_REAL_GPU=1 timeout 240 "$dir/worker.test" -test.v -test.count=1 \
		-test.run 'TestOnRealGPU|TestGPU|TestParseGPUSlots|TestProbeCommand') >"$out/worker-tests.log" 2>&1 || status=1
	for d in auto nvml nvidia-smi; do
		echo "== WORKER_SLOTS=cpu=2,gpu=auto WORKER_GPU_DISCOVERY=$d worker-agent --probe"
		WORKER_SLOTS=cpu=2,gpu=auto WORKER_GPU_DISCOVERY=$d timeout 30 "$dir/worker-agent" --probe || status=1
	done >"$out/probe.txt" 2>&1
	grep -h -E '^(--- |ok|FAIL|PASS)' "$out/gpu-tests.log" "$out/worker-tests.log"
	grep -h -A8 'RUN   TestOnRealGPU' "$out/worker-tests.log"
	exit $status
	;;
*)
	echo "usage: $0 build DIR | run DIR OUT" >&2
	exit 2
	;;
esac
