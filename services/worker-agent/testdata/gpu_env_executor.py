#!/usr/bin/env python3
"""Test executor for the worker's GPU tests: executor protocol v1, stdlib only.

For each step it writes what it sees of the GPU environment, as JSON, to state["out"]
(written to a temporary name and renamed, so a reader never sees half a file), then waits
until the file state["release"] exists before it answers, so a test can hold runs (and
their GPUs) for as long as it needs without any timing.
"""

import json
import os
import sys
import time


def main():
    for line in sys.stdin:
        req = json.loads(line)
        state = req.get("state") or {}
        seen = {
            "present": "CUDA_VISIBLE_DEVICES" in os.environ,
            "CUDA_VISIBLE_DEVICES": os.environ.get("CUDA_VISIBLE_DEVICES"),
            "run": req["run"],
        }
        with open(state["out"] + ".tmp", "w") as f:
            json.dump(seen, f)
        os.rename(state["out"] + ".tmp", state["out"])
        deadline = time.monotonic() + 60
        while not os.path.exists(state["release"]) and time.monotonic() < deadline:
            time.sleep(0.005)
        sys.stdout.write(json.dumps({"type": "result", "id": req["id"], "state": seen}) + "\n")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
