#!/usr/bin/env python3
"""Test executor for the worker's real-GPU test: executor protocol v1.

For each step it asks CUDA (through PyTorch, when the machine has it) what it sees: how many
devices, the first one's name and UUID. It then fills state["alloc_bytes"] bytes of that
device's memory and writes what it saw, as JSON, to state["out"] (temporary name, then
renamed). It holds the memory until the file state["release"] exists, frees it, and answers.
Errors are reported in the JSON (key "error") rather than raised, so the test can say what
went wrong.
"""

import json
import os
import sys
import time


def main():
    for line in sys.stdin:
        req = json.loads(line)
        state = req.get("state") or {}
        seen = {"run": req["run"], "CUDA_VISIBLE_DEVICES": os.environ.get("CUDA_VISIBLE_DEVICES")}
        block = None
        try:
            import torch

            seen["device_count"] = torch.cuda.device_count()
            props = torch.cuda.get_device_properties(0)
            seen["name"] = props.name
            seen["uuid"] = "GPU-" + str(props.uuid)
            block = torch.ones(int(state["alloc_bytes"]), dtype=torch.uint8, device="cuda:0")
            torch.cuda.synchronize()
            seen["allocated_bytes"] = block.numel()
        except Exception as e:  # reported, not raised: the test prints it
            seen["error"] = repr(e)
        with open(state["out"] + ".tmp", "w") as f:
            json.dump(seen, f)
        os.rename(state["out"] + ".tmp", state["out"])
        deadline = time.monotonic() + 120
        while not os.path.exists(state["release"]) and time.monotonic() < deadline:
            time.sleep(0.005)
        if block is not None:
            del block
            torch.cuda.empty_cache()
        sys.stdout.write(json.dumps({"type": "result", "id": req["id"], "state": seen}) + "\n")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
