"""Moving a pull's content: read requests pipelined up to PULL_WINDOW raw bytes, each block
compressed by the agent for the link as measured (``read_block``: raw on fast links and
for data that does not compress), taken in order, decompressed, hashed and written to a
temporary file beside the file's place in a worker thread; the file is renamed into place
when whole (apply.PullFile).

Each request names the formats this side decodes (wire.read_formats: zlib, bz2 and, with
zstandard, zstd); the agent writes zstd with the remote's `zstd` program when it has one
and the choice (protocol.ZSTD_PROGRAM_CODECS) moves more bytes per second that way, else
its stdlib's zlib or bz2 (also when its `zstd` fails).  A caller that names no formats gets
zlib or bz2 only.  The formats the answers came in are counted (Fetcher.used; the pull logs
them).  The link's rate is measured from the answers as they arrive (the agent answers as
its threads finish: a raw block overtakes compressed ones asked for before it), not as they
are written in order; each answer says how long the agent took, so blocks that come at the
pace of its compression do not pass for the link's (wire.AckClock).  A file's blocks are
asked for as the window has room, so never more than the window is held in memory, whatever
the file's size.

A file that only grew since the last pull (a training log) transfers only its new bytes:
when the local copy is still what the last pull left and the remote one is longer, the
local copy is copied into the temporary file and the rest is read from the recorded size
on; the agent first checks that the remote file's first bytes still hash to what was
pulled (else the whole file is read after all).
"""

from __future__ import annotations

import asyncio
import functools
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from ..agent.protocol import LINK, link_hash
from ..errors import AgentCallError, RemoteDevError
from ..rpc import consume
from .apply import PullCommit, PullFile
from .reconcile import PullItem
from .wire import AckClock, LinkMeter, decompress, read_formats

READ_SIZE = 4 << 20            # bytes per read request
FIRST_READ = 1 << 20           # the first ones smaller, doubling up to READ_SIZE: the wire starts sooner
PULL_WINDOW = 32 << 20         # raw bytes of read requests in flight


@dataclass
class Fetch:
    """One file on its way: its writer and its blocks still to come."""
    item: PullItem
    start: int                  # 0, or the recorded size when only the tail comes
    file: PullFile | None = None
    offset: int = 0             # the next byte to ask for
    left: int = 0               # blocks asked for, not yet taken
    failed: bool = False


@dataclass
class Block:
    fetch: Fetch
    size: int
    future: asyncio.Future[Any] = field(repr=False, default=None)  # type: ignore[assignment]


