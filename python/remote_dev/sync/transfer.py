"""Moving content over the agent channel(s): pushing a plan's files in batches (large ones
staged in chunks) and deletes, and reading files for a pull.

Push: small files and symlinks go in batches of up to BATCH_BYTES / BATCH_OPS ops, read
and hashed in worker threads READ_AHEAD batches ahead of the wire, up to MAX_INFLIGHT
batches per channel on the wire before waiting for answers.  A big push opens more agent
channels (each an SSH channel and an agent of its own): sshd's 2 MB window per channel
bounds one channel to 2 MB per round trip, and more agents spread the remote's writing
over more processes.  Files over LARGE travel in CHUNK appends to a staged temporary file
on the remote, hashed as they are read.  What each answer means is apply.PushCommit's
business; a file that cannot be read is skipped with its reason.

Pull: read requests pipelined up to PULL_WINDOW bytes; each file written atomically
(apply.PullCommit) as soon as it is whole.
"""

from __future__ import annotations

import asyncio
import os
import stat
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import asyncssh

from ..engine import TargetSession, log
from ..errors import ConnectError, RemoteDevError
from ..rpc import AgentChannel
from .apply import PullCommit, PushCommit
from .content import O_NOFOLLOW, digest, finish, link_hash, new_hasher
from .reconcile import PullItem, Send, content_unchanged
from .records import SyncRecords
from .scan import LocalEntry

BATCH_BYTES = 4 << 20          # payload per push request
BATCH_OPS = 2048
MAX_INFLIGHT = 3               # push requests per channel on the wire before waiting for answers
READ_AHEAD = 3                 # batches being read from disk meanwhile
EXTRA_CHANNEL_BATCHES = 8      # pushes of at least this many batches use more channels:
PUSH_CHANNELS = 4              # this many in all
CHUNK = 1 << 20                # large files travel in chunks of this size
LARGE = 8 << 20                # files above this are staged in chunks
PULL_WINDOW = 16 << 20         # bytes of read requests in flight during a pull
READ_SIZE = 4 << 20            # bytes per read request of a pull
PROGRESS_AFTER = 1.0           # seconds before progress reports start
PROGRESS_EVERY = 0.25

Op = list[Any]
ReadOp = tuple[Op, Send, str, LocalEntry]          # (op for the agent, item, hash, what was read)


class Progress:
    """Progress reports of a long push: none in its first PROGRESS_AFTER seconds."""

    def __init__(self, report: Callable[[str, dict[str, Any]], None], target: str, result: Any) -> None:
        self.report = report
        self.target = target
        self.result = result
        self.t0 = time.perf_counter()
        self.last = 0.0
        self.total_files = 0
        self.total_bytes = 0
        self.in_flight = 0   # bytes of large files sent, not yet answered

    def __call__(self, force: bool = False) -> None:
        now = time.perf_counter()
        if now - self.t0 < PROGRESS_AFTER or (now - self.last < PROGRESS_EVERY and not force):
            return
        self.last = now
        self.report("progress", {
            "action": "push", "target": self.target, "files": self.result.files, "total_files": self.total_files,
            "bytes": self.result.bytes + self.in_flight, "total_bytes": self.total_bytes,
        })


def read_fd(fd: int, size: int) -> bytes:
    """All of a file: one read when its size is as stat said (it can change meanwhile)."""
    chunks = [os.read(fd, size + 1)]
    while chunks[-1]:
        chunks.append(os.read(fd, 1 << 20))
    return chunks[0] if len(chunks) == 2 else b"".join(chunks)


def batches_of(items: list[Send]) -> list[list[Send]]:
    out: list[list[Send]] = []
    cur: list[Send] = []
    size = 0
    for item in items:
        cur.append(item)
        size += item.entry.size + 200
        if size >= BATCH_BYTES or len(cur) >= BATCH_OPS:
            out.append(cur)
            cur, size = [], 0
    if cur:
        out.append(cur)
    return out


