#!/usr/bin/env python3
"""Test executor that takes several requests at once (an executor of `concurrency` above 1):
each request is handled on a thread of its own and answered by its id, in whatever order the
requests end. Protocol v1 lines over stdin/stdout, stdlib only.

A step does what state["action"] says (default "ok"); a map item answers its item doubled.
"""

import json
import os
import sys
import threading
import time

PID = os.getpid()
out_lock = threading.Lock()
cond = threading.Condition()
in_flight = 0


def send(message):
    with out_lock:
        sys.stdout.write(json.dumps(message) + "\n")
        sys.stdout.flush()


def wait_for_file(path, limit=30):
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline and not os.path.exists(path):
        time.sleep(0.005)
    return os.path.exists(path)


def handle(req):
    global in_flight
    rid, state = req["id"], req.get("state") or {}
    if "item" in req:
        send({"type": "result", "id": rid, "state": {"value": req["item"] * 2, "pid": PID}})
        return
    action = state.get("action", "ok")
    if action == "ok":
        send({"type": "result", "id": rid, "state": {"pid": PID, "run": req["run"]}})
    elif action == "gather":
        # Answers once state["n"] requests are in flight in this process at once (or after
        # 30 s): proves, without timing, that the worker sent them without waiting.
        with cond:
            in_flight += 1
            cond.notify_all()
            cond.wait_for(lambda: in_flight >= state["n"], timeout=30)
            seen = in_flight
        for i in range(3):
            send({"type": "event", "id": rid, "data": {"run": req["run"], "n": i}})
        send({"type": "result", "id": rid, "state": {"pid": PID, "run": req["run"], "seen": seen}})
    elif action == "sleep":
        time.sleep(state["seconds"])
        send({"type": "event", "id": rid, "data": {"run": req["run"]}})
        send({"type": "result", "id": rid, "state": {"pid": PID, "run": req["run"]}})
    elif action == "await":
        # Answers once the file state["file"] exists.
        send({"type": "event", "id": rid, "data": {"waiting": True}})
        wait_for_file(state["file"])
        send({"type": "result", "id": rid, "state": {"pid": PID}})
    elif action == "hang":
        send({"type": "event", "id": rid, "data": {"hanging": True, "pid": PID}})
        time.sleep(1000)
    elif action == "exit_after":
        # Exits once the file state["file"] exists, answering nothing.
        print("about to exit", file=sys.stderr, flush=True)
        send({"type": "event", "id": rid, "data": {"waiting": True}})
        wait_for_file(state["file"])
        print("last words", file=sys.stderr, flush=True)
        os._exit(4)
    elif action == "stranger":
        # Answers a request that was never sent.
        send({"type": "result", "id": "nobody-sent-this", "state": {}})
    elif action == "stray_later":
        # Answers, then (idle by then) writes a line that answers nothing.
        send({"type": "result", "id": rid, "state": {"pid": PID}})
        time.sleep(0.1)
        send({"type": "result", "id": "stray", "state": {}})
    elif action == "stderr":
        print(f"a line from {rid}", file=sys.stderr, flush=True)
        send({"type": "result", "id": rid, "state": {"pid": PID}})
    else:
        send({"type": "error", "id": rid, "message": f"unknown action {action!r}"})


def main():
    while True:
        line = sys.stdin.readline()
        if not line:
            return
        threading.Thread(target=handle, args=(json.loads(line),), daemon=True).start()


if __name__ == "__main__":
    main()