class Fetcher:
    """fetch_all(todo): every item fetched and committed (or its error recorded)."""

    def __init__(self, agent: Any, root: str, commit: PullCommit, meter: LinkMeter) -> None:
        self.agent = agent
        self.root = root
        self.commit = commit
        self.meter = meter
        self.clock = AckClock(meter)
        self.window: deque[Block] = deque()
        self.in_window = 0
        self.sending: deque[Fetch] = deque()   # files opened with blocks still to ask for
        self.accept = read_formats()
        self.used: dict[str, int] = {}         # format the agent answered in -> blocks
        self.read_size = FIRST_READ

    async def fetch_all(self, todo: list[PullItem]) -> None:
        try:
            for item in todo:
                if item.kind == LINK:
                    await self.put_link(item)
                    continue
                await self.request(Fetch(item, self.commit.grown(item)))
                while self.in_window >= PULL_WINDOW:
                    await self.take()
            while self.window or self.sending:
                if self.window:
                    await self.take()
                else:
                    await self.fill()
        finally:
            for block in self.window:
                consume([block.future])
            for fetch in [b.fetch for b in self.window] + list(self.sending):
                if fetch.file is not None:
                    fetch.file.discard()
                    fetch.file = None

    async def put_link(self, item: PullItem) -> None:
        try:
            st = await asyncio.to_thread(self.commit.put_link, item)
        except (RemoteDevError, OSError) as e:   # a folder on the way turned into a symlink meanwhile
            self.commit.error(item, str(e))
            return
        self.commit.done(item, st, link_hash(item.target or ""))

    async def request(self, fetch: Fetch) -> None:
        """Open the file's writer; its read requests go out as the window has room."""
        item = fetch.item
        try:
            fetch.file = await asyncio.to_thread(PullFile, self.commit.root, item, fetch.start)
        except (RemoteDevError, OSError) as e:
            self.commit.error(item, str(e))
            return
        if item.size <= fetch.start:
            await self.finish(fetch)
            return
        fetch.offset = fetch.start
        self.sending.append(fetch)
        await self.fill()

    async def fill(self) -> None:
        """Read requests (one per READ_SIZE) while the window has room: a file larger than
        the window is asked for as its blocks are taken."""
        link = self.meter.link()
        sent = False
        while self.sending and self.in_window < PULL_WINDOW:
            fetch = self.sending[0]
            item = fetch.item
            if fetch.failed or fetch.offset >= item.size:
                self.sending.popleft()
                continue
            offset = fetch.offset
            n = min(self.read_size, item.size - offset)
            self.read_size = min(2 * self.read_size, READ_SIZE)
            prefix = [fetch.start, self.commit.records.data[item.rel].hash] if offset == fetch.start and fetch.start \
                else None
            block = Block(fetch, n, self.agent.send("read_block", self.root, item.rel, offset, n, link, prefix,
                                                    self.accept))
            self.clock.sent(n)
            block.future.add_done_callback(functools.partial(self.arrived, n))
            self.window.append(block)
            self.in_window += n
            fetch.left += 1
            fetch.offset += n
            sent = True
        if sent:
            await self.agent.drain()

    def arrived(self, n: int, fut: asyncio.Future[Any]) -> None:
        """A block's answer came (n bytes asked for): the clock counts it now, not when it
        is taken -- the agent answers as its threads finish (a raw block before the
        compressed ones asked for earlier), and the link carried it now.  The seconds the
        agent says it took tell a link that held the answers back from compression that
        did (AckClock)."""
        if fut.cancelled():
            return
        answer = None if fut.exception() is not None else fut.result()
        if not (isinstance(answer, list) and len(answer) >= 2):
            self.clock.answered(n, 0)
            return
        if len(answer) > 2 and isinstance(answer[2], (int, float)):
            self.clock.agent_busy(n, answer[2], pace=False)
        self.clock.answered(n, len(answer[1]))

    async def take(self) -> None:
        """The oldest block: written to its file (its file finished when whole)."""
        block = self.window.popleft()
        self.in_window -= block.size
        fetch = block.fetch
        fetch.left -= 1
        try:
            fmt, data, *_ = await block.future
        except AgentCallError as e:
            await self.fail(fetch, e)
            return
        self.commit.result.wire += len(data)
        self.used[fmt or "raw"] = self.used.get(fmt or "raw", 0) + 1
        if fetch.failed or fetch.file is None:
            return
        try:
            await asyncio.to_thread(write_block, fetch.file, fmt, data, block.size)
        except (OSError, ValueError) as e:
            await self.fail(fetch, e)
            return
        if fetch.left == 0 and fetch.offset >= fetch.item.size:
            await self.finish(fetch)
        else:
            await self.fill()

    async def fail(self, fetch: Fetch, err: Exception) -> None:
        """A block could not be read or written: the file's temporary goes; a file whose
        first bytes changed on the remote is read whole instead."""
        if fetch.failed:
            return
        fetch.failed = True
        if fetch.file is not None:
            fetch.file.discard()
            fetch.file = None
        if isinstance(err, AgentCallError) and err.agent_kind == "changed" and fetch.start:
            await self.request(Fetch(fetch.item, 0))
        else:
            self.commit.error(fetch.item, getattr(err, "message", None) or str(err))

    async def finish(self, fetch: Fetch) -> None:
        pf, fetch.file = fetch.file, None
        assert pf is not None
        try:
            st, content_hash = await asyncio.to_thread(pf.finish)
        except (RemoteDevError, OSError) as e:
            self.commit.error(fetch.item, str(e))
            return
        self.commit.done(fetch.item, st, content_hash, pf.fetched)


def write_block(pf: PullFile, fmt: str, data: bytes, size: int) -> None:
    pf.write(decompress(fmt, data, size) if fmt else data)


async def fetch_all(agent: Any, root: str, todo: list[PullItem], commit: PullCommit, meter: LinkMeter
                    ) -> dict[str, int]:
    """Fetch todo; the formats the blocks came in, and how many of each."""
    fetcher = Fetcher(agent, root, commit, meter)
    await fetcher.fetch_all(todo)
    return fetcher.used