def read_batch(root: Path, items: list[Send], records: SyncRecords
               ) -> tuple[list[ReadOp], list[tuple[Send, str, LocalEntry]], list[tuple[Send, OSError]]]:
    """Push ops for small files and symlinks, read and hashed here (in a worker thread):
    (ops, read but unchanged in content, unreadable)."""
    ops: list[ReadOp] = []
    same: list[tuple[Send, str, LocalEntry]] = []
    bad: list[tuple[Send, OSError]] = []
    for item in items:
        entry = item.entry
        if entry.kind == "l":
            h = link_hash(entry.target or "")
            op = ["l", item.rel, item.expect, item.force, h, None, entry.target]
        else:
            try:
                fd = os.open(root / item.rel, os.O_RDONLY | O_NOFOLLOW)
                try:
                    st = os.fstat(fd)
                    data = read_fd(fd, st.st_size)
                finally:
                    os.close(fd)
            except OSError as e:
                bad.append((item, e))
                continue
            if not stat.S_ISREG(st.st_mode):
                continue
            entry = LocalEntry("f", len(data), st.st_mtime_ns, stat.S_IMODE(st.st_mode))
            h = digest(data)
            op = ["w", item.rel, item.expect, item.force, h, entry.mode, data]
        if content_unchanged(records.get(item.rel), entry.kind, h, entry.mode, item.must, item.force):
            same.append((item, h, entry))
        else:
            ops.append((op, item, h, entry))
    return ops, same, bad


def consume(futs: list[asyncio.Future[Any]]) -> None:
    """Futures left behind (a lost connection): retrieve or cancel, never leak."""
    for f in futs:
        if f.done() and not f.cancelled():
            f.exception()
        else:
            f.cancel()


class Sender:
    """Sends one push plan: send_all(agent, sends, deletes, force)."""

    def __init__(self, sess: TargetSession, local_root: Path, commit: PushCommit, progress: Progress) -> None:
        self.sess = sess
        self.root = sess.target.remote_root
        self.local_root = local_root
        self.commit = commit
        self.progress = progress
        self.batches: list[list[Send]] = []
        self.large: list[Send] = []
        self.reads: dict[int, asyncio.Future[Any]] = {}
        self.inflight: list[tuple[asyncio.Future[Any], list[ReadOp]]] = []
        self.started = self.claimed = self.large_claimed = 0
        self.width = 1

    async def send_all(self, agent: AgentChannel, sends: list[Send], deletes: list[str], force: bool) -> None:
        self.large = [i for i in sends if i.entry.kind == "f" and i.entry.size > LARGE]
        self.batches = batches_of([i for i in sends if not (i.entry.kind == "f" and i.entry.size > LARGE)])
        self.progress.total_files = len(sends)
        self.progress.total_bytes = sum(i.entry.size for i in sends)
        channels = [agent] + await self.extra_channels()
        self.width = len(channels)
        loop = asyncio.get_running_loop()
        try:
            tasks = [loop.create_task(self.feed(chan)) for chan in channels]
            try:
                done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
                for t in done:
                    t.result()  # the first failure, if any
                await asyncio.gather(*tasks)
            finally:
                for t in tasks:
                    t.cancel()
            if deletes:
                ops = [["d", rel, self.commit.records.expect(rel), force] for rel in deletes]
                for rel, answer in zip(deletes, await agent.call("push", self.root, ops)):
                    self.commit.deleted(rel, answer)
        finally:
            for extra in channels[1:]:
                extra.close()
            consume(list(self.reads.values()))
            consume([fut for fut, _batch in self.inflight])

    async def extra_channels(self) -> list[AgentChannel]:
        """More agents for a big push, each on an SSH channel of its own."""
        out: list[AgentChannel] = []
        if len(self.batches) < EXTRA_CHANNEL_BATCHES and len(self.large) <= 1:
            return out
        for _ in range(PUSH_CHANNELS - 1):
            try:
                out.append(await AgentChannel.start(self.sess.conn, self.sess.target.host, self.sess.target.python))
            except (RemoteDevError, asyncssh.Error, OSError) as e:
                log.info("push: no extra channel (%s)", e)
                break
        return out

    def read_ahead(self, upto: int) -> None:
        """Start reading batches (in worker threads) up to index upto."""
        loop = asyncio.get_running_loop()
        while self.started < min(upto, len(self.batches)):
            n = self.started
            self.reads[n] = loop.run_in_executor(None, read_batch, self.local_root, self.batches[n],
                                                 self.commit.records)
            self.started += 1

    async def feed(self, chan: AgentChannel) -> None:
        """One channel's share: claim the next batch, send it, keep MAX_INFLIGHT on the wire;
        then the large files, one at a time."""
        mine: list[tuple[asyncio.Future[Any], list[ReadOp]]] = []
        while self.claimed < len(self.batches):
            n = self.claimed
            self.claimed += 1
            self.read_ahead(n + READ_AHEAD + self.width)
            batch, same, bad = await self.reads.pop(n)
            for item, h, entry in same:
                self.commit.same(item, h, entry)
            for item, err in bad:
                self.commit.unreadable(item, err)
            if batch:
                entry = (chan.send("push", self.root, [b[0] for b in batch]), batch)
                self.inflight.append(entry)
                mine.append(entry)
                await chan.drain()
            while len(mine) > MAX_INFLIGHT:
                await self.settle(mine.pop(0))
        for entry in mine:
            await self.settle(entry)
        while self.large_claimed < len(self.large):
            item = self.large[self.large_claimed]
            self.large_claimed += 1
            await self.push_large(chan, item)

    async def settle(self, entry: tuple[asyncio.Future[Any], list[ReadOp]]) -> None:
        fut, batch = entry
        answers = await fut
        self.inflight.remove(entry)
        for (_op, item, h, read), answer in zip(batch, answers):
            self.commit.sent(item, h, read, answer)
        self.progress()

    async def push_large(self, agent: AgentChannel, item: Send) -> None:
        """One large file: staged on the remote in CHUNK appends, hashed as it is read, then
        put in place by a push op carrying the stage token (the agent checks the hash)."""
        try:
            fd = os.open(self.local_root / item.rel, os.O_RDONLY | O_NOFOLLOW)
        except OSError as e:
            self.commit.unreadable(item, e)
            return
        f = os.fdopen(fd, "rb")
        token = await agent.call("stage", self.root, item.rel)
        h = new_hasher()
        appends: list[asyncio.Future[Any]] = []
        sent = 0

        def read_chunk() -> bytes:
            block = f.read(CHUNK)
            h.update(block)
            return block
        try:
            st = os.fstat(f.fileno())
            while block := await asyncio.to_thread(read_chunk):
                appends.append(agent.send("append", token, block))
                sent += len(block)
                self.progress.in_flight += len(block)
                await agent.drain()
                self.progress()
        except OSError as e:
            self.commit.unreadable(item, e)
            await agent.call("unstage", token)
            return
        finally:
            f.close()
            self.progress.in_flight -= sent
        entry = LocalEntry("f", sent, st.st_mtime_ns, stat.S_IMODE(st.st_mode))
        hd = finish(h)
        answer = (await agent.call("push", self.root, [["s", item.rel, item.expect, item.force, hd, entry.mode,
                                                         token]]))[0]
        consume([f for f in appends if f.done()])  # their errors (disk full) come back in the answer as well
        self.commit.sent(item, hd, entry, answer, large=True)


