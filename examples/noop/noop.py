#!/usr/bin/env python3
"""No-op: answers every step request of executor protocol v1 at once (stdlib only).

Each request gets one result line whose state is the request's state (for a map item, the
item). No events, no logs: with it, the time a run takes is agentserver's own. Its Go twin
(main.go, same directory) does the same several times faster, and its C twin (c/noop.c) faster
still: that one is what the benchmark (bench/cmd/benchall) runs.
"""

import json
import sys


def main():
    out = sys.stdout
    for line in sys.stdin:
        if not line.strip():
            continue
        try:
            request = json.loads(line)
        except ValueError:
            continue
        if request.get("type") != "step":
            continue
        state = request["item"] if "item" in request else (request.get("state") or {})
        out.write(json.dumps({"type": "result", "id": request.get("id"), "state": state},
                             separators=(",", ":")) + "\n")
        out.flush()


if __name__ == "__main__":
    main()
