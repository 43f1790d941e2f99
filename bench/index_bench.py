"""The content index in an agent's life: what an index of N entries costs a running agent
in memory and in answers delayed, for this working tree's agent and for git revisions'
(--against REV), in alternation.

Each agent runs as a process of its own on pipes, as over ssh (server.serve, this venv's
msgpack), with a fresh cache holding one root's index of N entries (written by that
agent's own ContentIndex.merge; the root is a real folder, its files need not exist).
While it works, this process pings it (one ping out at a time, 1 ms apart) and records
each answer's wait: the agent answers on one thread, and anything that holds the GIL long
(a JSON file parsed or written whole) holds the answers.

- hello: the agent's hello reads the index in the background (reuse.has_index), ready
  for a push's offers; pings for LOAD_S after it;
- push: 50 new files pushed into the indexed root, then the index writer's idle flush
  (IDLE_FLUSH after the push) merges them into its file; pings for FLUSH_S after it;
- rss: the agent's VmRSS after both, and its VmHWM, against an agent of the same revision
  with no index (N = 0).

    .venv/bin/python bench/index_bench.py [--entries 10000,100000] [--against REV]... [-n 3]
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

import msgpack

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "python"))

from agent_push_cpu import write_agent  # noqa: E402
from remote_dev.agent import protocol as P  # noqa: E402

LOAD_S = 1.5
FLUSH_S = 2.0
NEW_FILES = 50

SEED = """
import hashlib, os, sys
sys.path.insert(0, sys.argv[1])
import importlib
reuse = importlib.import_module(sys.argv[2] + ".remote.reuse")
common = importlib.import_module(sys.argv[2] + ".remote.common")
root, n = sys.argv[3], int(sys.argv[4])
rels = ["src/pkg%03d/sub%02d/module_%06d.py" % (i % 300, i % 17, i) for i in range(n)]
digest = lambda i: hashlib.sha256(b"%d" % (i % (n - n // 10))).hexdigest()[:32]   # a tenth are copies
entries = [[100 + i % 9000, 1700000000000000000 + i, digest(i)] for i in range(n)]
if n:
    reuse.ContentIndex().merge(common.private_dir(reuse.index_dir()), root, dict(zip(rels, entries)))
"""

SERVE = """
import sys
sys.path.insert(0, sys.argv[1])
import importlib
importlib.import_module(sys.argv[2] + ".remote.server").serve()
"""


class Agent:
    """One agent process of package name in folder dest, with cache as its cache."""

    def __init__(self, dest: str, name: str, cache: str) -> None:
        env = {**os.environ, "XDG_CACHE_HOME": cache}
        self.proc = subprocess.Popen([sys.executable, "-c", SERVE, dest, name], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, env=env)
        self.unpacker = msgpack.Unpacker(raw=False)
        self.ids = 0

    def call(self, method: str, *params):
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.ids += 1
        self.proc.stdin.write(msgpack.packb([0, self.ids, method, list(params)], use_bin_type=True))
        self.proc.stdin.flush()
        while True:
            for msg in self.unpacker:
                if msg[0] == 1 and msg[1] == self.ids:
                    if msg[2] is not None:
                        raise SystemExit("%s failed: %r" % (method, msg[2]))
                    return msg[3]
            data = os.read(self.proc.stdout.fileno(), 1 << 16)
            if not data:
                raise SystemExit("the agent ended")
            self.unpacker.feed(data)

    def pings(self, seconds: float) -> list[float]:
        waits = []
        end = time.perf_counter() + seconds
        while time.perf_counter() < end:
            t = time.perf_counter()
            self.call("ping")
            waits.append(time.perf_counter() - t)
            time.sleep(0.001)
        return waits

    def status(self, key: str) -> int:
        with open("/proc/%d/status" % self.proc.pid) as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
        raise KeyError(key)

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        self.proc.wait(timeout=30)


def one(dest: str, name: str, entries: int) -> dict:
    """The figures of one agent of package name with an index of entries."""
    base = tempfile.mkdtemp(prefix="index-bench-")
    cache, root = os.path.join(base, "cache"), os.path.join(base, "root")
    os.mkdir(root)
    subprocess.run([sys.executable, "-c", SEED, dest, name, root, str(entries)], check=True,
                   env={**os.environ, "XDG_CACHE_HOME": cache})
    agent = Agent(dest, name, cache)
    try:
        agent.call("ping")
        agent.call("hello", "bench")
        load = agent.pings(LOAD_S)
        ops = [P.write_op("new/f%d.py" % i, None, False, None, 0o644, os.urandom(2000)) for i in range(NEW_FILES)]
        agent.call("push_packed", root, P.RAW, P.pack_ops(ops))
        flush = agent.pings(FLUSH_S)
        return {"load": load, "flush": flush, "rss": agent.status("VmRSS"), "hwm": agent.status("VmHWM")}
    finally:
        agent.close()
        shutil.rmtree(base, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--entries", default="10000,100000", help="index sizes, comma-separated")
    ap.add_argument("--against", action="append", default=[], metavar="REV")
    ap.add_argument("-n", type=int, default=3, help="rounds (the median of each figure is printed)")
    args = ap.parse_args()
    dest = tempfile.mkdtemp(prefix="agents-")
    agents = [("worktree", write_agent(dest, None))] + [(rev, write_agent(dest, rev)) for rev in args.against]
    sizes = [int(n) for n in args.entries.split(",")]
    rows: dict[tuple[str, int], list[dict]] = {}
    for _ in range(args.n):   # interleaved: a busy moment hits every agent alike
        for label, name in agents:
            for n in [0] + sizes:
                rows.setdefault((label, n), []).append(one(dest, name, n))
    shutil.rmtree(dest, ignore_errors=True)
    print("pings answered while the agent reads the index (hello) and merges a push into it (push);")
    print("memory against the same agent with no index; medians of %d rounds" % args.n)
    for label, _name in agents:
        base = statistics.median(r["rss"] for r in rows[(label, 0)])
        base_hwm = statistics.median(r["hwm"] for r in rows[(label, 0)])
        for n in sizes:
            rs = rows[(label, n)]
            load = statistics.median_low([max(r["load"]) for r in rs])
            flush = statistics.median_low([max(r["flush"]) for r in rs])
            p99s = [sorted(r["load"] + r["flush"])[int(0.99 * (len(r["load"]) + len(r["flush"]) - 1))] for r in rs]
            print("%-10s %7d entries: hello worst %6.1f ms, push worst %6.1f ms, p99 %4.1f ms; "
                  "RSS +%5.1f MB, peak +%5.1f MB" % (
                      label, n, 1e3 * load, 1e3 * flush, 1e3 * statistics.median(p99s),
                      (statistics.median(r["rss"] for r in rs) - base) / 1e6,
                      (statistics.median(r["hwm"] for r in rs) - base_hwm) / 1e6))


if __name__ == "__main__":
    main()
