"""Push and pull: incremental, atomic, and never overwriting work done on the other side.

A per-target record holds, for every path synced, what the last sync left on both sides:
the local stat and mode, the content hash, the remote stat, and which way it went.  A push
sends a file only when its local stat changed and its content differs from the record; the
agent replaces the remote file only when it still is what the last sync left (same stat, or
same content), otherwise it is a conflict that ``!`` (force) overrides.  Pull is the mirror
image; a modified, unsaved Neovim buffer is never overwritten, not even with ``!``.

Deletes: a path deleted locally is deleted on the remote only when this tool pushed it
(records of pulled files never cause a remote delete); remote-only files are never touched.

The first whole-tree push on a connection (and every ``!`` push) also checks the remote stat
of every recorded path: what vanished there is sent again, and with ``!`` what changed there
is overwritten.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import stat
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncssh
import msgpack

from .engine import Engine, Project, TargetSession, log
from .errors import ConnectError, RemoteDevError
from .rpc import AgentChannel
from .scan import Excluder, LocalEntry, Scanner, lstat_entry
from .status import publish_status

BATCH_BYTES = 4 << 20          # payload per push request
BATCH_OPS = 2048
MAX_INFLIGHT = 3               # push requests per channel on the wire before waiting for answers
READ_AHEAD = 3                 # batches being read from disk meanwhile
EXTRA_CHANNEL_BATCHES = 8      # pushes of at least this many batches use more channels:
PUSH_CHANNELS = 4              # this many in all
CHUNK = 1 << 20                # large files travel in chunks of this size
LARGE = 8 << 20                # files above this are staged in chunks
PULL_WINDOW = 16 << 20         # bytes of read requests in flight during a pull
PROGRESS_AFTER = 1.0           # seconds before progress reports start
PROGRESS_EVERY = 0.25
HASH_BLOCK = 1 << 20
O_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)

# record fields: what the last sync left
KIND, LSIZE, LMTIME, HASH, RSIZE, RMTIME, MODE, ORIGIN = range(8)
RECORDS_VERSION = 2


def digest(data: bytes | memoryview) -> str:
    """Content hash shared with the agent: sha256 truncated to 128 bits."""
    return hashlib.sha256(data).hexdigest()[:32]


def link_hash(target: str) -> str:
    return digest(b"link:" + os.fsencode(target))


def file_hash(path: str | os.PathLike[str]) -> str:
    h = hashlib.sha256()
    fd = os.open(path, os.O_RDONLY | O_NOFOLLOW)
    with os.fdopen(fd, "rb") as f:
        while block := f.read(HASH_BLOCK):
            h.update(block)
    return h.hexdigest()[:32]


def read_fd(fd: int, size: int) -> bytes:
    """All of a file: one read when its size is as stat said (it can change meanwhile)."""
    chunks = [os.read(fd, size + 1)]
    while chunks[-1]:
        chunks.append(os.read(fd, 1 << 20))
    return chunks[0] if len(chunks) == 2 else b"".join(chunks)


def entry_hash(root: Path, rel: str, entry: LocalEntry) -> str:
    return link_hash(entry.target or "") if entry.kind == "l" else file_hash(root / rel)


# --------------------------------------------------------------------------- records


class SyncRecords:
    """What the last sync left, per path: [kind, local size, local mtime_ns, hash, remote
    size, remote mtime_ns, mode, origin ("push" | "pull")].

    Stored as a msgpack snapshot plus an append-only journal of changes, so that pushing
    one file (push on save) writes a few bytes, not the whole table.  The journal is folded
    into a new snapshot (written to a temporary file and renamed) once it grows; a torn
    last journal entry (a crash while appending) is ignored."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.journal = path.with_name(path.name + ".journal")
        self.data: dict[str, list[Any]] = {}
        self.dirty: dict[str, list[Any] | None] = {}
        self.journal_entries = 0
        self.load()

    def load(self) -> None:
        if self.path.exists():
            try:
                raw = msgpack.unpackb(self.path.read_bytes(), raw=False, strict_map_key=False)
                if isinstance(raw, dict) and raw.get("v") == RECORDS_VERSION:
                    self.data = raw["records"]
            except (ValueError, KeyError, msgpack.UnpackException) as e:
                log.warning("sync records %s unreadable (%s): starting afresh", self.path, e)
                self.data = {}
        if self.journal.exists():
            try:
                unpacker = msgpack.Unpacker(raw=False, strict_map_key=False)
                unpacker.feed(self.journal.read_bytes())
                for change in unpacker:
                    for rel, rec in change.items():
                        self.journal_entries += 1
                        if rec is None:
                            self.data.pop(rel, None)
                        else:
                            self.data[rel] = rec
            except (ValueError, msgpack.UnpackException) as e:
                log.warning("sync journal %s: stopped at a damaged entry (%s)", self.journal, e)

    def get(self, rel: str) -> list[Any] | None:
        return self.data.get(rel)

    def set(self, rel: str, rec: list[Any]) -> None:
        self.data[rel] = rec
        self.dirty[rel] = rec

    def drop(self, rel: str) -> None:
        if self.data.pop(rel, None) is not None:
            self.dirty[rel] = None

    def expect(self, rel: str) -> list[Any] | None:
        rec = self.data.get(rel)
        return None if rec is None else [rec[KIND], rec[RSIZE], rec[RMTIME], rec[HASH]]

    def save(self) -> None:
        if not self.dirty:
            return
        dirty, self.dirty = self.dirty, {}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.journal_entries + len(dirty) > max(4096, len(self.data) // 2):
            tmp = self.path.with_name(f"{self.path.name}.tmp{os.getpid()}")
            tmp.write_bytes(msgpack.packb({"v": RECORDS_VERSION, "records": self.data}, use_bin_type=True))
            tmp.replace(self.path)
            self.journal.unlink(missing_ok=True)
            self.journal_entries = 0
            return
        with open(self.journal, "ab") as f:
            f.write(msgpack.packb(dirty, use_bin_type=True))
        self.journal_entries += len(dirty)


@dataclass
class SyncState:
    """Per project: one sync at a time, the scanner, which connections were verified, and
    push on save (saves queued while a push runs; the failure reported once)."""
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    scanner: Scanner | None = None
    scanner_key: tuple[Any, ...] = ()
    verified: dict[str, int] = field(default_factory=dict)
    records: dict[str, SyncRecords] = field(default_factory=dict)
    save_pending: set[str] = field(default_factory=set)
    save_running: bool = False
    save_error: str | None = None


def sync_state(proj: Project) -> SyncState:
    return proj.state(SyncState)


def scanner_for(proj: Project) -> Scanner:
    st = sync_state(proj)
    cfg = proj.config.sync
    key = (str(proj.root), cfg.exclude, cfg.pull)
    if st.scanner is None or st.scanner_key != key:
        if st.scanner is not None:
            st.scanner.close()
        st.scanner = Scanner(proj.root, cfg.exclude, cfg.pull)
        st.scanner_key = key
    return st.scanner


def records_for(proj: Project, sess: TargetSession) -> SyncRecords:
    """Records per target *and* per place: a target whose host or remote_root changes
    starts afresh instead of trusting what was synced elsewhere."""
    cache = sync_state(proj).records
    t = sess.target
    ident = f"{t.host}\0{t.port}\0{t.user}\0{t.remote_root}\0{t.ssh_config}"
    key = f"{t.name}-{hashlib.sha1(ident.encode()).hexdigest()[:10]}"
    if key not in cache:
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in key)
        cache[key] = SyncRecords(proj.state_dir() / f"sync-{safe}.msgpack")
    return cache[key]


