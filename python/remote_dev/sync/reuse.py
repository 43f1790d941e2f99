"""Content the remote already holds: before a push sends files, it offers their hashes as
copy ops and the agent copies what its content index knows (agent/remote/reuse.py: a
reflink or a real copy, never a hard link, from a file whose stat is still what the index
says); only what it answers NEED for is sent.  rsync's ``--copy-dest``, found by content.

A push offers only when it would send at least OFFER_BYTES in files of copy_min bytes or
more (OFFER_MIN on a slow link, more on a fast one), and only to a remote that holds an
index (its hello says so, this session wrote there, or the question each push asks while
neither is true says so): the push of a saved file or of a few edits costs no extra round
trip, nor does a first tree's beyond what is left of that question's round trip when
its scan ends (the answer comes during the scan).  The files are hashed in worker
threads, OFFER_OPS at a time, each request going out as soon as its files are hashed.  A
sample of PROBE files spread over the push goes first, the first HASHED_AHEAD requests'
files hashed meanwhile: when the remote copies too few of the sample (an index of other
content), that hashing stops and the rest goes without offers -- one round trip and the
sample's hashing are all a push into a new root costs when nothing matches.
"""

from __future__ import annotations

import asyncio
import os
import stat
import threading
import time
import zlib
from dataclasses import dataclass
from pathlib import Path

import asyncssh

from ..agent.protocol import FILE, NEED, OK, ZLIB, copy_op, pack_ops, unpack_answers
from ..engine import TargetSession, log
from ..errors import RemoteDevError
from ..rpc import AgentChannel, consume
from .apply import PushCommit
from .content import O_NOFOLLOW, finish, new_hasher
from .reconcile import Send, content_unchanged
from .scan import LocalEntry
from .wire import LinkMeter

OFFER_MIN = 1024        # smaller files are sent: their copy op costs about what they do compressed
COPY_COST = 100e-6      # seconds a copy costs the remote beyond its bytes (bench: 8,449 in 0.65-0.9 s)
FAST_RAW = 500e6        # raw bytes/s a push moves on a loopback-class link (asyncssh alone: ~370 MB/s)
TEXT_RATIO = 4.0        # what a link's wire bytes carry of source-like content, compressed
OFFER_BYTES = 1 << 20   # a push offers when the files it would send hold at least this much
OFFER_OPS = 1024        # copy ops per request
HASHED_AHEAD = 2        # requests' files hashed ahead of the wire
PROBE = 64              # files offered first, spread over the push
PROBE_HITS = 0.25       # the rest is offered when the remote copied at least this share of them


@dataclass
class RemoteIndex:
    """Per session: the remote holds a content index (the hello said so, a push of this
    session wrote there, or ask_index's answer said so); asked: that question in flight."""
    known: bool = False
    asked: asyncio.Future[bool] | None = None


def note_written(sess: TargetSession) -> None:
    sess.state(RemoteIndex).known = True


def index_known(sess: TargetSession) -> bool:
    return sess.state(RemoteIndex).known or bool(sess.hello.get("reuse"))


def ask_index(sess: TargetSession, agent: AgentChannel) -> None:
    """A push of a session that knows of no index on the remote asks again as it starts
    (another Neovim, or another project of this one, may have pushed there since this
    connection's hello); the answer comes during the local scan and is awaited only by a
    push that would offer (take_answer).  An answer no push takes is dropped quietly."""
    state = sess.state(RemoteIndex)
    consume([state.asked])
    state.asked = None
    if not index_known(sess):
        state.asked = agent.send("has_index")
        state.asked.add_done_callback(lambda f: f.cancelled() or f.exception())


async def take_answer(sess: TargetSession, sends: list[Send]) -> None:
    """ask_index's answer, when this push would offer to a remote that holds an index."""
    state = sess.state(RemoteIndex)
    asked, state.asked = state.asked, None
    if asked is None:
        return
    if index_known(sess) or not offerable(sess, sends):
        consume([asked])
        return
    try:
        state.known = bool(await asked)
    except (RemoteDevError, asyncssh.Error, OSError):
        pass   # the push goes on without offers; the transfer meets a lost connection itself


def copy_min(sess: TargetSession) -> float:
    """The smallest file whose copy on the remote (an offer's, or dedup's within a push)
    beats sending it: a copy costs the remote about COPY_COST beyond its bytes (create,
    copy, read back, rename), sending costs the file's bytes over the link (its rate as
    measured or guessed, its content taken as compressing like text; a loopback-class
    link as FAST_RAW).  So on a WAN link nearly every file is offered, on a campus link
    or loopback only the larger ones (bench: a second checkout of the 8,449-file tree
    offered whole took 0.93 s on loopback and 1.7 s at 1 Gbit/s against ~0.7 s and ~1.0 s
    sent).  Offers and dedup have floors of their own (OFFER_MIN, transfer.DUP_MIN).
    REMOTE_DEV_REUSE=always copies down to those everywhere (measurements, tests): 0;
    =never nothing: infinity."""
    mode = os.environ.get("REMOTE_DEV_REUSE", "auto")
    if mode == "always":
        return 0.0
    if mode == "never":
        return float("inf")
    link = sess.state(LinkMeter).link()
    return COPY_COST * (FAST_RAW if link is None else link * TEXT_RATIO)


def offerable(sess: TargetSession, sends: list[Send]) -> list[Send]:
    """The files of a push worth offering to a remote that holds an index (none when too
    little would be saved): those of at least copy_min bytes."""
    least = max(OFFER_MIN, copy_min(sess))
    items = [i for i in sends if i.entry.kind == FILE and i.entry.size >= least]
    return items if sum(i.entry.size for i in items) >= OFFER_BYTES else []


