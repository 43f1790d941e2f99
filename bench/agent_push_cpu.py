"""The agent's CPU per pushed file, in-process: no ssh, no wire, no second process.

The files of a tree (default bench/.work/wantree without .git, else this venv's
site-packages; large files left out: they are staged, not packed) go into batches as the
host makes them (sync/transfer.batches_of, protocol.pack_ops, raw), then the agent's
FileOps.push_packed writes them into a fresh folder (under /dev/shm when there is one),
one repetition after another.  What is timed is CPU, not wall time, of the thread doing
the work (time.thread_time), so a busy machine shifts the figures less (it still does:
caches, shared cores); the median and the minimum of the repetitions are printed, with:

- floor: a bare loop doing only what every atomic write needs, open(O_CREAT|O_EXCL) /
  write / close / rename per file (folders made beforehand);
- wire: the agent's pure-Python msgpack (msgpack.fallback, as the agent's zip carries it)
  unpacking the same requests from a pipe-like reader, as server.serve does (--wire);
- push_packed@REV (--against REV, repeatable): the agent of a git revision of this
  repository, loaded beside this one (both as packages of their own, as the agent's zip
  holds them), timed in alternation with it; the median of the per-round differences says
  what a change saved.

The content index (agent/remote/reuse.py) notes every write as in the agent; its idle
writer is held off (IDLE_FLUSH raised), so what it does after a push is not timed.

    .venv/bin/python bench/agent_push_cpu.py [--tree DIR] [-n 7] [--wire] [--against REV]...
"""

from __future__ import annotations

import argparse
import gc
import importlib
import os
import shutil
import subprocess
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "python"))

from remote_dev.agent import protocol as P  # noqa: E402
from remote_dev.sync.reconcile import Send  # noqa: E402
from remote_dev.sync.scan import LocalEntry  # noqa: E402
from remote_dev.sync.transfer import LARGE, batches_of  # noqa: E402


def default_tree() -> Path:
    tree = HERE / ".work" / "wantree"
    if tree.is_dir():
        return tree
    import site
    return Path(site.getsitepackages()[0])


def tree_files(tree: Path) -> list[tuple[str, int, bytes]]:
    """(rel, mode, content) of the regular files under tree (not .git, not large)."""
    out = []
    for dirpath, dirnames, filenames in os.walk(tree):
        dirnames[:] = sorted(d for d in dirnames if d != ".git")
        for name in sorted(filenames):
            path = os.path.join(dirpath, name)
            st = os.lstat(path)
            if not os.path.isfile(path) or os.path.islink(path) or st.st_size > LARGE:
                continue
            with open(path, "rb") as f:
                out.append((os.path.relpath(path, tree), st.st_mode & 0o7777, f.read()))
    return out


def packed_batches(files: list[tuple[str, int, bytes]]) -> list[bytes]:
    by_rel = {rel: (mode, data) for rel, mode, data in files}
    items = [Send(rel, LocalEntry(P.FILE, len(data), 0, mode), None) for rel, mode, data in files]
    blobs = []
    for batch in batches_of(items):
        ops = [P.write_op(i.rel, None, False, None, by_rel[i.rel][0], by_rel[i.rel][1]) for i in batch]
        blobs.append(P.pack_ops(ops))
    return blobs


def fresh(base: str) -> str:
    return tempfile.mkdtemp(prefix="push-", dir=base)


def write_agent(dest: str, rev: str | None) -> str:
    """The agent's modules of git revision rev (None: this working tree) as a package of
    their own in dest: its name."""
    agent = HERE.parent / "python" / "remote_dev" / "agent"
    name = "agent_" + ("worktree" if rev is None else "".join(c if c.isalnum() else "_" for c in rev))
    pkg = Path(dest) / name
    (pkg / "remote").mkdir(parents=True)
    (pkg / "__init__.py").write_bytes(b"")
    if rev is None:
        sources = {"protocol.py": (agent / "protocol.py").read_bytes()}
        sources.update({"remote/" + p.name: p.read_bytes() for p in (agent / "remote").glob("*.py")})
    else:
        def show(path: str) -> bytes:
            return subprocess.run(["git", "show", "%s:%s" % (rev, path)], cwd=HERE.parent, check=True,
                                  stdout=subprocess.PIPE).stdout
        listing = subprocess.run(["git", "ls-tree", "--name-only", rev, "python/remote_dev/agent/remote/"],
                                 cwd=HERE.parent, check=True, stdout=subprocess.PIPE, text=True).stdout.split()
        sources = {"protocol.py": show("python/remote_dev/agent/protocol.py")}
        sources.update({"remote/" + p.rpartition("/")[2]: show(p) for p in listing if p.endswith(".py")})
    for rel, data in sources.items():
        (pkg / rel).write_bytes(data)
    return name


def load_agent(dest: str, rev: str | None):
    """The agent of git revision rev (None: this working tree), written into dest by
    write_agent and imported: (its files module, its reuse module)."""
    name = write_agent(dest, rev)
    if dest not in sys.path:
        sys.path.insert(0, dest)
    files = importlib.import_module(name + ".remote.files")
    reuse = importlib.import_module(name + ".remote.reuse")
    reuse.IDLE_FLUSH = 1e9   # the index's writer waits until the end: not timed
    return files, reuse