def rel_paths(proj: Project, paths: list[str] | None, cwd: str | None) -> list[str] | None:
    """Paths given by the user (absolute, or relative to cwd) as paths relative to the root.
    A path reached through a symlinked folder counts where it really is."""
    if not paths:
        return None
    out = []
    for p in paths:
        full = Path(os.path.abspath(os.path.join(cwd or os.getcwd(), os.path.expanduser(p))))
        rel = None
        for candidate in (full, Path(os.path.realpath(full.parent)) / full.name):
            try:
                rel = candidate.relative_to(proj.root).as_posix()
                break
            except ValueError:
                continue
        if rel is None:
            raise RemoteDevError(f"{p}: outside the project root {proj.root}")
        out.append("" if rel == "." else rel)
    return out


def in_scope(rel: str, paths: list[str] | None) -> bool:
    if paths is None:
        return True
    return any(p in ("", ".") or rel == p or rel.startswith(p.rstrip("/") + "/") for p in paths)


# --------------------------------------------------------------------------- push


@dataclass
class PushItem:
    rel: str
    entry: LocalEntry
    expect: list[Any] | None
    must: bool = False          # send even when the content equals the record (remote lost it)
    force: bool = False


@dataclass
class PushResult:
    files: int = 0
    bytes: int = 0
    deleted: int = 0
    unchanged: int = 0
    conflicts: list[dict[str, str]] = field(default_factory=list)
    errors: list[dict[str, str]] = field(default_factory=list)
    skipped: list[dict[str, Any]] = field(default_factory=list)
    send: list[str] = field(default_factory=list)
    delete: list[str] = field(default_factory=list)


