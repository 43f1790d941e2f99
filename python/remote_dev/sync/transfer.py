"""Moving a push's content over the agent channel(s): small files in batches, large files
staged in chunks, deletes.  (Pulls: fetch.py.)

Batches: small files and symlinks, sorted by suffix, then path (similar files side by side
compress better: files of one folder are alike; on the bench tree 2% fewer bytes than by
suffix and name), up to BATCH_BYTES / BATCH_OPS each, read, hashed and -- when the link
makes it pay (wire.Compressor) -- packed and compressed as ONE stream in worker threads,
ahead of the wire.  Each channel keeps up to MAX_INFLIGHT requests / INFLIGHT_BYTES on the
wire and takes the answers as they come (callbacks), so a long round trip never stalls
the stream; the answers also measure the link (wire.AckClock).

A push of more than EXTRA_CHANNEL_BYTES, or of several large files, also uses extra agent
channels (an SSH channel and an agent each) where they help: on a link whose bandwidth-
delay product exceeds one channel's SSH window, or on a fast link to a remote with cores
to spare for more writers (EXTRA_CHANNEL_CPUS; on fewer, the agents' start and their
competition for the cores cost more than they bring).  They start in the background while
the main channel already sends, join as they come up, and stay open a while for the next
push (channels.py).

Large files (over LARGE) travel in CHUNK appends to a staged temporary file on the remote,
each chunk compressed on its own when that pays, hashed as read; then a push op carrying
the stage token puts the file in place (the agent checks the hash).  What each answer
means is apply.PushCommit's business; a file that cannot be read is skipped with its
reason.  A lost connection fails every request in flight: their futures are retrieved
here, so the push ends with one ConnectError and nothing else.
"""

from __future__ import annotations

import asyncio
import os
import stat
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from ..agent.protocol import (FILE, LINK, NEED, OK, OP_PAYLOAD, copy_op, delete_op, link_op, pack_ops, staged_op,
                              unpack_answers, write_op)
from ..engine import TargetSession
from ..errors import AgentCallError
from .. import packer
from ..packer import PackWorkers, WorkerDied, read_one
from ..rpc import AgentChannel, consume
from .apply import PushCommit
from .channels import ExtraChannels
from .content import O_NOFOLLOW, finish, new_hasher
from .reconcile import Send, content_unchanged, in_the_way
from .records import SyncRecords
from .reuse import copy_min
from .scan import LocalEntry
from .wire import AckClock, Compressor

BATCH_BYTES = 2 << 20          # raw payload per push request
FIRST_BATCH = 64 << 10         # the first batches are smaller (doubling up): the wire starts at once
BATCH_OPS = 2048
MAX_INFLIGHT = 16              # push requests per channel on the wire before waiting for answers
INFLIGHT_BYTES = 8 << 20       # wire bytes per channel on the wire
EXTRA_CHANNEL_BYTES = 24 << 20  # pushes of at least this much use more channels:
PUSH_CHANNELS = 4              # this many in all, when the link's window limits or
EXTRA_CHANNEL_CPUS = 4         # the link is fast and the remote has at least this many cores
CHUNK = 1 << 20                # large files travel in chunks of this size
LARGE = 8 << 20                # files above this are staged in chunks
CHUNKS_AHEAD = 3               # chunks of a large file read and compressed ahead of the wire
STARVED_AFTER = 6              # batches before the wire running dry says the link is faster than assumed
PROGRESS_AFTER = 1.0           # seconds before progress reports start
PROGRESS_EVERY = 0.25
DUP_MIN = 256                  # a file of at least this size whose content an earlier one of the push has: copied


