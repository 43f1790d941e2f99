#!/usr/bin/env python3
"""Start of a run in a held Slurm allocation vs the process runner vs a fresh batch job,
against one loopback sshd and the loopback Slurm cluster of the tests, in one run.

    .venv/bin/python bench/alloc_bench.py [-n 15]

For each command: the engine's `run` action (what :RemoteRun calls: no-op push, start
through the agent, follow) until the first `run_output` report carrying a line, warm
(connected, pushed once), on three targets of the same host:
  process  runner = "process"
  alloc    runner = "slurm" with an allocation held (:RemoteAlloc): the run is a job step,
           `srun --jobid=JOB --overlap --nodes=1 --ntasks=1 /bin/sh -c CMD`
  sbatch   runner = "slurm" without one: a batch job through the queue (the test cluster
           schedules at once: sched_interval=1, batch_sched_delay=0; a real queue adds its wait)
Rounds are interleaved.  Run as root (the Slurm bed runs slurmd as root).

Machines are noisy: compare the ratios measured in one run (see /work/shared/TESTBED.md).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO / "python"), str(REPO / "tests"), str(REPO / "bench")]

from run_bench import PY, Recorder, med  # noqa: E402

CMDS = ["echo hi", f'{PY} -c "print(1)"']


def project(base: Path, name: str, sshd, runner: str, env: dict[str, str]) -> Path:
    root = base / name
    root.mkdir(parents=True)
    toml = sshd.target_toml(str(base / "remote" / name), runner=runner, env=env)
    (root / ".remote-dev.toml").write_text(toml)
    (root / "main.py").write_text("print('hi')\n")
    return root


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("-n", type=int, default=15, help="repetitions per command and target (default 15)")
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="rd-alloc-bench-"))
    os.environ["XDG_STATE_HOME"] = str(tmp / "state")
    from conftest import start_sshd, stop_sshd
    from remote_dev.actions import ACTIONS
    from remote_dev.engine import Engine
    from support.slurm import SlurmCluster, slurm_available

    reason = slurm_available()
    if reason:
        print(f"alloc_bench: {reason}", file=sys.stderr)
        return 1
    cluster = SlurmCluster(str(tmp / "slurm"))
    cluster.start()
    sshd = start_sshd(tmp / "sshd")
    rec = Recorder()
    eng = Engine(report=rec, actions=ACTIONS)
    try:
        roots = {"process": project(tmp, "proc", sshd, "process", {}),
                 "alloc": project(tmp, "alloc", sshd, "slurm", dict(cluster.env)),
                 "sbatch": project(tmp, "batch", sshd, "slurm", dict(cluster.env))}
        ctxs = {k: {"cwd": str(v)} for k, v in roots.items()}
        for ctx in ctxs.values():
            eng.call_sync("status", ctx, {}, timeout=60)
            eng.call_sync("push", ctx, {}, timeout=60)
        held = eng.call_sync("alloc", ctxs["alloc"], {"args": ["--ntasks=1"]}, timeout=60)
        deadline = time.monotonic() + 30
        while eng.call_sync("alloc", ctxs["alloc"], {}, timeout=60)["state"] != "RUNNING":
            if time.monotonic() > deadline:
                raise TimeoutError("the allocation did not start")
            time.sleep(0.2)

        srun = ["srun", f"--jobid={held['job_id']}", "--overlap", "--nodes=1", "--ntasks=1", "/bin/sh", "-c"]

        def srun_first_byte(cmd: str) -> float:
            """srun alone, from this process (the login node is this machine): what a step costs."""
            t0 = time.perf_counter()
            p = subprocess.Popen(srun + [cmd], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                 env=cluster.client_env())
            assert p.stdout is not None
            first = p.stdout.read(1)
            t1 = time.perf_counter()
            p.stdout.read()
            p.wait()
            assert first, f"no output from {cmd!r}"
            return (t1 - t0) * 1000

        def first_line(kind: str, cmd: str) -> float:
            t0 = time.perf_counter()
            res = eng.call_sync("run", ctxs[kind], {"cmd": cmd}, timeout=120)
            _t, data = rec.wait_exit(res["id"], 120)
            assert data["code"] == 0, (kind, cmd, data)
            return (rec.first_line[res["id"]] - t0) * 1000

        for kind in roots:          # warm: the spare supervisor, srun's first start
            first_line(kind, "true; echo warm")
        print(f"loopback sshd, Slurm bed (node {cluster.node_name}), allocation job {held['job_id']}, "
              f"python {sys.version.split()[0]}, {os.cpu_count()} cores")
        print(f"\nstart -> first output line, warm, median of n={args.n} (interleaved)")
        head = (f"{'command':30} {'process':>8} {'alloc':>8} {'sbatch':>8} {'srun':>8}  {'alloc/process':>13} "
                f"{'sbatch/process':>14}")
        print(head)
        print("-" * len(head))
        for cmd in CMDS:
            got: dict[str, list[float]] = {k: [] for k in roots}
            bare: list[float] = []
            for _ in range(args.n):
                for kind in roots:
                    got[kind].append(first_line(kind, cmd))
                bare.append(srun_first_byte(cmd))
            p, a, b = (med(got[k]) for k in ("process", "alloc", "sbatch"))
            print(f"{cmd:30} {p:8.1f} {a:8.1f} {b:8.1f} {med(bare):8.1f}  {a / p:12.2f}x {b / p:13.2f}x")
        print("(ms; process, alloc, sbatch: the engine's run action until the first run_output with a line;"
              "\n srun: `srun --jobid=JOB --overlap --nodes=1 --ntasks=1 /bin/sh -c CMD` alone, run here, until"
              "\n its first stdout byte: the part of `alloc` that is Slurm's own step start)")
        eng.call_sync("alloc", ctxs["alloc"], {"stop": True}, timeout=120)
    finally:
        eng.close()
        stop_sshd(sshd)
        cluster.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