def run_push(base: str, blobs: list[bytes], agent) -> float:
    files, reuse = agent
    root = fresh(base)
    ops = files.FileOps()
    t0 = time.thread_time()
    for blob in blobs:
        answers, _busy = P.unpack_answers(ops.push_packed(root, P.RAW, blob))
        if any(a[0] != P.OK for a in answers):
            raise SystemExit("push failed: %r" % next(a for a in answers if a[0] != P.OK))
    dt = time.thread_time() - t0
    ops.cleanup()
    reuse.INDEX = reuse.ContentIndex()   # the next push starts as the first of an agent
    shutil.rmtree(root)
    return dt


def run_floor(base: str, files: list[tuple[str, int, bytes]]) -> float:
    root = fresh(base)
    for d in sorted({os.path.dirname(rel) for rel, _, _ in files}):
        os.makedirs(os.path.join(root, d), exist_ok=True)
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL
    t0 = time.thread_time()
    for rel, mode, data in files:
        path = root + "/" + rel
        tmp = path + ".tmp"
        fd = os.open(tmp, flags, 0o644)
        os.write(fd, data)
        os.close(fd)
        os.rename(tmp, path)
    dt = time.thread_time() - t0
    shutil.rmtree(root)
    return dt


def run_wire(blobs: list[bytes]) -> float:
    """The agent's msgpack (pure Python) unpacking the requests of the push."""
    import msgpack
    from msgpack import fallback
    stream = b"".join(msgpack.packb([0, i, "push_packed", ["/root", P.RAW, blob]], use_bin_type=True)
                      for i, blob in enumerate(blobs))
    view = memoryview(stream)

    class Reader:
        pos = 0

        def read(self, n: int) -> bytes:   # what a pipe of 1 MB gives (server._Input)
            n = min(max(n, 1 << 16), 1 << 20)
            out = bytes(view[self.pos:self.pos + n])
            self.pos += len(out)
            return out

    unpacker = fallback.Unpacker(Reader(), raw=False, unicode_errors="surrogateescape",
                                 max_buffer_size=256 << 20, read_size=1 << 16)
    t0 = time.thread_time()
    count = sum(1 for _ in unpacker)
    dt = time.thread_time() - t0
    assert count == len(blobs)
    return dt


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tree", type=Path, default=None)
    ap.add_argument("-n", type=int, default=7, help="repetitions (median)")
    ap.add_argument("--wire", action="store_true", help="also time the agent's msgpack unpacking the requests")
    ap.add_argument("--no-floor", action="store_true")
    ap.add_argument("--against", action="append", default=[], metavar="REV",
                    help="also time the agent of git revision REV (in alternation)")
    args = ap.parse_args()
    tree = args.tree or default_tree()
    files = tree_files(tree)
    blobs = packed_batches(files)
    total = sum(len(d) for _, _, d in files)
    base = "/dev/shm" if os.path.isdir("/dev/shm") else None
    cache = tempfile.mkdtemp(prefix="cache-", dir=base)
    os.environ["XDG_CACHE_HOME"] = cache   # the root lock and the temporaries' journal
    agents = tempfile.mkdtemp(prefix="agents-")
    mine = load_agent(agents, None)
    print("%d files, %.1f MB, %d batches, in %s" % (len(files), total / 1e6, len(blobs), base or tempfile.gettempdir()))
    rows = [("push_packed", lambda: run_push(base, blobs, mine))]
    for rev in args.against:
        other = load_agent(agents, rev)
        rows.append(("push_packed@" + rev, lambda other=other: run_push(base, blobs, other)))
    if not args.no_floor:
        rows.append(("floor", lambda: run_floor(base, files)))
    if args.wire:
        rows.append(("wire (msgpack)", lambda: run_wire(blobs)))
    gc.collect()
    gc.freeze()   # the bench's own objects (the tree's files) out of the collector's way
    times: dict[str, list[float]] = {name: [] for name, _ in rows}
    for _ in range(args.n):   # interleaved: a busy moment hits every row alike
        for name, fn in rows:
            times[name].append(fn())
    for name, ts in times.items():
        med = statistics.median(ts)
        print("%-22s CPU median %.3f s (min %.3f, max %.3f), %.1f us/file" % (
            name, med, min(ts), max(ts), 1e6 * med / len(files)))
    for rev in args.against:
        mine_t, other_t = times["push_packed"], times["push_packed@" + rev]
        diff = statistics.median(b - a for a, b in zip(mine_t, other_t))
        low = min(other_t) - min(mine_t)
        print("%-22s %+.3f s a push, %+.1f us/file (median of the rounds' differences; of the minima %+.1f us/file)" % (
            "saved against " + rev, diff, 1e6 * diff / len(files), 1e6 * low / len(files)))
    shutil.rmtree(cache, ignore_errors=True)
    shutil.rmtree(agents, ignore_errors=True)


if __name__ == "__main__":
    main()
