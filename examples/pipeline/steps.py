#!/usr/bin/env python3
"""Example executor (protocol v1, stdlib only) for multi-step flows, maps, interrupts and threads.

Steps by name: split (state.items = range(state.n)), process (a map item -> {"value": item*10,
"pid": pid}), combine (state.total = sum of values), ask (interrupts with a prompt until
resumed; then stores the answer), count (state.count += 1). Each call is appended as one JSON
line to config.record when set.
"""
import json
import os
import sys


def send(msg):
    sys.stdout.write(json.dumps(msg) + "\n")
    sys.stdout.flush()


for line in sys.stdin:
    req = json.loads(line)
    rid, step, state, config = req["id"], req["step"], dict(req.get("state") or {}), req.get("config") or {}
    if config.get("record"):
        with open(config["record"], "a") as f:
            f.write(json.dumps({"run": req["run"], "step": step, "index": req.get("index"), "pid": os.getpid(),
                                "epoch": req.get("epoch")}) + "\n")
    send({"type": "event", "id": rid, "data": {"step": step, "index": req.get("index")}})
    if step == "split":
        state["items"] = list(range(int(state.get("n", 0))))
    elif step == "process":
        state = {"value": req["item"] * 10, "pid": os.getpid()}
    elif step == "combine":
        state["total"] = sum(i["value"] for i in state["items"])
    elif step == "ask":
        if "resume" not in req:
            send({"type": "interrupt", "id": rid, "prompt": {"question": "proceed?", "seen": state.get("count", 0)}})
            continue
        state["answer"] = req["resume"]
    elif step == "count":
        state["count"] = int(state.get("count", 0)) + 1
    send({"type": "result", "id": rid, "state": state})
