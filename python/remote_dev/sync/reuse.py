"""Content the remote already holds: before a push sends files, it offers their hashes as
copy ops and the agent copies what its content index knows (agent/remote/reuse.py: a
reflink or a real copy, never a hard link, from a file whose stat is still what the index
says); only what it answers NEED for is sent.  rsync's ``--copy-dest``, found by content.

A push offers only when it would send at least OFFER_BYTES in files of OFFER_MIN bytes or
more, and only to a remote that holds an index (its hello says so, or this session wrote
there): the push of a first tree, of a saved file or of a few edits costs no extra round
trip.  The files are hashed in worker threads, OFFER_OPS at a time, each request going
out as soon as its files are hashed.
"""

from __future__ import annotations

import asyncio
import os
import stat
import zlib
from dataclasses import dataclass
from pathlib import Path

from ..agent.protocol import FILE, NEED, OK, ZLIB, copy_op, pack_ops, unpack_answers
from ..engine import TargetSession, log
from ..rpc import AgentChannel
from .apply import PushCommit
from .content import O_NOFOLLOW, finish, new_hasher
from .reconcile import Send
from .scan import LocalEntry

OFFER_MIN = 1024        # smaller files are sent: their copy op costs about what they do compressed
OFFER_BYTES = 1 << 20   # a push offers when the files it would send hold at least this much
OFFER_OPS = 1024        # copy ops per request
HASHED_AHEAD = 2        # requests' files hashed ahead of the wire


@dataclass
class RemoteIndex:
    """Per connection: the remote holds a content index (hello, or a push wrote there)."""
    known: bool = False


def note_written(sess: TargetSession) -> None:
    sess.state(RemoteIndex).known = True


def worth_offering(sess: TargetSession, sends: list[Send]) -> list[Send]:
    """The files of a push to offer (none when the remote holds no index or too little
    would be saved)."""
    if not (sess.state(RemoteIndex).known or sess.hello.get("reuse")):
        return []
    items = [i for i in sends if i.entry.kind == FILE and i.entry.size >= OFFER_MIN]
    return items if sum(i.entry.size for i in items) >= OFFER_BYTES else []


Hashed = tuple[Send, str, LocalEntry]


def hash_files(root: Path, items: list[Send]) -> tuple[list[Hashed], list[Send]]:
    """(hashed files, files to send as they are: unreadable or no longer regular)."""
    out: list[Hashed] = []
    rest: list[Send] = []
    base = os.path.join(root, "")
    for item in items:
        try:
            fd = os.open(base + item.rel, os.O_RDONLY | O_NOFOLLOW)
        except OSError:
            rest.append(item)
            continue
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                rest.append(item)
                continue
            h = new_hasher()
            size = 0
            while True:
                block = os.read(fd, 1 << 20)
                if not block:
                    break
                h.update(block)
                size += len(block)
            out.append((item, finish(h), LocalEntry(FILE, size, st.st_mtime_ns, stat.S_IMODE(st.st_mode))))
        except OSError:
            rest.append(item)
        finally:
            os.close(fd)
    return out, rest


async def offer(sess: TargetSession, agent: AgentChannel, local_root: Path, commit: PushCommit,
                sends: list[Send]) -> list[Send]:
    """Offer what sends hold to the remote's index; what is left to send."""
    items = worth_offering(sess, sends)
    if not items:
        return sends
    offered = {id(i) for i in items}
    left = [i for i in sends if id(i) not in offered]
    zipped = ZLIB in (sess.hello.get("codecs") or ())
    loop = asyncio.get_running_loop()
    chunks = [items[k:k + OFFER_OPS] for k in range(0, len(items), OFFER_OPS)]
    hashing = [loop.run_in_executor(None, hash_files, local_root, c) for c in chunks[:HASHED_AHEAD]]
    answers: list[tuple[list[Hashed], asyncio.Future[bytes]]] = []
    copied = 0
    try:
        for k in range(len(chunks)):
            hashed, rest = await hashing[k]
            if k + HASHED_AHEAD < len(chunks):
                hashing.append(loop.run_in_executor(None, hash_files, local_root, chunks[k + HASHED_AHEAD]))
            left += rest
            if not hashed:
                continue
            blob = pack_ops([copy_op(i.rel, i.expect, i.force, h, e.mode, e.size) for i, h, e in hashed])
            commit.in_flight(hashed)
            fmt, blob = (ZLIB, zlib.compress(blob, 1)) if zipped else ("", blob)
            answers.append((hashed, agent.send("push_packed", sess.target.remote_root, fmt, blob)))
            commit.result.wire += len(blob)
            await agent.drain()
        for hashed, fut in answers:
            for (item, h, entry), answer in zip(hashed, unpack_answers(await fut)):
                if answer[0] == NEED:
                    commit.records.landed(item.rel)
                    left.append(item)
                    continue
                copied += answer[0] == OK
                commit.sent(item, h, entry, answer)
    finally:
        for f in hashing:
            f.cancel()
        for _, f in answers:
            if f.done() and not f.cancelled():
                f.exception()
            else:
                f.cancel()
    commit.result.copied += copied
    log.info("push %s: %d of %d files offered copied on the remote", sess.target.name, copied, len(items))
    return left