class Pusher:
    def __init__(self, engine: Engine, proj: Project, sess: TargetSession, force: bool) -> None:
        self.engine = engine
        self.proj = proj
        self.sess = sess
        self.force = force
        self.records = records_for(proj, sess)
        self.scanner = scanner_for(proj)
        self.result = PushResult()
        self.t0 = time.perf_counter()
        self.last_progress = 0.0
        self.total_files = 0
        self.total_bytes = 0
        self.sent_bytes = 0
        self.pulled = Excluder((), proj.config.sync.pull)
        self.looked_at: list[str] = []   # what the watcher said changed, when a tree push used it
        self.whole_scan = False

    # -- planning (in a worker thread: listing and stats)
    def plan(self, paths: list[str] | None, whole: bool = False, dry_run: bool = False
             ) -> tuple[list[PushItem], list[str], list[str]]:
        """(items to send, paths to delete remotely, recorded paths unchanged locally).
        A tree push looks only at what the watcher saw change, unless whole (or the
        watcher cannot tell)."""
        cfg = self.proj.config.sync
        data = self.records.data
        if paths is None and not whole and not dry_run and data:
            changed = self.scanner.changes()
            if changed is not None:
                self.looked_at = changed
                if not changed:
                    self.result.unchanged += len(data)
                    return [], [], []
                paths = changed
        self.whole_scan = paths is None and not dry_run
        if paths is not None and all(p in data and data[p][ORIGIN] == "push" for p in paths) \
                and self.scanner.unchanged_rules():
            entries = self.scanner.scan_known(paths)  # pushed before, same rules: listed still
        else:
            entries = self.scanner.scan(paths, hint=data.keys() if paths is None and data else None,
                                        track=not dry_run)
        sends: list[PushItem] = []
        unchanged: list[str] = []
        for rel, e in entries.items():
            rec = data.get(rel)
            if rec is not None and rec[LMTIME] == e.mtime_ns and rec[LSIZE] == e.size and rec[KIND] == e.kind \
                    and rec[MODE] == e.mode:
                unchanged.append(rel)
                continue
            if e.kind == "f" and e.size > cfg.max_file_size:
                self.result.skipped.append({"path": rel, "size": e.size})
                continue
            sends.append(PushItem(rel, e, self.records.expect(rel), force=self.force))
        if paths is None:
            candidates: Iterable[str] = data.keys() - entries.keys()
        else:
            cands: set[str] = set()
            folders = []
            for p in paths:
                if p in ("", "."):
                    cands.update(data.keys())
                    break
                if p in data:
                    cands.add(p)
                elif not os.path.isfile(self.proj.root / p):
                    folders.append(p.rstrip("/") + "/")
            if folders:
                prefixes = tuple(folders)
                cands.update(r for r in data if r.startswith(prefixes))
            candidates = cands - entries.keys()
        deletes = []
        root = str(self.proj.root)
        for rel in sorted(candidates):
            rec = data[rel]
            if rec[ORIGIN] != "push" or self.pulled.excluded(rel):
                continue  # pulled here: deleting the local copy never deletes the remote one
            if lstat_entry(os.path.join(root, rel)) is None:
                deletes.append(rel)
        self.result.unchanged += len(unchanged)
        return sends, deletes, unchanged

    async def verify(self, unchanged: list[str]) -> list[PushItem]:
        """Remote stat of paths unchanged locally: what vanished on the remote is sent again;
        with force, what changed there is overwritten."""
        if not unchanged:
            return []
        states = await self.sess.call("state", self.sess.target.remote_root, unchanged, False)
        out = []
        data = self.records.data
        for rel, st in zip(unchanged, states):
            rec = data[rel]
            if st is None:
                again = True
            else:
                again = self.force and (st[0] != rec[KIND] or st[1] != rec[RSIZE] or st[2] != rec[RMTIME])
            if again:
                entry = lstat_entry(self.proj.root / rel)
                if entry is not None:
                    out.append(PushItem(rel, entry, self.records.expect(rel), must=True, force=self.force))
                    self.result.unchanged -= 1
        return out

    def read_batch(self, items: list[PushItem]) -> tuple[list[tuple[list[Any], PushItem, str, LocalEntry]], list[str]]:
        """Push ops for small files and symlinks (read and hashed here, in a worker
        thread); a file whose content equals the record is only re-recorded."""
        ops = []
        same: list[str] = []  # content as recorded: only re-recorded (counted by the caller)
        root = self.proj.root
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
                    self.result.errors.append({"path": item.rel, "reason": f"cannot read: {e.strerror}"})
                    continue
                if not stat.S_ISREG(st.st_mode):
                    continue
                entry = LocalEntry("f", len(data), st.st_mtime_ns, stat.S_IMODE(st.st_mode))
                h = digest(data)
                op = ["w", item.rel, item.expect, item.force, h, entry.mode, data]
            rec = self.records.data.get(item.rel)
            if rec is not None and not item.must and not item.force and rec[HASH] == h and rec[KIND] == entry.kind \
                    and rec[MODE] == entry.mode:
                self.records.set(item.rel, [entry.kind, entry.size, entry.mtime_ns, h, rec[RSIZE], rec[RMTIME],
                                            entry.mode, rec[ORIGIN]])
                same.append(item.rel)
                continue
            ops.append((op, item, h, entry))
        return ops, same

    # -- sending
    def accept(self, item: PushItem, h: str, entry: LocalEntry, answer: list[Any]) -> None:
        status = answer[0]
        if status == "ok":
            self.records.set(item.rel, [entry.kind, entry.size, entry.mtime_ns, h, answer[1], answer[2],
                                        entry.mode, "push"])
            self.result.files += 1
            self.result.bytes += entry.size
        elif status == "conflict":
            self.result.conflicts.append({"path": item.rel, "reason": answer[1]})
        else:
            self.result.errors.append({"path": item.rel, "reason": answer[1] if len(answer) > 1 else status})

    def progress(self, force: bool = False) -> None:
        now = time.perf_counter()
        if now - self.t0 < PROGRESS_AFTER or (now - self.last_progress < PROGRESS_EVERY and not force):
            return
        self.last_progress = now
        self.engine.report("progress", {
            "action": "push", "target": self.sess.target.name, "files": self.result.files,
            "total_files": self.total_files, "bytes": self.result.bytes + self.sent_bytes,
            "total_bytes": self.total_bytes,
        })

    async def run(self, paths: list[str] | None, dry_run: bool) -> PushResult:
        state = sync_state(self.proj)
        agent_id = id(self.sess.agent) if self.sess.connected else None
        verify = self.force or dry_run or (paths is None and (agent_id is None
                                                             or state.verified.get(self.sess.target.name) != agent_id))
        try:
            sends, deletes, unchanged = await asyncio.to_thread(self.plan, paths, verify, dry_run)
            if verify and unchanged and self.records.data:
                sends += await self.verify(unchanged)
            if dry_run:
                return await self.preview(sends, deletes)
            if not sends and not deletes:
                if paths is None and self.sess.connected:
                    state.verified[self.sess.target.name] = id(self.sess.agent)
                return self.result
            agent = await self.sess.ensure()
            try:
                await self.send_all(agent, sends, deletes)
            except (asyncssh.Error, OSError) as e:
                raise ConnectError(f"{self.sess.target.host}: connection to the agent lost: {e}", kind="lost",
                                   retry=True) from None
            finally:
                await asyncio.to_thread(self.records.save)
        except BaseException:
            self.scanner.requeue(self.looked_at)  # the watcher's news must not get lost
            if self.whole_scan:
                self.scanner.invalidate()
            raise
        # what was not pushed is looked at again next time
        self.scanner.requeue([c["path"] for c in self.result.conflicts + self.result.errors + self.result.skipped])
        if paths is None:
            state.verified[self.sess.target.name] = id(agent)
        self.progress(force=True)
        return self.result

    async def send_all(self, agent: Any, sends: list[PushItem], deletes: list[str]) -> None:
        root = self.sess.target.remote_root
        small = [i for i in sends if not (i.entry.kind == "f" and i.entry.size > LARGE)]
        large = [i for i in sends if i.entry.kind == "f" and i.entry.size > LARGE]
        self.total_files = len(sends)
        self.total_bytes = sum(i.entry.size for i in sends)
        batches: list[list[PushItem]] = []
        cur: list[PushItem] = []
        size = 0
        for item in small:
            cur.append(item)
            size += item.entry.size + 200
            if size >= BATCH_BYTES or len(cur) >= BATCH_OPS:
                batches.append(cur)
                cur, size = [], 0
        if cur:
            batches.append(cur)
        inflight: list[tuple[asyncio.Future[Any], list[tuple[list[Any], PushItem, str, LocalEntry]]]] = []

        async def settle(entry: tuple[asyncio.Future[Any], list[tuple[list[Any], PushItem, str, LocalEntry]]]
                         ) -> None:
            fut, batch = entry
            answers = await fut
            inflight.remove(entry)
            for (_op, item, h, entry_), answer in zip(batch, answers):
                self.accept(item, h, entry_, answer)
            self.progress()

        channels = [agent]
        if len(batches) >= EXTRA_CHANNEL_BATCHES or len(large) > 1:
            # A big push: more agents, each on an SSH channel of its own, multiply the
            # flow-control window (sshd's 2 MB per channel bounds one channel to 2 MB per
            # round trip) and spread the remote's file writing over more processes.
            for _ in range(PUSH_CHANNELS - 1):
                try:
                    channels.append(await AgentChannel.start(self.sess.conn, self.sess.target.host,
                                                             self.sess.target.python))
                except (RemoteDevError, asyncssh.Error, OSError) as e:
                    log.info("push: no extra channel (%s)", e)
                    break
        loop = asyncio.get_running_loop()
        # Batches are read (and hashed) in worker threads ahead of the channels that send
        # them: reads from a cold disk overlap with the wire and with each other.
        reads: dict[int, asyncio.Future[Any]] = {}
        state = {"started": 0, "claimed": 0, "large": 0}

        def read_ahead(upto: int) -> None:
            while state["started"] < min(upto, len(batches)):
                n = state["started"]
                reads[n] = loop.run_in_executor(None, self.read_batch, batches[n])
                state["started"] += 1

        async def feed(chan: Any) -> None:
            mine: list[Any] = []
            while state["claimed"] < len(batches):
                n = state["claimed"]
                state["claimed"] += 1
                read_ahead(n + READ_AHEAD + len(channels))
                batch, same = await reads.pop(n)
                self.result.unchanged += len(same)
                if batch:
                    entry = (chan.send("push", root, [b[0] for b in batch]), batch)
                    inflight.append(entry)
                    mine.append(entry)
                    await chan.drain()
                while len(mine) > MAX_INFLIGHT:
                    await settle(mine.pop(0))
            for entry in mine:
                await settle(entry)
            while state["large"] < len(large):
                item = large[state["large"]]
                state["large"] += 1
                await self.push_large(chan, root, item)

        try:
            tasks = [loop.create_task(feed(chan)) for chan in channels]
            try:
                done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
                for t in done:
                    t.result()  # the first failure, if any
                await asyncio.gather(*tasks)
            finally:
                for t in tasks:
                    t.cancel()
            if deletes:
                ops = [["d", rel, self.records.expect(rel), self.force] for rel in deletes]
                for rel, answer in zip(deletes, await agent.call("push", root, ops)):
                    if answer[0] in ("ok", "gone"):
                        self.records.drop(rel)
                        self.result.deleted += answer[0] == "ok"
                    elif answer[0] == "conflict":
                        self.result.conflicts.append({"path": rel, "reason": answer[1] + " (deleted locally)"})
                    else:
                        self.result.errors.append({"path": rel, "reason": answer[1]})
        finally:
            for extra in channels[1:]:
                extra.close()
            for r in reads.values():
                r.cancel()
            for fut, _batch in inflight:  # after a lost connection: consume, never leak
                if fut.done() and not fut.cancelled():
                    fut.exception()
                else:
                    fut.cancel()

    async def push_large(self, agent: Any, root: str, item: PushItem) -> None:
        path = self.proj.root / item.rel
        try:
            fd = os.open(path, os.O_RDONLY | O_NOFOLLOW)
        except OSError as e:
            self.result.errors.append({"path": item.rel, "reason": f"cannot read: {e.strerror}"})
            return
        f = os.fdopen(fd, "rb")
        token = await agent.call("stage", root, item.rel)
        h = hashlib.sha256()
        appends: list[asyncio.Future[Any]] = []
        sent = 0

        def read_chunk() -> bytes:
            block = f.read(CHUNK)
            h.update(block)
            return block
        try:
            st = os.fstat(f.fileno())
            while True:
                block = await asyncio.to_thread(read_chunk)
                if not block:
                    break
                appends.append(agent.send("append", token, block))
                sent += len(block)
                self.sent_bytes += len(block)
                await agent.drain()
                self.progress()
        except OSError as e:
            self.result.errors.append({"path": item.rel, "reason": f"cannot read: {e.strerror}"})
            await agent.call("unstage", token)
            return
        finally:
            f.close()
            self.sent_bytes -= sent
        entry = LocalEntry("f", sent, st.st_mtime_ns, stat.S_IMODE(st.st_mode))
        hd = h.hexdigest()[:32]
        op = ["s", item.rel, item.expect, item.force, hd, entry.mode, token]
        answer = (await agent.call("push", root, [op]))[0]
        for fut in appends:  # their errors (disk full) come back in the answer as well
            if fut.done() and not fut.cancelled():
                fut.exception()
        rec = self.records.data.get(item.rel)
        if answer[0] == "ok" and rec is not None and rec[HASH] == hd and not item.must and not item.force \
                and rec[MODE] == entry.mode:
            self.result.unchanged += 1
            self.records.set(item.rel, [entry.kind, entry.size, entry.mtime_ns, hd, answer[1], answer[2],
                                        entry.mode, "push"])
            return
        self.accept(item, hd, entry, answer)

    async def preview(self, sends: list[PushItem], deletes: list[str]) -> PushResult:
        """What a push would do, writing nothing: conflicts come from the remote's state."""
        rels = [i.rel for i in sends] + deletes
        states = await self.sess.call("state", self.sess.target.remote_root, rels) if rels else []
        by_rel = dict(zip(rels, states))
        for item in sends:
            try:
                local_hash = await asyncio.to_thread(entry_hash, self.proj.root, item.rel, item.entry)
            except OSError as e:
                self.result.errors.append({"path": item.rel, "reason": f"cannot read: {e.strerror}"})
                continue
            rec = self.records.data.get(item.rel)
            if rec is not None and rec[HASH] == local_hash and rec[MODE] == item.entry.mode and not item.must \
                    and not self.force:
                self.result.unchanged += 1
                continue
            remote = by_rel.get(item.rel)
            reason = None if self.force else remote_conflict(remote, item.expect, local_hash)
            if reason:
                self.result.conflicts.append({"path": item.rel, "reason": reason})
            else:
                self.result.send.append(item.rel)
                self.result.bytes += item.entry.size
        for rel in deletes:
            reason = None if self.force else remote_conflict(by_rel.get(rel), self.records.expect(rel), None)
            if reason:
                self.result.conflicts.append({"path": rel, "reason": reason + " (deleted locally)"})
            elif by_rel.get(rel) is not None:
                self.result.delete.append(rel)
        return self.result


