#!/usr/bin/env python3
"""What the debug bootstrap costs a Python process, in one run (local processes, no ssh).

    .venv/bin/python bench/debug_boot_bench.py [-n 20] [--python /usr/bin/python3]

A debug run on the process and Slurm runners puts the bootstrap (agent/remote/debug_boot.py,
as `sitecustomize.py`) first on PYTHONPATH; every Python process of the run imports it.
Compared, median of n, interleaved, for a program that prints one line:

  * plain                   `python x.py`, nothing of ours;
  * bootstrap, left alone   the bootstrap imported but not debugging (what a launcher such
                            as torchrun, debugpy's adapter or a pool worker pays);
  * bootstrap, debugged     debugpy listening and the endpoint written (the client's
                            wait turned off), to the endpoint and to the process's end;
  * debugpy CLI             `python -m debugpy --listen 127.0.0.1:0 x.py` (no wait), to its
                            end: what the direct way costs, for comparison.

debugpy comes from this environment (put on the path the way the plugin supplies it).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import debugpy

REPO = Path(__file__).resolve().parent.parent
BOOT = REPO / "python" / "remote_dev" / "agent" / "remote" / "debug_boot.py"


def timed(argv: list[str], env: dict[str, str], cwd: Path, endpoints: Path | None = None) -> tuple[float, float]:
    """(seconds to the endpoint file, or nan; seconds to the process's end)."""
    t0 = time.perf_counter()
    p = subprocess.Popen(argv, env=env, cwd=cwd, stdout=subprocess.DEVNULL)
    first = float("nan")
    while p.poll() is None:
        if endpoints is not None and first != first and any(endpoints.glob("*.json")):
            first = time.perf_counter() - t0
        time.sleep(0.0005)
    end = time.perf_counter() - t0
    if p.returncode != 0:
        raise SystemExit(f"{argv} failed with {p.returncode}")
    if endpoints is not None:
        if first != first and any(endpoints.glob("*.json")):
            first = end
        shutil.rmtree(endpoints, ignore_errors=True)
    return first, end


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("-n", type=int, default=20)
    ap.add_argument("--python", default="/usr/bin/python3")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        (base / "boot").mkdir()
        shutil.copy(BOOT, base / "boot" / "sitecustomize.py")
        (base / "dbg").mkdir()
        os.symlink(Path(debugpy.__file__).parent, base / "dbg" / "debugpy")
        (base / "x.py").write_text("print('hello')\n")
        clean = {k: v for k, v in os.environ.items() if not k.startswith(("REMOTE_DEV_", "PYTHON"))}
        clean["PYDEVD_DISABLE_FILE_VALIDATION"] = "1"
        boot = {**clean, "PYTHONPATH": str(base / "boot")}
        debugged = {**boot, "REMOTE_DEV_DEBUG": str(base / "ep"), "REMOTE_DEV_DEBUG_WAIT": "0",
                    "REMOTE_DEV_DEBUGPY": str(base / "dbg"), "REMOTE_DEV_DEBUG_HOST": os.uname().nodename}
        cli = {**clean, "PYTHONPATH": str(base / "dbg")}
        py = args.python
        cases = {
            "plain": ([py, "x.py"], clean, None),
            "bootstrap, left alone": ([py, "x.py"], boot, None),
            "bootstrap, debugged": ([py, "x.py"], debugged, base / "ep"),
            "debugpy CLI": ([py, "-m", "debugpy", "--listen", "127.0.0.1:0", "x.py"], cli, None),
        }
        results: dict[str, list[tuple[float, float]]] = {k: [] for k in cases}
        for _ in range(args.n):
            for name, (argv, env, ep) in cases.items():
                results[name].append(timed(argv, env, base, ep))
    med = {k: (statistics.median(f for f, _ in v), statistics.median(e for _, e in v)) for k, v in results.items()}
    plain, cli_end = med["plain"][1], med["debugpy CLI"][1]
    version = subprocess.run([py, "-c", "import sys; print(sys.version.split()[0])"], capture_output=True,
                             text=True).stdout.strip()
    print(f"{py} (Python {version}), debugpy {debugpy.__version__}, median of {args.n}")
    print(f"{'':24} {'to endpoint':>12} {'to exit':>10} {'vs plain':>9} {'vs debugpy CLI':>15}")
    for name, (first, end) in med.items():
        ep = f"{first * 1000:9.1f} ms" if first == first else f"{'':>12}"
        print(f"{name:24} {ep:>12} {end * 1000:7.1f} ms {end / plain:8.2f}x {end / cli_end:14.2f}x")


if __name__ == "__main__":
    main()
