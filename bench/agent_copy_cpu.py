"""The agent's cost per copy from its content index, in-process: no ssh, no wire.

A source root of N files (under /dev/shm when there is one) is indexed with hashes by the
agent's own ContentIndex.merge; then copy ops of all of them (protocol.copy_op, 1,024 per
request, as sync/reuse.py sends them) go to FileOps.push into a fresh root, as a second
checkout's offers do, every file found in the index.  `--same-size` makes every file the
same size (a dataset of fixed-shape arrays, a model's shards): a lookup must not go
through every file of its size.  `--against REV` also times the agent of a git revision
(bench/agent_push_cpu.load_agent), in alternation; the median of the repetitions is printed.

    .venv/bin/python bench/agent_copy_cpu.py [-n 3600] [--same-size] [--against REV]... [-r 3]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "python"))

from agent_push_cpu import load_agent  # noqa: E402
from remote_dev.agent import protocol as P  # noqa: E402


def make_source(base: str, n: int, same_size: bool) -> tuple[str, dict[str, list]]:
    src = tempfile.mkdtemp(prefix="source-", dir=base)
    entries = {}
    for i in range(n):
        data = os.urandom(27000 if same_size else 5000 + (i * 7919) % 45000)
        rel = "pkg%d/f%d.bin" % (i % 20, i)
        os.makedirs(os.path.join(src, os.path.dirname(rel)), exist_ok=True)
        with open(os.path.join(src, rel), "wb") as f:
            f.write(data)
        st = os.stat(os.path.join(src, rel))
        entries[rel] = [st.st_size, st.st_mtime_ns, P.digest(data)]
    return src, entries


def run_copies(base: str, agent, src: str, entries: dict[str, list]) -> tuple[float, float]:
    """(wall, CPU) seconds of the copies into a fresh root, with a fresh index and agent."""
    files, reuse = agent
    os.environ["XDG_CACHE_HOME"] = tempfile.mkdtemp(prefix="cache-", dir=base)
    reuse.INDEX = reuse.ContentIndex()
    reuse.ContentIndex().merge(reuse.private_dir(reuse.index_dir()), src, entries)
    ops = [P.copy_op(rel, None, False, e[2], 0o644, e[0]) for rel, e in entries.items()]
    dst = tempfile.mkdtemp(prefix="second-", dir=base)
    fo = files.FileOps()
    t0, c0 = time.perf_counter(), time.thread_time()
    copied = 0
    for k in range(0, len(ops), 1024):
        copied += sum(1 for a in fo.push(dst, ops[k:k + 1024]) if a[0] == P.OK)
    wall, cpu = time.perf_counter() - t0, time.thread_time() - c0
    if copied != len(ops):
        raise SystemExit("copied %d of %d" % (copied, len(ops)))
    fo.cleanup()
    shutil.rmtree(dst)
    shutil.rmtree(os.environ["XDG_CACHE_HOME"])
    return wall, cpu


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-n", type=int, default=3600, help="files")
    ap.add_argument("--same-size", action="store_true", help="every file 27,000 bytes")
    ap.add_argument("--against", action="append", default=[], metavar="REV")
    ap.add_argument("-r", type=int, default=3, help="repetitions (median)")
    args = ap.parse_args()
    base = "/dev/shm" if os.path.isdir("/dev/shm") else tempfile.gettempdir()
    work = tempfile.mkdtemp(prefix="copy-bench-", dir=base)
    agents_dir = tempfile.mkdtemp(prefix="agents-")
    agents = [("worktree", load_agent(agents_dir, None))] + [(rev, load_agent(agents_dir, rev)) for rev in args.against]
    src, entries = make_source(work, args.n, args.same_size)
    print("%d files (%s), %.1f MB, in %s" % (len(entries), "one size" if args.same_size else "sizes 5-50 KB",
                                            sum(e[0] for e in entries.values()) / 1e6, base))
    times: dict[str, list[tuple[float, float]]] = {label: [] for label, _ in agents}
    for _ in range(args.r):   # interleaved: a busy moment hits every agent alike
        for label, agent in agents:
            times[label].append(run_copies(work, agent, src, entries))
    for label, ts in times.items():
        wall = statistics.median(t[0] for t in ts)
        cpu = statistics.median(t[1] for t in ts)
        print("%-12s %d copies: wall %.3f s, CPU %.3f s, %.0f us/copy" % (label, len(entries), wall, cpu,
                                                                          1e6 * wall / len(entries)))
    shutil.rmtree(work, ignore_errors=True)
    shutil.rmtree(agents_dir, ignore_errors=True)


if __name__ == "__main__":
    main()
