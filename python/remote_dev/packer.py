"""Worker processes that read, hash, pack and compress a push's batches (sync/transfer.py),
so that the engine's event loop -- asyncssh's work per packet -- never waits for the GIL
behind that work, and the work itself uses the other cores.

The engine keeps one PackWorkers (engine.state): started at the first push that uses them
(REMOTE_DEV_PACK=processes; their interpreters come up while the first batches wait),
reused by every push after, closed with the engine (Engine.close) or at the interpreter's
exit.  A worker is a fresh interpreter (``python -c``: fork+exec, never a fork of this
threaded process) that imports only this module and the agent's protocol, reads jobs from
its stdin and writes answers to its stdout; it ends when its stdin closes, so a Neovim
or Python host that dies -- even by SIGKILL -- leaves none behind.  A worker that dies
fails the jobs it held (WorkerDied) and is replaced at the next job.

The module lives outside ``sync/`` so that a worker's import is light (``sync/__init__``
pulls in the engine and asyncssh).

Wire, both ways: an 8-byte length and a pickle (a job: (name, args); an answer: (ok, value,
blob length, whether the job answered (value, blob))), then the answer's blob, read
straight into one buffer.
"""

from __future__ import annotations

import atexit
import collections
import concurrent.futures
import os
import pickle
import queue
import signal
import stat
import struct
import subprocess
import sys
import threading
import time
from typing import Any, BinaryIO

from remote_dev.agent.protocol import (FILE, LINK, O_NOFOLLOW, RAW, ZLIB, ZSTD, choose_codec, compress, digest,
                                       link_hash, link_op, pack_ops, sample_ratio, write_op)
from remote_dev.errors import RemoteDevError

try:
    from zlib_ng import zlib_ng as deflate
except ImportError:  # pragma: no cover - a dependency; the stdlib's zlib does the same, slower
    deflate = None
try:
    import zstandard
except ImportError:  # pragma: no cover - a dependency; without it zlib is used (wire.LOCAL_CODECS)
    zstandard = None

_LEN = struct.Struct("<Q")
WORKERS_MAX = 4


class WorkerDied(RemoteDevError):
    """A worker process ended while it held a job."""


# --------------------------------------------------------------------------- the work (both sides)

def read_fd(fd: int, size: int) -> bytes:
    """All of a file: one read when its size is as stat said (it can change meanwhile)."""
    chunks = [os.read(fd, size + 1)]
    while chunks[-1]:
        chunks.append(os.read(fd, 1 << 20))
    return chunks[0] if len(chunks) == 2 else b"".join(chunks)


def read_one(base: str, rel: str, kind: str, target: str | None
             ) -> tuple[str, int, int, int, bytes | None] | OSError | None:
    """(hash, size, mtime_ns, mode, data) of a regular file (data None for a symlink: its
    hash is its target's), an OSError when it cannot be read, None when it is no longer a
    regular file."""
    if kind == LINK:
        return link_hash(target or ""), 0, 0, 0, None
    try:
        fd = os.open(base + rel, os.O_RDONLY | O_NOFOLLOW)
        try:
            st = os.fstat(fd)
            data = read_fd(fd, st.st_size)
        finally:
            os.close(fd)
    except OSError as e:
        return e
    if not stat.S_ISREG(st.st_mode):
        return None
    return digest(data), len(data), st.st_mtime_ns, stat.S_IMODE(st.st_mode), data


def deflate_with(fmt: str, level: int, data: bytes) -> bytes:
    """data in format fmt at level: the zlib format with zlib-ng when it is here."""
    if fmt == ZLIB and deflate is not None:
        return deflate.compress(data, level)
    if fmt == ZSTD and zstandard is not None:
        return zstandard.ZstdCompressor(level=level).compress(data)
    return compress(fmt, level, data)


def choose(plan: tuple[Any, ...], sample: bytes) -> tuple[str, int]:
    """The codec of a payload by a Compressor's plan (wire.Compressor.plan)."""
    forced, link, cores, formats, speed, table, ceiling = plan
    if forced:
        fmt, _, level = forced.partition("-")
        return ("" if fmt == "raw" else fmt), int(level or 0)
    if link is None:
        return RAW, 0
    return choose_codec(link, cores, sample_ratio(sample), formats, speed, table, ceiling)


