#!/usr/bin/env python3
"""Test executor (protocol v1, stdlib only): answers each step with the state it was sent,
written compactly with sorted keys, as the worker encodes it (so for the plain values the
tests use, byte for byte the request's state); with state["change"] it adds a key, and
with state["pid"] its process id as "pid"."""

import json
import os
import sys

for line in sys.stdin:
    req = json.loads(line)
    state = req.get("state") or {}
    if state.get("change"):
        state = dict(state, changed=True)
    if state.get("pid"):
        state = dict(state, pid=os.getpid())
    out = '{"type":"result","id":%s,"state":%s}' % (
        json.dumps(req["id"]), json.dumps(state, separators=(",", ":"), sort_keys=True))
    sys.stdout.write(out + "\n")
    sys.stdout.flush()
