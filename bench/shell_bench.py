#!/usr/bin/env python3
""":RemoteShell keystroke round trip vs ssh + tmux attach, against one loopback sshd, in one run.

    .venv/bin/python bench/shell_bench.py [-n 40]

Measures the time from a key to its echo on the screen, on the same tmux session:
  * through Neovim: nvim_input() of the key in the :RemoteShell terminal until the host's
    shell_output report holding the echoed key reaches Lua (timed inside Neovim: on_input ->
    request to the Python host -> PTY channel -> tmux -> bash echo -> back the same way);
  * `ssh -tt -F cfg alias tmux -L remote-dev attach` in a local pty: a byte written to the
    pty until the echo is read from it (the terminal path of a plain ssh session).
Prints p50/p90 and the ratio.  Machines are noisy: compare the ratio, not absolute times.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import select
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO / "python"), str(REPO / "tests"), str(REPO / "bench")]

KEYS = "abcdefghijklmnopqrstuvwxyz0123456789"
LUA_HOOK = r"""
_G.sb = {}
local shell = require('remote_dev.shell')
local orig = shell.on_output
shell.on_output = function(p)
  orig(p)
  if _G.sb.want and not _G.sb.got and p.data:find(_G.sb.want, 1, true) then
    _G.sb.got = vim.uv.hrtime()
  end
end
"""


def pct(values: list[float], p: float) -> float:
    s = sorted(values)
    k = (len(s) - 1) * p / 100
    lo, hi = int(k), min(int(k) + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


def nvim_round_trips(api, n: int) -> list[float]:
    api.exec_lua(LUA_HOOK)
    out = []
    for i in range(n):
        key = KEYS[i % len(KEYS)]
        if i and i % len(KEYS) == 0:
            api.exec_lua("vim.api.nvim_input('<C-u>')")
            time.sleep(0.2)
        api.exec_lua("_G.sb.want = ...; _G.sb.got = nil; _G.sb.t0 = vim.uv.hrtime(); vim.api.nvim_input(...)", key)
        deadline = time.monotonic() + 10
        while True:
            got = api.exec_lua("return _G.sb.got and (_G.sb.got - _G.sb.t0) or false")
            if got:
                out.append(got / 1e6)
                break
            if time.monotonic() > deadline:
                raise TimeoutError(f"no echo of {key!r}")
            time.sleep(0.005)
        time.sleep(0.02)
    api.exec_lua("vim.api.nvim_input('<C-u>')")
    return out


def ssh_round_trips(argv: list[str], n: int) -> list[float]:
    master, slave = os.openpty()
    proc = subprocess.Popen(argv, stdin=slave, stdout=slave, stderr=slave, start_new_session=True)
    os.close(slave)
    try:
        def drain(timeout: float) -> bytes:
            data = b""
            while select.select([master], [], [], timeout)[0]:
                chunk = os.read(master, 65536)
                if not chunk:
                    break
                data += chunk
                timeout = 0.05
            return data
        drain(2.0)   # tmux draws the screen
        out = []
        for i in range(n):
            key = KEYS[i % len(KEYS)].encode()
            if i and i % len(KEYS) == 0:
                os.write(master, b"\x15")
                drain(0.2)
            t0 = time.perf_counter()
            os.write(master, key)
            seen = b""
            while key not in seen:
                if not select.select([master], [], [], 10)[0]:
                    raise TimeoutError(f"no echo of {key!r} through ssh")
                seen += os.read(master, 65536)
            out.append((time.perf_counter() - t0) * 1000)
            time.sleep(0.02)
            drain(0.0)
        os.write(master, b"\x15")
        return out
    finally:
        proc.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(5)
        os.close(master)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("-n", type=int, default=40, help="keystrokes per path (default 40)")
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="rd-shell-bench-"))
    os.environ["XDG_STATE_HOME"] = str(tmp / "state")
    from run_bench import NvimBench, make_project
    from support.sshd import start_sshd, stop_sshd

    sshd = start_sshd(tmp / "sshd")
    nv = None
    try:
        root = make_project(tmp, "proj", sshd, files=2)
        nv = NvimBench(tmp / "nvim", root)
        api = nv.api
        api.command("RemoteShell")
        deadline = time.monotonic() + 30
        while not api.exec_lua("for _, t in pairs(require('remote_dev.shell').terminals()) do "
                               "if t.state == 'attached' then return true end end return false"):
            if time.monotonic() > deadline:
                raise TimeoutError(f"the shell did not attach: {api.exec_lua('return _G.rd_messages')}")
            time.sleep(0.05)
        time.sleep(1.0)   # the login shell's prompt
        api.command("startinsert")
        nv_ms = nvim_round_trips(api, args.n)
        session = api.exec_lua("return require('remote_dev').status().services[1].remote_name or ''") or None
        nv.close()
        nv = None
        env = {**os.environ, "TMUX_TMPDIR": str(sshd.dir / "tmux")}
        if not session:
            names = subprocess.run(["tmux", "-L", "remote-dev", "ls", "-F", "#{session_name}"], env=env,
                                   capture_output=True, text=True).stdout.split()
            session = next(s for s in names if s.endswith("-sh-main"))
        ssh_ms = ssh_round_trips(["ssh", "-tt", "-F", str(sshd.ssh_config), sshd.alias,
                                  f"tmux -u -L remote-dev attach -t ={session}"], args.n)
        subprocess.run(["tmux", "-L", "remote-dev", "kill-server"], env=env, capture_output=True)
    finally:
        if nv is not None:
            nv.close()
        stop_sshd(sshd)
    print(f"keystroke -> echo on the same tmux session, {args.n} keys each (ms)")
    print(f"{'':34} {'p50':>7} {'p90':>7} {'max':>7}")
    for label, v in ((":RemoteShell through Neovim", nv_ms), ("ssh -tt + tmux attach (pty)", ssh_ms)):
        print(f"{label:34} {pct(v, 50):7.2f} {pct(v, 90):7.2f} {max(v):7.2f}")
    print(f"ratio Neovim/ssh p50 {pct(nv_ms, 50) / pct(ssh_ms, 50):.2f}x, p90 {pct(nv_ms, 90) / pct(ssh_ms, 90):.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