def remote_conflict(remote: list[Any] | None, expect: list[Any] | None, new_hash: str | None) -> str | None:
    """The agent's conflict rule, for previews: remote = [kind, size, mtime_ns, hash] or None."""
    if remote is None:
        return None
    if expect is not None and remote[:3] == expect[:3]:
        return None
    if remote[3] == new_hash or (expect is not None and remote[3] == expect[3]):
        return None
    if expect is None:
        return "exists on the remote and differs (never pushed by remote_dev)"
    return "changed on the remote since the last sync"


def done_payload(proj: Project, sess: TargetSession, res: PushResult, ms: float) -> dict[str, Any]:
    return {
        "target": sess.target.name, "files": res.files, "bytes": res.bytes, "ms": round(ms, 1),
        "deleted": res.deleted, "unchanged": res.unchanged,
        "conflicts": [c["path"] for c in res.conflicts],
        "conflict_details": [dict(c, local=str(proj.root / c["path"])) for c in res.conflicts],
        "errors": res.errors, "skipped": res.skipped, "root": str(proj.root),
    }


def summarize(kind: str, data: dict[str, Any], max_file_size: int) -> tuple[str, str]:
    parts = [f"{kind} {data['target']}: {data['files']} files, {human(data['bytes'])} in {data['ms'] / 1000:.2f} s"]
    if data.get("deleted"):
        parts.append(f"{data['deleted']} deleted")
    level = "info"
    if data["conflicts"]:
        level = "warn"
        bang = ":RemotePush!" if kind == "push" else ":RemotePull!"
        parts.append(f"{len(data['conflicts'])} conflict(s), not overwritten: {', '.join(data['conflicts'][:5])}"
                     f"{' …' if len(data['conflicts']) > 5 else ''} (see quickfix; {bang} overwrites)")
    if data.get("errors"):
        level = "error"
        parts.append(f"{len(data['errors'])} error(s): " + "; ".join(f"{e['path']}: {e['reason']}" for e in data["errors"][:3]))
    if data.get("skipped"):
        level = "warn" if level == "info" else level
        parts.append(f"not pushed, over sync.max_file_size ({human(max_file_size)}): "
                     + ", ".join(f"{s['path']} ({human(s['size'])})" for s in data["skipped"][:5])
                     + (" …" if len(data["skipped"]) > 5 else "")
                     + " — raise sync.max_file_size (bytes) in .remote-dev.toml to push them, or add them to sync.exclude")
    return "; ".join(parts), level


