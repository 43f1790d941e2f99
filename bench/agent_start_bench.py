#!/usr/bin/env python3
"""What starting an agent process costs, by where its modules come from, in one run.

    .venv/bin/python bench/agent_start_bench.py [-n 30] [--python /usr/bin/python3]

The agent ships as one zip of sources (agent.pyz).  zipimport never writes bytecode, so
an interpreter importing from that zip compiles every module on every start; the agent
therefore writes, once per interpreter, a copy with bytecode (agent.<cache tag>.pyz, see
python/remote_dev/agent/remote/compiled.py).  This compares, for the same files:

  * zip of sources          what every start would cost without the compiled copy;
  * zip with bytecode       what the agent uses;
  * folder + __pycache__    the zip unpacked, bytecode cached beside it (the old layout).

for two process kinds, no ssh involved (local processes, median of n, interleaved):

  * agent: the bootstrap's import of the agent and `serve`, until the answer to `hello`
    (what each new connection and each extra push channel pays after ssh itself);
  * supervisor: `python3 -S <zip> supervise DIR` of a run of `true`, until it exits
    (what the first run of a connection pays, before a spare supervisor is ready).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "python"))

import msgpack  # noqa: E402

from remote_dev.agent import PACKAGE, bundle  # noqa: E402


def layouts(base: Path, python: str) -> dict[str, Path]:
    """sys.path entries holding the agent three ways."""
    src = base / "sources" / "agent.pyz"
    src.parent.mkdir()
    src.write_bytes(bundle().data)
    tag = subprocess.run([python, "-c", "import sys; print(sys.implementation.cache_tag)"],
                         capture_output=True, text=True, check=True).stdout.strip()
    compiled = base / "sources" / f"agent.{tag}.pyz"
    code = (f"import sys; sys.path.insert(0, {str(src)!r}); from {PACKAGE}.remote import compiled; "
            f"compiled.build({str(src)!r}, {str(compiled)!r})")
    subprocess.run([python, "-c", code], check=True)
    folder = base / "folder"
    zipfile.ZipFile(src).extractall(folder)
    subprocess.run([python, "-m", "compileall", "-q", str(folder)], check=True)
    return {"zip of sources": src, "zip with bytecode": compiled, "folder + __pycache__": folder}


def agent_start(python: str, path: Path, env: dict[str, str]) -> float:
    """ms from spawning the agent (as the bootstrap imports it) to its answer to hello."""
    code = f"import sys; sys.path.insert(0, {str(path)!r}); from {PACKAGE}.remote import server; server.serve()"
    t0 = time.perf_counter()
    p = subprocess.Popen([python, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env)
    assert p.stdin is not None and p.stdout is not None
    p.stdin.write(msgpack.packb([0, 1, "hello", ["bench"]], use_bin_type=True))
    p.stdin.flush()
    unpacker = msgpack.Unpacker(raw=False)
    while True:
        data = os.read(p.stdout.fileno(), 65536)
        assert data, "the agent ended without answering"
        unpacker.feed(data)
        if any(True for _ in unpacker):
            break
    ms = (time.perf_counter() - t0) * 1000
    p.stdin.close()
    p.wait()
    return ms


def supervisor_start(python: str, path: Path, runs: Path, i: int) -> float:
    """ms of `python -S <path> supervise DIR` for a run of `true` (spawn to exit.json)."""
    d = runs / f"r{i}"
    d.mkdir()
    (d / "spec.json").write_text(json.dumps({"id": d.name, "root": str(runs), "cmd": "true"}))
    (d / "output.log").write_bytes(b"")
    argv = [python, "-S", str(path), "supervise", str(d)] if path.suffix == ".pyz" else \
        [python, "-S", "-c", f"import sys; sys.path.insert(0, {str(path)!r}); from {PACKAGE}.remote.main import "
         "main; main(sys.argv[1:])", "supervise", str(d)]
    t0 = time.perf_counter()
    subprocess.run(argv, check=True, stdin=subprocess.DEVNULL)
    ms = (time.perf_counter() - t0) * 1000
    assert json.loads((d / "exit.json").read_text())["code"] == 0
    return ms


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("-n", type=int, default=30, help="starts per variant (default 30)")
    ap.add_argument("--python", default=shutil.which("python3") or sys.executable,
                    help="the interpreter playing the remote's (default: python3 on PATH)")
    args = ap.parse_args()
    base = Path(tempfile.mkdtemp(prefix="rd-agent-start-"))
    try:
        env = {**os.environ, "XDG_CACHE_HOME": str(base / "cache")}
        paths = layouts(base, args.python)
        runs = base / "runs"
        runs.mkdir()
        agent: dict[str, list[float]] = {k: [] for k in paths}
        sup: dict[str, list[float]] = {k: [] for k in paths}
        for i in range(args.n + 2):
            for k, path in paths.items():
                a = agent_start(args.python, path, env)
                s = supervisor_start(args.python, path, runs, i * 10 + list(paths).index(k))
                if i >= 2:  # warm-up rounds (page cache) left out
                    agent[k].append(a)
                    sup[k].append(s)
        version = subprocess.run([args.python, "--version"], capture_output=True, text=True).stdout.strip()
        print(f"{args.python} ({version}), {os.cpu_count()} cores, median of n={args.n}, interleaved")
        print(f"{'modules from':24} {'agent to hello':>15} {'supervisor, true':>17}")
        for k in paths:
            print(f"{k:24} {statistics.median(agent[k]):12.1f} ms {statistics.median(sup[k]):14.1f} ms")
    finally:
        shutil.rmtree(base, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
