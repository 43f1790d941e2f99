"""A remote shell (:RemoteShell) as root and as an unprivileged user: made in remote_root
(`~` expanded), on the user's own tmux socket; it outlives sshd restarts (the terminal
reattaches by itself, the shell's jobs go on) and :RemoteShell kill leaves nothing behind."""
from __future__ import annotations

import os
import re

from conftest import wait_for

from .conftest import assert_guarantees, log_problems

RESTARTS = 2


def text(eng, term: int) -> str:
    return b"".join(p["data"] for k, p in eng.reports if k == "shell_output" and p["id"] == term).decode(errors="replace")


def attached(eng, term: int) -> int:
    return len([p for k, p in eng.reports if k == "shell_state" and p["id"] == term and p["state"] == "attached"])


def test_shell_survives_sshd_restarts(remote, fault_project, engines, screen, figures, isolated_state):
    proj = fault_project()
    eng = engines.new()
    eng.call_sync("push", proj.ctx(), {}, timeout=60)
    eng.call_sync("shell_open", proj.ctx(), {"id": 1, "name": "main", "cols": 200, "rows": 40}, timeout=60)
    failed: list[str] = []
    eng.call_sync("shell_input", proj.ctx(), {"id": 1, "data": 'echo "WHO=$(id -un) AT=$PWD SOCK=${TMUX%%,*}"\r'})
    m = wait_for(lambda: re.search(r"WHO=(\S+) AT=(\S+) SOCK=(\S+)", text(eng, 1)), 20, what="the shell's answer")
    who, at, sock = m.groups()
    if who != remote.user:
        failed.append(f"the shell runs as {who}, not {remote.user}")
    if os.path.realpath(at) != os.path.realpath(proj.remote_dir):
        failed.append(f"the shell starts in {at}, not remote_root {proj.remote_root}")
    st = os.stat(sock)
    if st.st_uid != remote.uid:
        failed.append(f"the tmux socket {sock} belongs to uid {st.st_uid}, not the remote user's")
    # a job in the shell ticks on while sshd goes down and up again
    eng.call_sync("shell_input", proj.ctx(), {"id": 1, "data": "(while :; do date +%s%N > tick; sleep 0.1; done) &\r"})
    tick = proj.remote_dir / "tick"
    wait_for(tick.exists, 20, what="the shell's job")
    reattached = 0
    for i in range(RESTARTS):
        remote.restart_sshd()
        try:
            wait_for(lambda: attached(eng, 1) >= 2 + i, 60, what="the terminal attached again")
            reattached += 1
        except AssertionError as e:
            failed.append(f"restart {i}: {e}")
            break
        before = tick.read_text()
        marker = f"again-{i}-$((6*7))"
        eng.call_sync("shell_input", proj.ctx(), {"id": 1, "data": f"echo {marker}\r"})
        try:
            wait_for(lambda: f"again-{i}-42" in text(eng, 1), 20, what="input after the restart")
            wait_for(lambda: tick.read_text() != before, 10, what="the shell's job ticking")
        except AssertionError as e:
            failed.append(f"restart {i}: {e}")
    eng.call_sync("shell_kill", proj.ctx(), {"name": "main"}, timeout=60)
    failed += [f"on screen: {s}" for s in screen.seen()]
    failed += [f"in the log: {s}" for s in log_problems(isolated_state)]
    engines.close(eng)
    procs = remote.settle()
    figures.add("sshd restarted with a shell open", remote.kind, RESTARTS, RESTARTS - reattached, len(procs),
                f"reattached {reattached} of {RESTARTS}, its job went on; "
                f"shell in remote_root as {who}, tmux socket {os.path.basename(os.path.dirname(sock))}/"
                f"{os.path.basename(sock)} owned by uid {st.st_uid}")
    assert not procs, remote.describe(procs)
    assert_guarantees(failed)