def human(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} GB"


async def do_push(engine: Engine, proj: Project, paths: list[str] | None, force: bool = False,
                  dry_run: bool = False, quiet: bool = False) -> dict[str, Any]:
    """Push the tree (paths None) or the given relative paths.  quiet: no message unless
    something needs attention (runs and push on save)."""
    sess = proj.session()
    async with sync_state(proj).lock:
        t0 = time.perf_counter()
        pusher = Pusher(engine, proj, sess, force)
        try:
            res = await pusher.run(paths, dry_run)
        except ConnectError as e:
            done = pusher.result.files
            raise RemoteDevError(f"push to {sess.target.host} interrupted after {done} files: {e.message}. "
                                 f"Nothing half-written is left; :RemotePush again completes it.",
                                 kind="connect") from None
        ms = (time.perf_counter() - t0) * 1000
    data = done_payload(proj, sess, res, ms)
    if dry_run:
        data.update(dry_run=True, send=res.send, delete=res.delete)
        return data
    proj.last_push[sess.target.name] = {k: data[k] for k in ("files", "bytes", "ms", "conflicts")} | {"time": time.time()}
    engine.emit("RemoteDevPushDone", data)
    text, level = summarize("push", data, proj.config.sync.max_file_size)
    if not quiet or level != "info":
        engine.message(text, level)
    publish_status(engine, proj)
    return data