class Dedup:
    """Content seen in a push: hash -> (batch, path) of its first file, so that another
    file of the same content (of at least least bytes) goes as a copy op (the agent copies
    it, checking its content) when its batch is not sent before that first one's.  Batches
    are read in threads."""

    def __init__(self, least: float = DUP_MIN) -> None:
        self.first: dict[str, tuple[int, str]] = {}
        self.lock = threading.Lock()
        self.least = max(DUP_MIN, least)

    def source(self, h: str, batch: int, rel: str) -> str | None:
        with self.lock:
            cur = self.first.get(h)
            if cur is None or cur[0] > batch:
                self.first[h] = (batch, rel)
                return None
            return cur[1] if cur[1] != rel else None


class ReadFailed(Exception):
    """Reading a local file failed (as opposed to the channel)."""

    def __init__(self, err: OSError) -> None:
        super().__init__(str(err))
        self.err = err


class ReadOp(NamedTuple):
    op: list[Any]         # for the agent
    item: Send
    hash: str
    entry: LocalEntry     # what was read


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


def is_large(item: Send) -> bool:
    return item.entry.kind == FILE and item.entry.size > LARGE


def by_suffix(item: Send) -> tuple[str, str]:
    name = item.rel.rpartition("/")[2]
    return (name.rpartition(".")[2] if "." in name else "", item.rel)


