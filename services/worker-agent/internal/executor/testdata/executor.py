#!/usr/bin/env python3
"""Test executor for package executor: protocol v1 over stdin/stdout, stdlib only.

A plain step does what state["action"] says (default "ok"); a map item does what
config["map"] says (default "plain"). See handle() and handle_item().
"""

import glob
import json
import os
import subprocess
import sys
import time

PID = os.getpid()


def send(message):
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


def raw(text):
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def err(text):
    print(text, file=sys.stderr, flush=True)


def env_view():
    keys = ["AGENTSERVER_EXECUTOR", "AGENTSERVER_REPLICA", "AGENTSERVER_RUN", "CUDA_VISIBLE_DEVICES", "FROM_FLOW", "FROM_WORKER"]
    return {k: os.environ.get(k) for k in keys}


def handle_item(req):
    rid, item, index, config = req["id"], req["item"], req["index"], req.get("config") or {}
    mode = config.get("map", "plain")
    if isinstance(item, dict) and "fail" in item:
        send({"type": "error", "id": rid, "message": item["fail"], "retryable": False})
        return
    if mode == "sibling":
        # Record that this replica started an item, then block until another replica has
        # started one too: it proves two requests were in flight at once without timing.
        directory = config["dir"]
        open(os.path.join(directory, f"start-{PID}-{index}"), "w").close()
        deadline = time.monotonic() + 30
        sibling = False
        while time.monotonic() < deadline:
            others = [p for p in glob.glob(os.path.join(directory, "start-*")) if not os.path.basename(p).startswith(f"start-{PID}-")]
            if others:
                sibling = True
                break
            time.sleep(0.005)
        send({"type": "event", "id": rid, "data": {"index": index}})
        send({"type": "result", "id": rid, "state": {"value": item * 2, "pid": PID, "sibling": sibling}})
        return
    if mode == "keep":
        send({"type": "result", "id": rid})
        return
    send({"type": "result", "id": rid, "state": {"value": item, "pid": PID, "state": req["state"], "resume": req.get("resume")}})


def handle(req):
    rid, step, state = req["id"], req["step"], req.get("state") or {}
    action = state.get("action", "ok")
    if action == "ok":
        out = dict(state)
        out["visits"] = list(state.get("visits", [])) + [step]
        out["pid"] = PID
        out["env"] = env_view()
        out["cwd"] = os.getcwd()
        out["run"] = req["run"]
        out["attempt"] = req["attempt"]
        out["config"] = req["config"]
        message = {"type": "result", "id": rid, "state": out}
        routes = state.get("routes", {})
        if step in routes:
            message["next"] = routes[step]
        send(message)
    elif action == "events":
        for i in range(3):
            send({"type": "event", "id": rid, "data": {"n": i}})
        send({"type": "result", "id": rid, "state": {"done": True}})
    elif action == "garbage":
        raw("hello, this is not json")
    elif action == "badid":
        send({"type": "result", "id": "someone-else", "state": {}})
    elif action == "badtype":
        send({"type": "bogus", "id": rid})
    elif action == "badstate":
        send({"type": "result", "id": rid, "state": [1, 2]})
    elif action == "oversize":
        send({"type": "event", "id": rid, "data": {"blob": "x" * state["size"]}})
        send({"type": "result", "id": rid, "state": {}})
    elif action == "flood":
        for _ in range(state["count"]):
            send({"type": "event", "id": rid, "data": {"blob": "y" * 1000}})
        send({"type": "result", "id": rid, "state": {}})
    elif action == "error":
        send({"type": "error", "id": rid, "message": state.get("message", "it broke"), "retryable": True})
    elif action == "exit":
        err("first words")
        err("last words")
        sys.exit(state.get("code", 3))
    elif action == "result_then_exit":
        send({"type": "result", "id": rid, "state": {"pid": PID}})
        sys.exit(0)
    elif action == "unsolicited":
        # One write: the stray line is in the pipe before the worker reads the result.
        raw(json.dumps({"type": "result", "id": rid, "state": {"pid": PID}}) + "\nunsolicited chatter")
    elif action == "echo":
        # The state it was sent: compact with sorted keys (as the worker writes it) or spaced.
        spaced = state.get("spaced", False)
        encoded = json.dumps(state, sort_keys=True, separators=(", ", ": ") if spaced else (",", ":"))
        raw('{"type":"result","id":%s,"state":%s}' % (json.dumps(rid), encoded))
    elif action == "unsolicited_later":
        # The stray line comes after the result, while the replica is idle in its pool.
        send({"type": "result", "id": rid, "state": {"pid": PID}})
        time.sleep(state.get("delay", 0.1))
        raw("unsolicited chatter, later")
    elif action == "close_stdout":
        # Answers (unless told not to), then closes its stdout and lives on, reading stdin.
        if state.get("answer", True):
            send({"type": "result", "id": rid, "state": {"pid": PID}})
        else:
            err(f"pid {PID}")
        sys.stdout.close()
        os.close(1)
    elif action == "escape_and_exit":
        # A child in a session of its own (outside the replica's process group) keeps
        # stdout open after the replica exits without answering.
        child = subprocess.Popen(["sleep", "1000"], start_new_session=True)
        with open(state["pidfile"] + ".tmp", "w") as f:
            f.write(f"{child.pid}")
        os.rename(state["pidfile"] + ".tmp", state["pidfile"])
        err("escaping")
        os._exit(5)
    elif action == "stderr":
        for i in range(state["lines"]):
            err(f"line {i} " + "z" * state.get("width", 10))
        send({"type": "result", "id": rid, "state": {"pid": PID}})
    elif action == "interrupt":
        if "resume" in req:
            send({"type": "result", "id": rid, "state": {"answer": req["resume"]}})
        else:
            send({"type": "interrupt", "id": rid, "prompt": {"question": "continue?"}})
    elif action == "hang":
        child = subprocess.Popen(["sleep", "1000"])
        with open(state["pidfile"] + ".tmp", "w") as f:
            f.write(f"{PID} {child.pid}")
        os.rename(state["pidfile"] + ".tmp", state["pidfile"])
        send({"type": "event", "id": rid, "data": {"hanging": True}})
        time.sleep(1000)
    else:
        send({"type": "error", "id": rid, "message": f"unknown action {action!r}"})


def main():
    while True:
        line = sys.stdin.readline()
        if not line:
            return
        req = json.loads(line)
        if "item" in req:
            handle_item(req)
        else:
            handle(req)


if __name__ == "__main__":
    main()
