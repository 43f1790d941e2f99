#!/usr/bin/env python3
""":RemoteRun to its first output line on WAN-like links (bench/wan.py, as root), against
ssh with a ControlMaster, in one run.

    .venv/bin/python bench/first_output_bench.py [--links 100mbit/40,20mbit/80] [-n 10] [--no-nvim] [--name rdfo]

Per link (a wan.py bed each, named NAME1, NAME2, ..., up only for that link), warm: the
engine connected and the project pushed once, ControlMasters open.  Interleaved, -n times:

  * engine: the `run` action (what :RemoteRun calls: the push before the run, the start,
    the first output) in this process, until the first `run_output` report with a line;
  * nvim: `:RemoteRun CMD` in a real headless Neovim (its own engine in its Python host),
    until the run buffer shows the line, timed inside Neovim;
  * ssh+CM: `ssh alias CMD` over an open ControlMaster until its first stdout byte (the
    remote login shell as configured: root's ~/.bashrc runs `pyenv init` here);
  * lean: the same over a ControlMaster of its own sending SHLVL=1, so bash skips
    ~/.bashrc: ssh at its cheapest.

CMD is `/usr/bin/python3 -c "print(1)"`.  Printed: medians in ms, the multiple of the
link's round trip, the ratios to ssh+CM and lean, the target of issue 27 (<= 2 RTT +
20 ms) met / MISS, and the agent requests the engine sent before the first output (counted
by wrapping AgentChannel.send in this process).  Machines are noisy: compare the ratios of
one run, never absolute times across runs.
"""

from __future__ import annotations

import argparse
import collections
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
WORK = REPO / "bench" / ".work" / "first-output"
sys.path[:0] = [str(REPO / "python"), str(REPO / "tests"), str(REPO / "bench")]

from run_bench import LUA_HOOK, PY, NvimBench, Recorder, med, ssh_first_byte  # noqa: E402
from wan import WanBed  # noqa: E402

CMD = f'{PY} -c "print(1)"'
SENT: list[tuple[str, float]] = []   # (method, perf_counter) of every request the engine sent


def count_requests() -> None:
    from remote_dev.rpc import AgentChannel

    orig = AgentChannel.send

    def send(self: Any, method: str, *params: Any) -> Any:
        SENT.append((method, time.perf_counter()))
        return orig(self, method, *params)
    AgentChannel.send = send  # type: ignore[method-assign]




def make_project(base: Path, name: str, bed: WanBed) -> Path:
    root = base / name
    (root / "pkg").mkdir(parents=True)
    (root / ".remote-dev.toml").write_text(
        f'[targets.bench]\nhost = "{bed.alias}"\nssh_config = "{bed.ssh_config}"\n'
        f'remote_root = "{base / "remote" / name}"\n')
    (root / "main.py").write_text("from pkg import mod0\nprint(mod0.VALUE)\n")
    for i in range(40):
        (root / "pkg" / f"mod{i}.py").write_text(f"VALUE = {i}\n" + "# filler\n" * 50)
    (root / "pkg" / "__init__.py").write_text("")
    return root