def batches_of(items: list[Send]) -> list[list[Send]]:
    """The batches of small files, in the order they go: the first ones small and doubling
    (the wire starts at once), the last ones halving (the remote writes the last one soon
    after it has come, so its answer follows the last byte closely)."""
    out: list[list[Send]] = []
    cur: list[Send] = []
    size = 0
    limit = FIRST_BATCH
    left = sum(item.entry.size + 200 for item in items)
    for item in sorted(items, key=by_suffix):
        cur.append(item)
        size += item.entry.size + 200
        if size >= min(limit, max(FIRST_BATCH, left // 2)) or len(cur) >= BATCH_OPS:
            out.append(cur)
            left -= size
            cur, size = [], 0
            limit = min(2 * limit, BATCH_BYTES)
    if cur:
        out.append(cur)
    return out


def read_batch(root: Path, items: list[Send], records: SyncRecords, dedup: Dedup | None = None, batch: int = 0
               ) -> tuple[list[ReadOp], list[tuple[Send, str, LocalEntry]], list[tuple[Send, OSError]]]:
    """Push ops for small files and symlinks, read and hashed here (in a worker thread):
    (ops, read but unchanged in content, unreadable).  A file whose content an earlier
    one of the push has goes as a copy op (dedup)."""
    ops: list[ReadOp] = []
    same: list[tuple[Send, str, LocalEntry]] = []
    bad: list[tuple[Send, OSError]] = []
    base = os.path.join(root, "")   # a str once, not a Path per file
    for item in items:
        entry = item.entry
        got = read_one(base, item.rel, entry.kind, entry.target)
        if isinstance(got, OSError):
            bad.append((item, got))
            continue
        if got is None:
            continue
        h, size, mtime, mode, data = got
        if data is None:
            op = link_op(item.rel, item.expect, item.force, h, entry.target)
        else:
            entry = LocalEntry(FILE, size, mtime, mode)
            source = dedup.source(h, batch, item.rel) if dedup is not None and size >= dedup.least else None
            if source is not None:
                op = copy_op(item.rel, item.expect, item.force, h, mode, size, source)
            else:
                op = write_op(item.rel, item.expect, item.force, h, mode, data)
        if content_unchanged(records.get(item.rel), entry.kind, h, entry.mode, item.must, item.force):
            same.append((item, h, entry))
        else:
            ops.append(ReadOp(op, item, h, entry))
    return ops, same, bad


async def send_deletes(agent: AgentChannel, root: str, commit: PushCommit, deletes: list[str], force: bool) -> None:
    """Deletes, in one request (journaled first: records.py)."""
    commit.deleting(deletes)
    ops = [delete_op(rel, commit.records.expect(rel), force) for rel in deletes]
    for rel, answer in zip(deletes, await agent.call("push", root, ops)):
        commit.deleted(rel, answer)


async def deletes_first(agent: AgentChannel, root: str, commit: PushCommit, sends: list[Send], deletes: list[str],
                        force: bool) -> list[str]:
    """The deletes in the way of sends (a file where a folder comes, or the reverse:
    reconcile.in_the_way) sent now, before the writes and copies; the other deletes."""
    first, rest = in_the_way(sends, deletes)
    if first:
        await send_deletes(agent, root, commit, first, force)
    return rest


def sample_of(ops: list[ReadOp]) -> bytes:
    """Up to 48 KB of a batch's file contents, from its start, middle and end."""
    return packer.sample_of([r.op[OP_PAYLOAD] for r in ops if isinstance(r.op[OP_PAYLOAD], bytes)])


@dataclass
class Prepared:
    """A batch ready for the wire: its request and what it carries."""
    ops: list[ReadOp]
    same: list[tuple[Send, str, LocalEntry]]
    bad: list[tuple[Send, OSError]]
    method: str = ""
    params: tuple[Any, ...] = ()
    wire: int = 0
    raw: int = 0      # bytes before compression


def prepare(root: Path, remote_root: str, items: list[Send], records: SyncRecords, comp: Compressor,
            dedup: Dedup | None = None, batch: int = 0) -> Prepared:
    """Read, hash and (when it pays) pack and compress one batch: in a worker thread."""
    ops, same, bad = read_batch(root, items, records, dedup, batch)
    out = Prepared(ops, same, bad)
    if not ops:
        return out
    fmt, level = comp.choose(sample_of(ops))
    packed = pack_ops([r.op for r in ops])
    fmt, blob = comp.compress(fmt, level, packed)
    out.method, out.params, out.wire, out.raw = "push_packed", (remote_root, fmt, blob), len(blob), len(packed)
    return out


def batch_spec(items: list[Send], records: SyncRecords) -> list[tuple[Any, ...]]:
    """A batch for a worker process (packer.pack_batch): per item its path, kind, symlink
    target, expectation, force, and -- when an equal content is not sent again
    (reconcile.content_unchanged) -- the record's (hash, kind, mode)."""
    out = []
    for item in items:
        rec = records.get(item.rel)
        keep = rec is not None and not item.must and not item.force
        out.append((item.rel, item.entry.kind, item.entry.target, item.expect, item.force,
                    (rec.hash, rec.kind, rec.mode) if keep and rec is not None else None))
    return out


def prepared_from(items: list[Send], meta: dict[str, Any], blob: bytes, remote_root: str, comp: Compressor) -> Prepared:
    """A worker's answer (packer.pack_batch) as the batch ready for the wire."""
    def entry(e: list[Any]) -> LocalEntry:
        return LocalEntry(*e) if e[0] == LINK else LocalEntry(*e[:4])
    ops = [ReadOp([None] * (OP_PAYLOAD + 1), items[i], h, entry(e)) for i, h, e in meta["ops"]]   # written, no copies
    out = Prepared(ops, [(items[i], h, entry(e)) for i, h, e in meta["same"]],
                   [(items[i], OSError(code, text)) for i, code, text in meta["bad"]])
    if ops:
        comp.measured(meta["fmt"], meta["level"], meta["raw"], meta["dt"])
        out.method, out.params = "push_packed", (remote_root, meta["fmt"], blob)
        out.wire, out.raw = len(blob), meta["raw"]
    return out


@dataclass
class Lane:
    """One channel's requests on the wire."""
    chan: AgentChannel
    count: int = 0
    bytes: int = 0
    moved: asyncio.Event = field(default_factory=asyncio.Event)

    async def room(self, wire: int) -> None:
        while self.count >= MAX_INFLIGHT or (self.count and self.bytes + wire > INFLIGHT_BYTES):
            self.moved.clear()
            await self.moved.wait()

    async def empty(self) -> None:
        while self.count:
            self.moved.clear()
            await self.moved.wait()


def channels_for(meter: Any, remote_cpus: int) -> int:
    """How many channels a big push uses (see the module's doc)."""
    if meter.window_limited() or (meter.fast and remote_cpus >= EXTRA_CHANNEL_CPUS):
        return PUSH_CHANNELS
    return 1


class Sender:
    """Sends one push plan: send_all(agent, sends, deletes, force)."""

    def __init__(self, sess: TargetSession, local_root: Path, commit: PushCommit, progress: Progress,
                 comp: Compressor, clock: AckClock, channels: int = PUSH_CHANNELS,
                 first_sent: Callable[[], None] | None = None, workers: PackWorkers | None = None) -> None:
        self.sess = sess
        self.root = sess.target.remote_root
        self.local_root = local_root
        self.commit = commit
        self.progress = progress
        self.comp = comp
        self.clock = clock
        self.batches: list[list[Send]] = []
        self.large: list[Send] = []
        self.prepared: dict[int, asyncio.Future[Prepared]] = {}
        self.started = self.claimed = self.large_claimed = 0
        self.lanes: list[Lane] = []
        self.feeders: list[asyncio.Task[None]] = []
        self.failure: BaseException | None = None
        self.channels = channels
        self.first_sent = first_sent   # called once, when the first request is on the wire
        self.workers = workers         # worker processes for the batches (None: threads)
        self.wire_sent = 0             # wire bytes sent, since the first at t_first
        self.t_first = 0.0
        self.waits = [0.0, 0.0]        # seconds the lanes waited for batches, for room on the wire
        least = copy_min(sess)
        self.dedup: Dedup | None = Dedup(least) if workers is None and least < float("inf") else None   # threads only
        self.need: list[Send] = []     # copies the agent could not make: sent again, whole

    async def send_all(self, agent: AgentChannel, sends: list[Send], deletes: list[str], force: bool) -> None:
        self.large = [i for i in sends if is_large(i)]
        self.batches = batches_of([i for i in sends if not is_large(i)])
        self.progress.total_files = len(sends)
        self.progress.total_bytes = sum(i.entry.size for i in sends)
        extras = self.sess.state(ExtraChannels)
        try:
            self.add_lane(agent)
            if self.channels > 1 and (self.progress.total_bytes >= EXTRA_CHANNEL_BYTES or len(self.large) > 1):
                for chan in extras.take(self.sess, self.channels - 1, self.join):
                    self.join(chan)
            await self.wait_feeders()
            if self.need:   # a copy's source came on another channel, not yet there: whole
                self.batches, self.need, self.dedup = batches_of(self.need), [], None
                self.started = self.claimed = 0
                await self.feed(self.lanes[0])
            if deletes:
                await send_deletes(agent, self.root, self.commit, deletes, force)
        finally:
            extras.give_back([lane.chan for lane in self.lanes[1:]])
            for t in self.feeders:
                t.cancel()
            consume(self.prepared.values())

    def add_lane(self, chan: AgentChannel) -> None:
        lane = Lane(chan)
        self.lanes.append(lane)
        self.comp.agents = len(self.lanes)
        self.feeders.append(asyncio.get_running_loop().create_task(self.feed(lane)))

    def join(self, chan: AgentChannel) -> bool:
        """An extra channel came up: it takes a share while work is left."""
        if self.failure is not None or (self.claimed >= len(self.batches) and self.large_claimed >= len(self.large)):
            return False
        if any(t.done() for t in self.feeders[:1]):
            return False
        self.add_lane(chan)
        return True

    async def wait_feeders(self) -> None:
        """Until every lane is done (lanes can join meanwhile); the first failure ends all."""
        while True:
            live = [t for t in self.feeders if not t.done()]
            failed = [t for t in self.feeders if t.done() and not t.cancelled() and t.exception() is not None]
            if failed or not live:
                break
            await asyncio.wait(live, return_when=asyncio.FIRST_COMPLETED)
        if failed:
            for t in self.feeders:
                t.cancel()
            await asyncio.gather(*self.feeders, return_exceptions=True)
            exc = failed[0].exception()
            if isinstance(exc, WorkerDied):   # the channels live: what is on the wire is answered first
                await asyncio.gather(*(lane.empty() for lane in self.lanes))
            raise exc  # type: ignore[misc]

    def check(self) -> None:
        if self.failure is not None:
            raise self.failure

    def on_wire(self, lane: Lane, fut: asyncio.Future[Any], wire: int, handle: Callable[[Any], None]) -> None:
        """A request went out: its answer is handled when it comes (or its failure kept)."""
        lane.count += 1
        lane.bytes += wire
        self.clock.sent(wire)
        self.t_first = self.t_first or time.perf_counter()
        self.wire_sent += wire

        def done(f: asyncio.Future[Any]) -> None:
            lane.count -= 1
            lane.bytes -= wire
            lane.moved.set()
            if f.cancelled():
                return
            exc = f.exception()
            if exc is not None:
                self.failure = self.failure or exc
                return
            self.clock.answered(wire)
            self.commit.result.wire += wire
            handle(f.result())
            self.progress()
        fut.add_done_callback(done)

    def read_ahead(self, upto: int) -> None:
        """Start preparing batches (in worker threads) up to index upto."""
        loop = asyncio.get_running_loop()
        while self.started < min(upto, len(self.batches)):
            n = self.started
            if self.workers is not None:
                self.prepared[n] = loop.create_task(self.packed(self.batches[n]))
            else:
                self.prepared[n] = loop.run_in_executor(self.comp.pool, prepare, self.local_root, self.root,
                                                        self.batches[n], self.commit.records, self.comp, self.dedup, n)
            self.started += 1

    async def packed(self, items: list[Send]) -> Prepared:
        """One batch read, hashed, packed and compressed in a worker process."""
        assert self.workers is not None
        fut = self.workers.submit("pack", str(self.local_root), batch_spec(items, self.commit.records),
                                  self.comp.plan())
        meta, blob = await asyncio.wrap_future(fut)
        return prepared_from(items, meta, blob, self.root, self.comp)

    async def feed(self, lane: Lane) -> None:
        """One channel's share: claim the next batch, send it while there is room on the
        wire; then the large files, one at a time; then wait for its answers."""
        chan = lane.chan
        while self.failure is None and self.claimed < len(self.batches):
            n = self.claimed
            self.claimed += 1
            self.read_ahead(n + self.comp.cores + len(self.lanes) + 1)
            t0 = time.perf_counter()
            prep = await self.prepared.pop(n)
            t1 = time.perf_counter()
            self.waits[0] += t1 - t0
            self.clock.waited(t1 - t0, len(self.lanes))
            if n >= STARVED_AFTER and self.waits[0] > 2 * self.waits[1] + 0.02:   # the wire waits for us
                self.comp.meter.starved(self.wire_sent / max(t1 - self.t_first, 1e-3))
            for item, h, entry in prep.same:
                self.commit.same(item, h, entry)
            for item, err in prep.bad:
                self.commit.unreadable(item, err)
            if prep.method:
                await lane.room(prep.wire)
                self.waits[1] += time.perf_counter() - t1
                self.check()
                self.commit.in_flight([(r.item, r.hash, r.entry) for r in prep.ops])
                fut = chan.send(prep.method, *prep.params)
                self.on_wire(lane, fut, prep.wire, lambda blob, prep=prep: self.batch_done(prep, blob))
                await chan.drain()
                if self.first_sent is not None:
                    self.first_sent()
                    self.first_sent = None
        while self.failure is None and self.large_claimed < len(self.large):
            item = self.large[self.large_claimed]
            self.large_claimed += 1
            await LargeSend(self, lane, item).run()
        await lane.empty()
        self.check()

    def batch_done(self, prep: Prepared, blob: bytes) -> None:
        answers, busy = unpack_answers(blob)
        if busy is not None:
            self.clock.agent_busy(prep.raw, busy)
        for r, answer in zip(prep.ops, answers):
            if answer[0] == NEED:
                self.commit.records.landed(r.item.rel)
                self.need.append(r.item)
                continue
            if isinstance(r.op[OP_PAYLOAD], list) and answer[0] == OK:
                self.commit.result.copied += 1
            self.commit.sent(r.item, r.hash, r.entry, answer)


def pack_chunk(comp: Compressor, block: bytes) -> tuple[str, bytes, int]:
    fmt, level = comp.choose(block)
    return (*comp.compress(fmt, level, block), len(block))


class LargeSend:
    """One large file of a push, on one lane of a Sender: staged on the remote in CHUNK
    appends (each compressed when that pays), hashed as read, then put in place by a push op
    carrying the stage token (the agent checks the hash).  Chunks are read and compressed
    CHUNKS_AHEAD ahead."""

    def __init__(self, sender: Sender, lane: Lane, item: Send) -> None:
        self.s = sender
        self.lane = lane
        self.item = item

    async def run(self) -> None:
        item, lane = self.item, self.lane
        try:
            fd = os.open(self.s.local_root / item.rel, os.O_RDONLY | O_NOFOLLOW)
        except OSError as e:
            self.s.commit.unreadable(item, e)
            return
        f = os.fdopen(fd, "rb")
        chan = lane.chan
        ahead: list[asyncio.Future[tuple[str, bytes, int]]] = []
        token = None
        h = new_hasher()
        try:
            st = os.fstat(f.fileno())
            token = await chan.call("stage", self.s.root, item.rel)
            sent = await self.send_chunks(token, f, h, ahead)
        except ReadFailed as e:   # reading here failed: the stage goes
            self.s.commit.unreadable(item, e.err)
            if chan.alive and token is not None:
                consume([chan.send("unstage", token)])
            return
        except AgentCallError as e:   # the agent refused the path
            self.s.commit.result.error(item.rel, e.message)
            return
        finally:
            f.close()
            consume(ahead)
        entry = LocalEntry(FILE, sent, st.st_mtime_ns, stat.S_IMODE(st.st_mode))
        hd = finish(h)
        self.s.commit.in_flight([(item, hd, entry)])
        fut = chan.send("push", self.s.root, [staged_op(item.rel, item.expect, item.force, hd, entry.mode, token)])

        def placed(answers: list[Any]) -> None:
            self.s.progress.in_flight -= sent
            self.s.commit.sent(item, hd, entry, answers[0], large=True)
        self.s.on_wire(lane, fut, 200, placed)
        await chan.drain()

    async def send_chunks(self, token: int, f: Any, h: Any, ahead: list[asyncio.Future[tuple[str, bytes, int]]]) -> int:
        loop = asyncio.get_running_loop()
        lane = self.lane
        chan = lane.chan
        sent = 0
        eof = False

        def read_chunk() -> bytes:
            try:
                block = f.read(CHUNK)
            except OSError as e:
                raise ReadFailed(e) from None
            h.update(block)
            return block
        while True:
            while not eof and len(ahead) < CHUNKS_AHEAD:
                block = await asyncio.to_thread(read_chunk)
                if not block:
                    eof = True
                    break
                sent += len(block)
                ahead.append(loop.run_in_executor(self.s.comp.pool, pack_chunk, self.s.comp, block))
            if not ahead:
                return sent
            fmt, payload, n = await ahead.pop(0)
            await lane.room(len(payload))
            self.s.check()
            fut = chan.send("append", token, payload, fmt) if fmt else chan.send("append", token, payload)
            self.s.on_wire(lane, fut, len(payload), lambda _answer: None)
            self.s.progress.in_flight += n
            await chan.drain()