def sample_of(datas: list[bytes]) -> bytes:
    """Up to 48 KB of a batch's file contents, from its start, middle and end."""
    pieces = []
    for start in sorted({0, len(datas) // 2, max(len(datas) - 1, 0)}):
        got = 0
        for data in datas[start:]:
            pieces.append(data[:16384 - got])
            got += len(pieces[-1])
            if got >= 16384:
                break
    return b"".join(pieces)


def pack_batch(root: str, items: list[tuple[Any, ...]], plan: tuple[Any, ...]) -> tuple[dict[str, Any], bytes]:
    """One batch of a push, read, hashed, packed and compressed (in a worker).  items:
    (rel, kind, target, expect, force, record) with record (hash, kind, mode) when the
    content equal to it is sent no more (reconcile.content_unchanged).  Answers
    ({"ops": [(i, hash, entry)], "same": [...], "bad": [(i, errno, strerror)], "fmt",
    "level", "raw", "dt"}, blob)."""
    base = os.path.join(root, "")
    ops, datas, sent, same, bad = [], [], [], [], []
    for i, (rel, kind, target, expect, force, record) in enumerate(items):
        got = read_one(base, rel, kind, target)
        if isinstance(got, OSError):
            bad.append((i, got.errno, got.strerror))
            continue
        if got is None:
            continue
        h, size, mtime, mode, data = got
        entry = (kind, size, mtime, mode, target) if kind == LINK else (FILE, size, mtime, mode, None)
        if record is not None and record == (h, entry[0], entry[3]):
            same.append((i, h, entry))
            continue
        if data is None:
            ops.append(link_op(rel, expect, force, h, target))
        else:
            ops.append(write_op(rel, expect, force, h, mode, data))
            datas.append(data)
        sent.append((i, h, entry))
    meta: dict[str, Any] = {"ops": sent, "same": same, "bad": bad, "fmt": RAW, "level": 0, "raw": 0, "dt": 0.0}
    if not ops:
        return meta, b""
    raw = pack_ops(ops)
    fmt, level = choose(plan, sample_of(datas))
    blob = raw
    if fmt:
        t0 = time.perf_counter()
        blob = deflate_with(fmt, level, raw)
        meta["dt"] = time.perf_counter() - t0
        if len(blob) >= len(raw):
            blob = raw
            fmt = RAW
    meta.update(fmt=fmt, level=level, raw=len(raw))
    return meta, blob


JOBS = {"pack": pack_batch, "pid": lambda: os.getpid()}


# --------------------------------------------------------------------------- the worker

def read_exact(f: BinaryIO, n: int) -> bytearray | None:
    buf = bytearray(n)
    view = memoryview(buf)
    got = 0
    while got < n:
        k = f.readinto(view[got:])
        if not k:
            return None
        got += k
    return buf


def main() -> None:
    """A worker: jobs from stdin, answers to stdout, until stdin closes."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)   # Ctrl-C is the parent's to handle
    inp = os.fdopen(os.dup(0), "rb", buffering=0)
    out = os.fdopen(os.dup(1), "wb", buffering=0)
    null = os.open(os.devnull, os.O_RDWR)
    os.dup2(null, 0)
    os.dup2(null, 1)   # nothing printed may land in the answers
    while True:
        head = read_exact(inp, _LEN.size)
        if head is None:
            return
        body = read_exact(inp, _LEN.unpack(head)[0])
        if body is None:
            return
        name, args = pickle.loads(body)
        try:
            value = JOBS[name](*args)
            blob = b""
            pair = isinstance(value, tuple) and len(value) == 2 and isinstance(value[1], bytes)
            if pair:
                value, blob = value
            answer = pickle.dumps((True, value, len(blob), pair), pickle.HIGHEST_PROTOCOL)
        except Exception as e:  # noqa: BLE001 - the job's failure goes back as its answer
            blob = b""
            answer = pickle.dumps((False, f"{type(e).__name__}: {e}", 0, False), pickle.HIGHEST_PROTOCOL)
        try:
            write_all(out.fileno(), _LEN.pack(len(answer)) + answer)
            if blob:
                write_all(out.fileno(), blob)
        except BrokenPipeError:
            return


def write_all(fd: int, data: bytes | bytearray) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


# --------------------------------------------------------------------------- the engine's side

PIPE_SIZE = 1 << 20


def grow_pipe(fd: int) -> None:
    """A pipe of PIPE_SIZE (Linux; 64 KB by default): a 2 MB answer in 2 reads, not 32, each
    of which takes the GIL again."""
    try:
        import fcntl
        fcntl.fcntl(fd, getattr(fcntl, "F_SETPIPE_SZ", 1031), PIPE_SIZE)
    except (ImportError, OSError):
        pass


def settle(fut: concurrent.futures.Future[Any], value: Any = None, exc: BaseException | None = None) -> None:
    """A job's answer, unless its caller gave up on it (cancelled)."""
    if not fut.set_running_or_notify_cancel():
        return
    if exc is not None:
        fut.set_exception(exc)
    else:
        fut.set_result(value)


class _Worker:
    """One worker process, its jobs in flight (answered in order) and the two threads that
    write its jobs and read its answers (a pipe write never blocks the event loop)."""

    def __init__(self) -> None:
        here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (here, os.environ.get("PYTHONPATH")) if p))
        self.proc = subprocess.Popen([sys.executable, "-c", "from remote_dev.packer import main; main()"],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                     env=env, close_fds=True, bufsize=0)
        for pipe in (self.proc.stdin, self.proc.stdout):
            grow_pipe(pipe.fileno())
        self.pending: collections.deque[concurrent.futures.Future[Any]] = collections.deque()
        self.lock = threading.Lock()
        self.jobs: queue.SimpleQueue[bytes | None] = queue.SimpleQueue()
        self.dead: str | None = None
        for fn, name in ((self.write_loop, "w"), (self.read_loop, "r")):
            threading.Thread(target=fn, name=f"rd-packer-{self.proc.pid}-{name}", daemon=True).start()

    def submit(self, name: str, args: tuple[Any, ...]) -> concurrent.futures.Future[Any]:
        fut: concurrent.futures.Future[Any] = concurrent.futures.Future()
        body = pickle.dumps((name, args), pickle.HIGHEST_PROTOCOL)
        with self.lock:
            if self.dead is not None:
                fut.set_exception(WorkerDied(self.dead))
                return fut
            self.pending.append(fut)
            self.jobs.put(_LEN.pack(len(body)) + body)
        return fut

    def write_loop(self) -> None:
        stdin = self.proc.stdin
        assert stdin is not None
        while True:
            job = self.jobs.get()
            if job is None:
                break
            try:
                write_all(stdin.fileno(), job)
            except OSError:
                break
        try:
            stdin.close()
        except OSError:
            pass

    def read_loop(self) -> None:
        out = self.proc.stdout
        assert out is not None
        while True:
            head = read_exact(out, _LEN.size)
            body = read_exact(out, _LEN.unpack(head)[0]) if head is not None else None
            if body is None:
                break
            ok, value, n, pair = pickle.loads(body)
            blob = read_exact(out, n) if n else bytearray()
            if blob is None:
                break
            with self.lock:
                fut = self.pending.popleft()
            settle(fut, (value, blob) if pair else value) if ok else settle(fut, exc=RuntimeError(value))
        self.ended()

    def ended(self) -> None:
        """The worker's stdout closed: it ended (or is ending); its jobs fail."""
        try:
            code = self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait()
        how = f"killed by {signal.Signals(-code).name}" if code < 0 else f"exit status {code}"
        with self.lock:
            self.dead = f"the local worker process {self.proc.pid} that reads and packs files ended ({how})"
            pending, self.pending = list(self.pending), collections.deque()
            self.jobs.put(None)
        for fut in pending:
            settle(fut, exc=WorkerDied(self.dead))

    def close(self) -> None:
        with self.lock:
            if self.dead is None:
                self.dead = "the worker processes were closed"
            self.jobs.put(None)   # the writer closes stdin: the worker ends
        try:
            self.proc.wait(2)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