async def push_on_save(engine: Engine, proj: Project, file: str) -> dict[str, Any] | None:
    """BufWritePost: push that one file when sync.push_on_save is on.  Saves that come
    while a push is under way coalesce into the next push, which reads the newest content.
    A failing remote (connection, or errors writing there) is reported once, and once more
    when pushes work again; conflicts of the saved file are reported on every save."""
    if not proj.config.sync.push_on_save or not file:
        return None
    st = sync_state(proj)
    pending = st.save_pending
    pending.update(rel_paths(proj, [file], None) or [])
    if st.save_running:
        return {"queued": True}
    st.save_running = True
    result = None
    try:
        while pending:
            batch = sorted(pending)
            pending.clear()
            failure = None
            try:
                result = await do_push(engine, proj, batch, quiet=True)
                if result.get("errors"):
                    failure = "; ".join(f"{e['path']}: {e['reason']}" for e in result["errors"][:3])
            except RemoteDevError as e:
                failure = e.message
            if failure is None:
                if st.save_error is not None:
                    st.save_error = None
                    engine.message(f"push on save to {proj.target.host} works again", "info")
            elif st.save_error is None:
                st.save_error = failure
                engine.message(f"push on save failed: {failure} (reported once; :RemotePush retries)", "error")
                engine.emit("RemoteDevError", {"message": f"push on save failed: {failure}"})
            else:
                log.info("push on save still failing: %s", failure)
    finally:
        st.save_running = False
    return result


