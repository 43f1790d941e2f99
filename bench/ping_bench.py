#!/usr/bin/env python3
"""Agent round trip vs a new SSH session, against one loopback sshd, in one run.

    .venv/bin/python bench/ping_bench.py [--pings 500] [--ssh 20]

Measures
  * agent `ping` over the engine's open msgpack-RPC channel (p50/p90/p99, many pings);
  * `ssh -F cfg alias true` with a ControlMaster open (a new session over the master);
  * `ssh -F cfg alias true` without one (ControlMaster=no: TCP + key exchange + auth + session);
  * `ssh alias true` over a ControlMaster of its own sending SHLVL=1, so the remote bash skips
    ~/.bashrc ("lean"): on this machine root's ~/.bashrc runs `pyenv init`, ~0.1 s of every
    session, which the plain rows include.
Prints a table and the ratios agent/ssh.  Machines are noisy: compare the ratios, not the
absolute times across runs (see /work/shared/TESTBED.md).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO / "python"), str(REPO / "tests")]


def pct(values: list[float], p: float) -> float:
    s = sorted(values)
    if not s:
        return float("nan")
    k = (len(s) - 1) * p / 100
    lo, hi = int(k), min(int(k) + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


def time_cmd(argv: list[str], n: int) -> list[float]:
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                       check=True, timeout=60)
        out.append((time.perf_counter() - t0) * 1000)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--pings", type=int, default=500, help="agent pings (default 500)")
    ap.add_argument("--ssh", type=int, default=20, help="ssh invocations per variant (default 20)")
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="rd-ping-bench-"))
    os.environ["XDG_STATE_HOME"] = str(tmp / "state")
    from conftest import start_sshd, stop_sshd
    from remote_dev.actions import ACTIONS
    from remote_dev.engine import Engine

    sshd = start_sshd(tmp / "sshd", extra_config="AcceptEnv SHLVL\n")
    eng = None
    try:
        root = tmp / "proj"
        root.mkdir()
        (root / ".remote-dev.toml").write_text(sshd.target_toml(str(tmp / "remote" / "proj")))
        eng = Engine(actions=ACTIONS)
        eng.call_sync("status", {"cwd": str(root)}, {}, timeout=60)   # connect, start the agent
        sess = eng.projects[root.resolve()].session()

        async def pings(n: int) -> list[float]:
            out = []
            for _ in range(n):
                out.append(await sess.ping())
            return out
        eng.submit(pings(50)).result(60)                              # warm up
        agent = eng.submit(pings(args.pings)).result(600)

        cfg = str(sshd.ssh_config)
        no_master = ["ssh", "-F", cfg, "-o", "ControlMaster=no", "-o", "ControlPath=none", sshd.alias, "true"]
        # open a master (ControlPersist keeps it after this returns), then use it
        subprocess.run(["ssh", "-F", cfg, sshd.alias, "true"], check=True, timeout=60, stdin=subprocess.DEVNULL)
        check = subprocess.run(["ssh", "-F", cfg, "-O", "check", sshd.alias], capture_output=True, text=True,
                               check=False)
        assert check.returncode == 0, f"no ControlMaster: {check.stderr}"
        time_cmd(["ssh", "-F", cfg, sshd.alias, "true"], 2)           # warm up
        with_master = time_cmd(["ssh", "-F", cfg, sshd.alias, "true"], args.ssh)
        time_cmd(no_master, 2)
        without_master = time_cmd(no_master, args.ssh)
        lean = ["ssh", "-F", cfg, "-o", "SetEnv=SHLVL=1", "-o", f"ControlPath={tmp}/sshd/cm-lean-%C", sshd.alias]
        check = subprocess.run(lean + ["echo $SHLVL"], capture_output=True, text=True, timeout=60, check=False)
        assert check.stdout.strip() == "2", f"lean session not lean: {check.stdout!r}"
        time_cmd(lean + ["true"], 2)
        with_master_lean = time_cmd(lean + ["true"], args.ssh)
        subprocess.run(["ssh", "-F", cfg, "-o", f"ControlPath={tmp}/sshd/cm-lean-%C", "-O", "exit", sshd.alias],
                       capture_output=True, timeout=10, check=False)
    finally:
        if eng is not None:
            eng.close()
        stop_sshd(sshd)
        shutil.rmtree(tmp, ignore_errors=True)

    rows = [
        (f"agent ping, open channel (n={len(agent)})", agent),
        (f"ssh alias true, ControlMaster open (n={len(with_master)})", with_master),
        (f"ssh alias true, no ControlMaster (n={len(without_master)})", without_master),
        (f"ssh alias true, ControlMaster, lean (n={len(with_master_lean)})", with_master_lean),
    ]
    print(f"loopback sshd 127.0.0.1:{sshd.port}  python {sys.version.split()[0]}")
    print(f"{'':48} {'p50 ms':>9} {'p90 ms':>9} {'p99 ms':>9} {'min ms':>9}")
    for name, v in rows:
        print(f"{name:48} {pct(v, 50):9.3f} {pct(v, 90):9.3f} {pct(v, 99):9.3f} {min(v):9.3f}")
    a50, a90 = pct(agent, 50), pct(agent, 90)
    m50, n50, l50 = pct(with_master, 50), pct(without_master, 50), pct(with_master_lean, 50)
    print()
    print(f"ratio agent p50 / ssh true p50 (ControlMaster open): {a50 / m50:.4f}x  ({m50 / a50:.0f}x faster)")
    print(f"ratio agent p50 / ssh true p50 (no ControlMaster):   {a50 / n50:.4f}x  ({n50 / a50:.0f}x faster)")
    print(f"ratio agent p50 / ssh true p50 (ControlMaster, lean): {a50 / l50:.4f}x  ({l50 / a50:.0f}x faster)")
    print(f"ratio agent p90 / ssh true p50 (ControlMaster open): {a90 / m50:.4f}x")
    print(f"mean agent ping {statistics.mean(agent):.3f} ms, stdev {statistics.pstdev(agent):.3f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