class PackWorkers:
    """The engine's worker processes (see the module's doc): ``start()`` in the
    background, ``submit(name, *args)`` -> a concurrent Future, ``close()``."""

    def __init__(self, count: int | None = None) -> None:
        self.count = count or max(1, min(os.cpu_count() or 1, WORKERS_MAX))
        self.workers: list[_Worker] = []
        self.lock = threading.Lock()
        self.closed = False
        atexit.register(self.close)

    def start(self) -> None:
        """Start (or replace dead) workers; returns at once (their interpreters start meanwhile)."""
        with self.lock:
            if self.closed:
                return
            self.workers = [w for w in self.workers if w.dead is None]
            while len(self.workers) < self.count:
                self.workers.append(_Worker())

    @property
    def started(self) -> bool:
        return bool(self.workers)

    def pids(self) -> list[int]:
        return [w.proc.pid for w in self.workers if w.dead is None]

    def submit(self, name: str, *args: Any) -> concurrent.futures.Future[Any]:
        """The job to the live worker holding the fewest."""
        self.start()
        with self.lock:
            live = [w for w in self.workers if w.dead is None]
        if not live:
            fut: concurrent.futures.Future[Any] = concurrent.futures.Future()
            fut.set_exception(WorkerDied("the worker processes were closed"))
            return fut
        return min(live, key=lambda w: len(w.pending)).submit(name, args)

    def close(self) -> None:
        with self.lock:
            self.closed = True
            workers, self.workers = self.workers, []
        for w in workers:
            w.close()
        atexit.unregister(self.close)

    release = close   # the engine closes (FeatureState.release_states)