# --------------------------------------------------------------------------- pull


def local_target(root: Path, rel: str) -> Path:
    """root/rel for a path named by the remote, refusing anything that would land outside
    root: absolute paths, '..' and symlinked folders on the way.  Creates the folders."""
    parts = rel.split("/")
    if not rel or rel.startswith("/") or any(p in ("", ".", "..") for p in parts) or "\0" in rel:
        raise RemoteDevError(f"refused path {rel!r} from the remote")
    cur = root
    for part in parts[:-1]:
        cur = cur / part
        try:
            st = os.lstat(cur)
        except FileNotFoundError:
            os.mkdir(cur)
            continue
        if stat.S_ISLNK(st.st_mode):
            raise RemoteDevError(f"refused {rel}: {cur.relative_to(root)} is a symlink here")
        if not stat.S_ISDIR(st.st_mode):
            raise RemoteDevError(f"refused {rel}: {cur.relative_to(root)} is not a folder here")
    return root / rel


def temp_beside(path: Path) -> Path:
    return path.parent / f".{path.name[:40]}.rdtmp-{os.getpid()}-{time.monotonic_ns()}"


def write_file_atomic(path: Path, data: bytes, mode: int) -> os.stat_result:
    tmp = temp_beside(path)
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | O_NOFOLLOW, 0o600)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fchmod(fd, mode & 0o7777)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return os.lstat(path)


def write_link_atomic(path: Path, target: str) -> os.stat_result:
    tmp = temp_beside(path)
    os.symlink(target, tmp)
    try:
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return os.lstat(path)


@dataclass
class PullItem:
    rel: str
    kind: str
    size: int
    mtime: int
    digest: str | None
    mode: int
    target: str | None
    local: Path