def worth_offering(sess: TargetSession, sends: list[Send]) -> list[Send]:
    """The files of a push to offer: none when the remote holds no index."""
    return offerable(sess, sends) if index_known(sess) else []


Hashed = tuple[Send, str, LocalEntry]


class Stopped(Exception):
    """The hashing of a chunk was stopped: its offers will not be made."""


def hash_files(root: Path, items: list[Send], stop: threading.Event | None = None) -> tuple[list[Hashed], list[Send]]:
    """(hashed files, files to send as they are: unreadable or no longer regular); Stopped
    when stop is set meanwhile."""
    out: list[Hashed] = []
    rest: list[Send] = []
    base = os.path.join(root, "")
    for item in items:
        if stop is not None and stop.is_set():
            raise Stopped
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
    """Offer what sends hold to the remote's index; what is left to send.  A sample goes
    first: when the remote holds little of it, the rest is sent without offers."""
    await take_answer(sess, sends)
    items = worth_offering(sess, sends)
    if sends:
        note_written(sess)   # the next push of this connection may offer
    if not items:
        return sends
    t0 = time.perf_counter()
    step = max(1, len(items) // PROBE)
    probe = items[::step][:PROBE]
    probed = {id(i) for i in probe}
    rest = [i for i in items if id(i) not in probed]
    offered = {id(i) for i in items}
    left = [i for i in sends if id(i) not in offered]
    offers = Offers(sess, agent, local_root, commit)
    chunks = [rest[k:k + OFFER_OPS] for k in range(0, len(rest), OFFER_OPS)]
    ahead = offers.hash_ahead(chunks)   # hashed while the probe is out (a round trip)
    try:
        left += await offers.run([probe])
        if offers.copied >= PROBE_HITS * len(probe):
            left += await offers.run(chunks, ahead)
        else:
            left += rest
    finally:
        offers.stop.set()   # a probe that missed: the threads stop hashing what will not be offered
        consume(ahead)
    commit.result.copied += offers.copied
    log.info("push %s: %d of %d files offered copied on the remote (%d not offered) in %.0f ms", sess.target.name,
             offers.copied, offers.offered, len(items) - offers.offered, (time.perf_counter() - t0) * 1000)
    return left


class Offers:
    """Copy ops of a push, in requests of hashed files: hashing runs ahead of the wire."""

    def __init__(self, sess: TargetSession, agent: AgentChannel, local_root: Path, commit: PushCommit) -> None:
        self.sess = sess
        self.agent = agent
        self.local_root = local_root
        self.commit = commit
        self.zipped = ZLIB in (sess.hello.get("codecs") or ())
        self.copied = self.offered = 0
        self.stop = threading.Event()   # set: the hashing threads stop (Stopped)

    def hash_ahead(self, chunks: list[list[Send]]) -> list[asyncio.Future[tuple[list[Hashed], list[Send]]]]:
        """The first HASHED_AHEAD chunks hashed (in worker threads), for run."""
        loop = asyncio.get_running_loop()
        return [loop.run_in_executor(None, hash_files, self.local_root, c, self.stop) for c in chunks[:HASHED_AHEAD]]

    async def run(self, chunks: list[list[Send]],
                  ahead: list[asyncio.Future[tuple[list[Hashed], list[Send]]]] | None = None) -> list[Send]:
        """Offer chunks (one request each; ahead: hash_ahead's of them); what the remote
        did not copy."""
        loop = asyncio.get_running_loop()
        hashing = self.hash_ahead(chunks) if ahead is None else ahead
        answers: list[tuple[list[Hashed], asyncio.Future[bytes]]] = []
        left: list[Send] = []
        try:
            for k in range(len(chunks)):
                hashed, rest = await hashing[k]
                if k + HASHED_AHEAD < len(chunks):
                    hashing.append(loop.run_in_executor(None, hash_files, self.local_root, chunks[k + HASHED_AHEAD],
                                                        self.stop))
                left += rest
                hashed = self.not_same(hashed)
                if hashed:
                    answers.append((hashed, self.send(hashed)))
                    await self.agent.drain()
            for hashed, fut in answers:
                for (item, h, entry), answer in zip(hashed, unpack_answers(await fut)[0]):
                    if answer[0] == NEED:
                        self.commit.records.landed(item.rel)
                        left.append(item)
                        continue
                    self.copied += answer[0] == OK
                    self.commit.sent(item, h, entry, answer)
        except BaseException:
            self.stop.set()
            raise
        finally:
            consume(hashing)
            consume(f for _, f in answers)
        return left

    def not_same(self, hashed: list[Hashed]) -> list[Hashed]:
        """Files whose content is what the last sync left are only re-recorded (touched)."""
        out = []
        for item, h, entry in hashed:
            if content_unchanged(self.commit.records.get(item.rel), FILE, h, entry.mode, item.must, item.force):
                self.commit.same(item, h, entry)
            else:
                out.append((item, h, entry))
        return out

    def send(self, hashed: list[Hashed]) -> asyncio.Future[bytes]:
        blob = pack_ops([copy_op(i.rel, i.expect, i.force, h, e.mode, e.size) for i, h, e in hashed])
        self.commit.in_flight(hashed)
        fmt, blob = (ZLIB, zlib.compress(blob, 1)) if self.zipped else ("", blob)
        self.commit.result.wire += len(blob)
        self.offered += len(hashed)
        return self.agent.send("push_packed", self.sess.target.remote_root, fmt, blob)
