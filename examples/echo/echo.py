#!/usr/bin/env python3
"""Echo: the smallest executor speaking agentserver executor protocol v1 (stdlib only).

It is a long-lived process: the worker writes one JSON request per line on stdin and waits for
the answer on stdout before sending the next one. For each request it

  * answers an error line with that message when the state has "fail": "<message>";
  * writes a line to stderr and exits with status N when the state has "exit": N (to see how a
    crashing executor is reported and replaced);
  * asks for input (an interrupt) when the state has "interrupt": <prompt> and the request
    carries no "resume" value yet;
  * otherwise sends one event and returns its state plus "echo": true (plus "resume": <value>
    when the step was resumed). For a map item, the result is the item with "echo": true.

stdout carries the protocol only; everything else goes to stderr.
"""

import json
import os
import sys


def send(message):
    sys.stdout.write(json.dumps(message, separators=(",", ":")) + "\n")
    sys.stdout.flush()


def log(text):
    print(f"echo[{os.environ.get('AGENTSERVER_REPLICA', '?')}]: {text}", file=sys.stderr, flush=True)


def handle(request):
    rid = request.get("id")
    state = request.get("state") or {}

    if "exit" in state:
        log(f"exiting with status {state['exit']} as the state asks")
        sys.exit(int(state["exit"]))
    if "fail" in state:
        send({"type": "error", "id": rid, "message": str(state["fail"]), "retryable": False})
        return
    if "interrupt" in state and "resume" not in request:
        send({"type": "interrupt", "id": rid, "prompt": state["interrupt"]})
        return

    send({"type": "event", "id": rid, "data": {"step": request.get("step"), "pid": os.getpid()}})
    if "item" in request:
        result = {"item": request["item"], "index": request.get("index"), "echo": True}
    else:
        result = dict(state)
        result["echo"] = True
        if "resume" in request:
            result["resume"] = request["resume"]
    send({"type": "result", "id": rid, "state": result})


def main():
    log(f"started for {os.environ.get('AGENTSERVER_RUN', '?')}")
    while True:
        line = sys.stdin.readline()
        if not line:
            return  # the worker closed stdin: shut down quietly
        if not line.strip():
            continue
        try:
            request = json.loads(line)
        except ValueError as err:
            log(f"ignoring a request that is not JSON: {err}")
            continue
        if request.get("type") != "step":
            log(f"ignoring a request of unknown type {request.get('type')!r}")
            continue
        handle(request)


if __name__ == "__main__":
    main()
