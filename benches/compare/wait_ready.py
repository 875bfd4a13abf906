#!/usr/bin/env python3
"""wait_ready.py HOME [TIMEOUT_S] [PID] -- wait until the `tandem serve` of HOME has started.

Started means: its start-up scan of every folder is done and it accepts and dials peers. The
daemon binds its control socket (HOME/control.sock) first, before that scan, so the socket's
existence no longer says so. Readiness is detected by asking the daemon: every 20 ms this
sends the control socket's status request (one JSON line, `{"op":"status"}`; see
src/daemon/control.rs) and reads the one-line reply, until it says `"starting": false` (the
field `tandem status --json` shows too). It talks to the socket itself rather than running
`tandem status --json` in a loop because that command also reads the whole index (about
0.1 CPU-seconds per call at 50,000 files), which would compete with the very scan the
benchmarks time.

Exit status: 0 started; 1 not started within TIMEOUT_S (default 1800); 3 PID (the daemon,
if given) is gone.
"""
import json
import os
import socket
import sys
import time

home = sys.argv[1]
timeout = float(sys.argv[2]) if len(sys.argv) > 2 else 1800.0
pid = int(sys.argv[3]) if len(sys.argv) > 3 else None
path = os.path.join(home, "control.sock")
deadline = time.monotonic() + timeout


def started():
    """True when the daemon answers that it is no longer starting."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(10)
            s.connect(path)
            s.sendall(b'{"op":"status"}\n')
            line = s.makefile("rb").readline()
        reply = json.loads(line)
    except (OSError, ValueError):
        return False  # not bound yet, or a daemon stopping: ask again
    return reply.get("reply") == "status" and reply.get("starting") is False


def gone(pid):
    """True when process `pid` has exited (a zombie not yet reaped counts as exited)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


while not started():
    if pid is not None and gone(pid):
        print(f"tandem serve (pid {pid}) exited before it started", file=sys.stderr)
        sys.exit(3)
    if time.monotonic() > deadline:
        print(f"tandem serve of {home} not started after {timeout:.0f} s", file=sys.stderr)
        sys.exit(1)
    time.sleep(0.02)
