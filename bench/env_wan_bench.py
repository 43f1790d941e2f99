#!/usr/bin/env python3
""":RemoteEnv's mirror of a torch environment against `rsync -az` of the same files, on a
WAN-like link (bench/wan.py, as root), in one run.

    .venv/bin/python bench/env_wan_bench.py [--rate 100mbit] [--rtt-ms 40] [--python PATH] [--repeat 1]

The remote's python is the tests' torch==2.13.0 CPU environment (tests/support/torch_env.py;
made on first use) unless --python names another.  Per repeat, in this order:

  * remote_dev: a first mirror into an empty state folder (Engine.call_sync("env"), its
    connection already open, as in Neovim after the login);
  * `rsync -az` of exactly the files that mirror holds (one rsync, --files-from, through an
    ssh ControlMaster opened before timing) into an empty folder;
  * a refresh with nothing changed (remote_dev) beside `ssh host true` over the master.

The remote files are read into the page cache before each transfer.  Machines are noisy:
compare the ratios of one run, never absolute times across runs.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
WORK = REPO / "bench" / ".work" / "env"
sys.path[:0] = [str(REPO / "python"), str(REPO / "tests"), str(REPO / "bench")]

from wan import WanBed  # noqa: E402


def timed(argv: list[str], **kw: object) -> float:
    t0 = time.perf_counter()
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, **kw)  # type: ignore[call-overload]
    return time.perf_counter() - t0


def selection(state: Path) -> list[str]:
    """The absolute remote paths the mirror holds (its manifest)."""
    manifest = json.loads(next(state.rglob("manifest.json")).read_text())
    return [f"{remote}/{rel}" for remote, entry in manifest["roots"].items() for rel in entry["files"]]


def warm(files: list[str], listing: Path) -> None:
    listing.write_text("\n".join(files) + "\n")
    subprocess.run(f"tar -cf - -T {listing} 2>/dev/null | cat > /dev/null", shell=True, check=False)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rate", default="100mbit")
    ap.add_argument("--rtt-ms", type=float, default=40.0)
    ap.add_argument("--python", default="")
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--name", default="rdenv")
    args = ap.parse_args()
    python = args.python
    if not python:
        from support.torch_env import torch_python
        found, why = torch_python()
        if found is None:
            raise SystemExit(why)
        python = str(found)
    shutil.rmtree(WORK, ignore_errors=True)
    WORK.mkdir(parents=True)
    rows: list[tuple[float, float, float, float, int, int]] = []
    with WanBed(args.name, args.rate, args.rtt_ms) as bed:
        control = f"ControlPath={bed.base}/cm-env-%C"
        ssh = ["ssh", "-F", str(bed.ssh_config), "-o", control]
        subprocess.run([*ssh, "-o", "ControlMaster=yes", "-o", "ControlPersist=600", "-fN", bed.alias], check=True)
        from remote_dev.actions import ACTIONS
        from remote_dev.engine import Engine

        proj = WORK / "proj"
        proj.mkdir()
        (proj / ".remote-dev.toml").write_text(
            f'[targets.bench]\nhost = "{bed.alias}"\nssh_config = "{bed.ssh_config}"\n'
            f'remote_root = "{WORK / "remote"}"\npython = "{python}"\n')
        ctx = {"cwd": str(proj)}
        try:
            for i in range(args.repeat):
                state = WORK / f"state{i}"
                os.environ["XDG_STATE_HOME"] = str(state)
                engine = Engine(actions=ACTIONS)
                try:
                    engine.call_sync("status", ctx, timeout=120)        # the login: not timed
                    t0 = time.perf_counter()
                    data = engine.call_sync("env", ctx, {}, timeout=1800)
                    ours = time.perf_counter() - t0
                    files = selection(state)
                    listing = WORK / "files.txt"
                    dest = WORK / f"rsync{i}"
                    dest.mkdir()
                    warm(files, listing)
                    theirs = timed(["rsync", "-az", "--files-from", str(listing), "-e", " ".join(ssh),
                                    f"{bed.alias}:/", f"{dest}/"])
                    t0 = time.perf_counter()
                    engine.call_sync("env", ctx, {}, timeout=120)
                    noop = time.perf_counter() - t0
                    true = statistics.median(timed([*ssh, bed.alias, "true"]) for _ in range(3))
                    rows.append((ours, theirs, noop, true, data["files"], data["bytes"]))
                finally:
                    engine.close()
        finally:
            subprocess.run([*ssh, "-O", "exit", bed.alias], capture_output=True, check=False)
    print(f"\nlink {args.rate}, {args.rtt_ms:g} ms; remote python {python}")
    print(f"{'files':>7} {'MB':>6} | {'remote_dev':>10} {'rsync -az':>10} {'ratio':>6} | "
          f"{'no-op refresh':>13} {'ssh true':>9}")
    for ours, theirs, noop, true, n, size in rows:
        print(f"{n:>7} {size / 1e6:>6.0f} | {ours:>9.2f}s {theirs:>9.2f}s {ours / theirs:>6.2f} | "
              f"{noop:>12.2f}s {true:>8.2f}s")


if __name__ == "__main__":
    main()