async def do_pull(engine: Engine, proj: Project, paths: list[str] | None, force: bool,
                  modified: set[str]) -> dict[str, Any]:
    sess = proj.session()
    folders = paths if paths is not None else list(proj.config.sync.pull)
    if not folders:
        raise RemoteDevError(f"{proj.config.file}: sync.pull is empty; name folders to pull, "
                             f"e.g. pull = [\"results/\"], or give paths to :RemotePull")
    folders = [f.strip("/") for f in folders]
    modified = {os.path.realpath(m) for m in modified if m}
    async with sync_state(proj).lock:
        records = records_for(proj, sess)
        root = sess.target.remote_root
        t0 = time.perf_counter()
        res = PushResult()
        pulled: list[str] = []
        try:
            known = {rel: [rec[KIND], rec[RSIZE], rec[RMTIME]] for rel, rec in records.data.items()
                     if in_scope(rel, folders)}
            remote = await sess.call("list", root, folders, known)
            todo: list[PullItem] = []
            for rel, (kind, size, mtime, dig, mode, target) in sorted(remote.items()):
                rec = records.get(rel)
                if rec is not None and rec[KIND] == kind and rec[RSIZE] == size and rec[RMTIME] == mtime:
                    continue  # unchanged on the remote since the last sync
                try:
                    local = await asyncio.to_thread(local_target, proj.root, rel)
                except (RemoteDevError, OSError) as e:
                    res.errors.append({"path": rel, "reason": str(e)})
                    continue
                if os.path.realpath(local) in modified or str(local) in modified:
                    res.conflicts.append({"path": rel, "reason": "open in Neovim with unsaved changes"})
                    continue
                cur = lstat_entry(local)
                if cur is not None:
                    same_stat = rec is not None and rec[KIND] == cur.kind and rec[LSIZE] == cur.size \
                        and rec[LMTIME] == cur.mtime_ns
                    local_hash = rec[HASH] if same_stat else None
                    if local_hash is None:
                        try:
                            local_hash = await asyncio.to_thread(entry_hash, proj.root, rel, cur)
                        except OSError:
                            local_hash = None
                    if local_hash is not None and local_hash == dig and cur.kind == kind:
                        # already the same here: just remember it
                        records.set(rel, [kind, cur.size, cur.mtime_ns, dig, size, mtime, cur.mode, "pull"])
                        continue
                    if not force and not same_stat and not (rec is not None and rec[HASH] == local_hash):
                        why = "changed locally since the last sync" if rec else "exists locally and differs"
                        res.conflicts.append({"path": rel, "reason": why})
                        continue
                todo.append(PullItem(rel, kind, size, mtime, dig, mode, target, local))
            agent = await sess.ensure()
            await fetch_all(agent, root, todo, records, res, pulled)
        except ConnectError as e:
            raise RemoteDevError(f"pull from {sess.target.host} interrupted after {res.files} files: {e.message}. "
                                 f"Nothing half-written is left; :RemotePull again completes it.") from None
        except (asyncssh.Error, OSError) as e:
            raise RemoteDevError(f"pull from {sess.target.host} failed after {res.files} files: {e}") from None
        finally:
            await asyncio.to_thread(records.save)
    data = done_payload(proj, sess, res, (time.perf_counter() - t0) * 1000)
    data["pulled"] = pulled
    engine.emit("RemoteDevPullDone", data)
    text, level = summarize("pull", data, proj.config.sync.max_file_size)
    engine.message(text, level)
    return data


async def fetch_all(agent: Any, root: str, todo: list[PullItem], records: SyncRecords, res: PushResult,
                    pulled: list[str]) -> None:
    """Read requests pipelined up to PULL_WINDOW bytes; each file written atomically."""
    def done(item: PullItem, st: os.stat_result, dig: str | None) -> None:
        records.set(item.rel, [item.kind, st.st_size, st.st_mtime_ns, dig, item.size, item.mtime,
                               stat.S_IMODE(st.st_mode) if item.kind == "f" else 0o777, "pull"])
        res.files += 1
        res.bytes += item.size
        pulled.append(str(item.local))

    window: list[tuple[PullItem, list[asyncio.Future[Any]]]] = []
    in_window = 0

    async def flush() -> None:
        nonlocal in_window
        for item, futs in window:
            try:
                parts = [await f for f in futs]
            except RemoteDevError as e:
                if isinstance(e, ConnectError):
                    raise
                res.errors.append({"path": item.rel, "reason": e.message})
                continue
            data = b"".join(parts)
            st = await asyncio.to_thread(write_file_atomic, item.local, data, item.mode)
            done(item, st, digest(data))
        window.clear()
        in_window = 0

    try:
        for item in todo:
            if item.kind == "l":
                st = await asyncio.to_thread(write_link_atomic, item.local, item.target or "")
                done(item, st, link_hash(item.target or ""))
                continue
            futs = []
            offset = 0
            while offset < item.size or (offset == 0 and not futs):
                n = min(4 << 20, max(item.size - offset, 0)) or 1
                futs.append(agent.send("read", root, item.rel, offset, n))
                offset += n
            window.append((item, futs))
            in_window += item.size
            await agent.drain()
            if in_window >= PULL_WINDOW:
                await flush()
        await flush()
    finally:
        for _item, futs in window:
            for f in futs:
                if f.done() and not f.cancelled():
                    f.exception()
                else:
                    f.cancel()