def one_link(args: Any, index: int, rate: str, rtt: float) -> dict[str, Any]:
    from remote_dev.actions import ACTIONS
    from remote_dev.engine import Engine

    base = WORK / f"link{index}"
    shutil.rmtree(base, ignore_errors=True)
    base.mkdir(parents=True)
    os.environ["XDG_STATE_HOME"] = str(base / "state")
    with WanBed(f"{args.name}{index}", rate=rate, rtt_ms=rtt, quiet=True) as bed:
        cfg = ["-F", str(bed.ssh_config)]
        lean_cp = ["-o", f"ControlPath={bed.base}/cm-lean-%C"]
        bed.open_master()
        subprocess.run(["ssh", *cfg, *lean_cp, "-o", "SetEnv=SHLVL=1", "-fN", bed.alias], check=True, timeout=60)
        ssh_cm = ["ssh", *cfg, bed.alias, CMD]
        ssh_lean = ["ssh", *cfg, *lean_cp, bed.alias, CMD]
        rec = Recorder()
        eng = Engine(report=rec, actions=ACTIONS)
        nv: NvimBench | None = None
        try:
            root = make_project(base, "proj", bed)
            ctx = {"cwd": str(root)}
            eng.call_sync("push", ctx, {}, timeout=120)
            if not args.no_nvim:
                nv = NvimBench(base / "nvim", make_project(base, "proj-nvim", bed))
                nv.api.exec_lua(LUA_HOOK)

            def engine_run() -> tuple[float, list[str]]:
                SENT.clear()
                t0 = time.perf_counter()
                res = eng.call_sync("run", ctx, {"cmd": CMD}, timeout=60)
                _t, data = rec.wait_exit(res["id"], 60)
                assert data["code"] == 0, data
                first = rec.first_line[res["id"]]
                return (first - t0) * 1000, [m for m, t in SENT if t <= first]

            for _ in range(2):    # spare supervisors up, masters' first sessions paid
                engine_run()
                if nv is not None:
                    nv.run(CMD)
                ssh_first_byte(ssh_cm)
                ssh_first_byte(ssh_lean)
            rows: dict[str, list[float]] = collections.defaultdict(list)
            requests: collections.Counter[str] = collections.Counter()
            for _ in range(args.n):
                ms, sent = engine_run()
                rows["engine"].append(ms)
                requests.update(sent)
                if nv is not None:
                    _rid, first_ms, _ = nv.run(CMD)
                    if first_ms is not None:
                        rows["nvim"].append(first_ms)
                rows["ssh+CM"].append(ssh_first_byte(ssh_cm)[0])
                rows["lean"].append(ssh_first_byte(ssh_lean)[0])
        finally:
            if nv is not None:
                nv.close()
            eng.close()
            subprocess.run(["ssh", *cfg, *lean_cp, "-O", "exit", bed.alias], capture_output=True, timeout=10,
                           check=False)
    return {"rate": rate, "rtt": rtt, "rows": rows, "requests": {k: v / args.n for k, v in requests.items()}}


def report(link: dict[str, Any]) -> None:
    rtt, rows = link["rtt"], link["rows"]
    goal = 2 * rtt + 20
    cm, lean = med(rows["ssh+CM"]), med(rows["lean"])
    print(f"\n{link['rate']} {rtt:g} ms RTT: `{CMD}` to its first output line, median of n={len(rows['engine'])}")
    print(f"  {'':8} {'ms':>7} {'RTT':>6} {'/ssh+CM':>8} {'/lean':>7}  target <= 2 RTT + 20 ms = {goal:.0f} ms")
    for name in ("engine", "nvim", "ssh+CM", "lean"):
        if not rows.get(name):
            continue
        ms = med(rows[name])
        verdict = ("met" if ms <= goal else "MISS") if name in ("engine", "nvim") else ""
        print(f"  {name:8} {ms:7.1f} {ms / rtt:6.2f} {ms / cm:7.2f}x {ms / lean:6.2f}x  {verdict}"
              f"   (min {min(rows[name]):.1f}, max {max(rows[name]):.1f})")
    sent = ", ".join(f"{m} {n:g}" for m, n in sorted(link["requests"].items()))
    print(f"  agent requests per engine run before its first output: {sent}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--links", default="100mbit/40", help="RATE/RTT_MS,... (default 100mbit/40)")
    ap.add_argument("-n", type=int, default=10, help="runs per kind and link (default 10)")
    ap.add_argument("--no-nvim", action="store_true", help="skip :RemoteRun through Neovim")
    ap.add_argument("--name", default="rdfo", help="WAN bed name prefix (default rdfo)")
    args = ap.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("the WAN bed needs root (network namespaces, tc)")
    count_requests()
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} cores, load {os.getloadavg()[0]:.2f}", flush=True)
    links = []
    try:
        for i, spec in enumerate(args.links.split(","), 1):
            rate, rtt = spec.split("/")
            links.append(one_link(args, i, rate, float(rtt)))
            report(links[-1])
    finally:
        shutil.rmtree(WORK, ignore_errors=True)
    print(f"\nload after: {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