# --------------------------------------------------------------------------- pull


async def fetch_all(agent: Any, root: str, todo: list[PullItem], commit: PullCommit) -> None:
    """Read requests pipelined up to PULL_WINDOW bytes; each file written atomically as
    soon as it is whole."""
    window: list[tuple[PullItem, list[asyncio.Future[Any]]]] = []
    in_window = 0

    async def flush() -> None:
        nonlocal in_window
        for item, futs in window:
            try:
                data = b"".join([await f for f in futs])
            except RemoteDevError as e:
                if isinstance(e, ConnectError):
                    raise
                commit.error(item, e.message)
                continue
            await put(item, data, digest(data))
        window.clear()
        in_window = 0

    async def put(item: PullItem, data: bytes | None, content_hash: str) -> None:
        try:
            st = await asyncio.to_thread(commit.put, item, data)
        except RemoteDevError as e:  # a folder on the way turned into a symlink meanwhile
            commit.error(item, e.message)
            return
        commit.done(item, st, content_hash)

    try:
        for item in todo:
            if item.kind == "l":
                await put(item, None, link_hash(item.target or ""))
                continue
            futs = []
            offset = 0
            while offset < item.size or (offset == 0 and not futs):
                n = min(READ_SIZE, max(item.size - offset, 0)) or 1
                futs.append(agent.send("read", root, item.rel, offset, n))
                offset += n
            window.append((item, futs))
            in_window += item.size
            await agent.drain()
            if in_window >= PULL_WINDOW:
                await flush()
        await flush()
    finally:
        consume([f for _item, futs in window for f in futs])
