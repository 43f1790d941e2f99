"""What a sync changes here: the records (from the agent's answers, for pushes) and the
local files (written atomically, for pulls).  The only writer of records during a sync.

A pushed file is recorded only once the agent answered OK with the remote stat it left;
a conflict or an error records nothing, so the next push looks at the path again.  A
pulled file is written block by block to a temporary file beside its place (PullFile) and
renamed over it when whole, never through a symlinked folder on the way.
"""

from __future__ import annotations

import os
import stat
import time
from pathlib import Path
from typing import Any

from ..agent.protocol import CONFLICT, FILE, GONE, OK
from ..errors import RemoteDevError
from .content import O_NOFOLLOW, finish, new_hasher
from .problem import SyncResult, unreadable
from .reconcile import PullItem, Send, content_unchanged
from .records import Record, SyncRecords
from .scan import LocalEntry


class PushCommit:
    """Turns what happened to each path of a push into records and the result."""

    def __init__(self, records: SyncRecords, result: SyncResult) -> None:
        self.records = records
        self.result = result
        self.written: set[str] = set()   # paths the agent was asked to write or delete

    def in_flight(self, writes: list[tuple[Send, str, LocalEntry]]) -> None:
        """Writes about to be sent (item, content hash, what was read): journaled before
        they go out, so that a write whose answer is lost is known as ours (records.py)."""
        self.records.in_flight({item.rel: Record(entry.kind, entry.size, entry.mtime_ns, h, 0, 0, entry.mode, "push")
                                for item, h, entry in writes})

    def deleting(self, rels: list[str]) -> None:
        self.records.in_flight(dict.fromkeys(rels))

    def same(self, item: Send, content_hash: str, entry: LocalEntry) -> None:
        """Read, and its content is what the last sync left: only the new stat is recorded."""
        rec = self.records.data[item.rel]
        self.records.set(item.rel, Record(entry.kind, entry.size, entry.mtime_ns, content_hash, rec.rsize,
                                          rec.rmtime, entry.mode, rec.origin))
        self.result.unchanged += 1

    def sent(self, item: Send, content_hash: str, entry: LocalEntry, answer: list[Any], large: bool = False) -> None:
        """The agent's answer to a write: ["ok", size, mtime_ns] | ["conflict", reason] |
        ["error", message].  large: a staged file, sent before its hash was known; when
        its content turns out to be what was recorded it counts as unchanged."""
        self.written.add(item.rel)
        self.records.landed(item.rel)
        status = answer[0]
        if status == OK:
            unchanged = large and content_unchanged(self.records.get(item.rel), entry.kind, content_hash,
                                                    entry.mode, item.must, item.force)
            self.records.set(item.rel, Record(entry.kind, entry.size, entry.mtime_ns, content_hash, answer[1],
                                              answer[2], entry.mode, "push"))
            if unchanged:
                self.result.unchanged += 1
                return
            self.result.files += 1
            self.result.bytes += entry.size
        elif status == CONFLICT:
            self.result.conflict(item.rel, answer[1])
        else:
            self.result.error(item.rel, answer[1] if len(answer) > 1 else status)

    def unreadable(self, item: Send, err: OSError) -> None:
        self.result.skipped.append(unreadable(item.rel, item.entry.size, err))

    def deleted(self, rel: str, answer: list[Any]) -> None:
        """The agent's answer to a delete: ok | gone (already) | conflict | error."""
        self.written.add(rel)
        self.records.landed(rel)
        if answer[0] in (OK, GONE):
            self.records.drop(rel)
            self.result.deleted += answer[0] == OK
        elif answer[0] == CONFLICT:
            self.result.conflict(rel, answer[1] + " (deleted locally)")
        else:
            self.result.error(rel, answer[1])


# --------------------------------------------------------------------------- pull


def local_target(root: Path, rel: str, create: bool = False) -> Path:
    """root/rel for a path named by the remote, refusing anything that would land outside
    root: absolute paths, '..' and symlinked folders on the way.  create: make the missing
    folders (else the check stops at the first missing one: nothing lies below it)."""
    parts = rel.split("/")
    if not rel or rel.startswith("/") or any(p in ("", ".", "..") for p in parts) or "\0" in rel:
        raise RemoteDevError(f"refused path {rel!r} from the remote")
    cur = root
    for part in parts[:-1]:
        cur = cur / part
        try:
            st = os.lstat(cur)
        except FileNotFoundError:
            if not create:
                break
            os.mkdir(cur)
            continue
        if stat.S_ISLNK(st.st_mode):
            raise RemoteDevError(f"refused {rel}: {cur.relative_to(root)} is a symlink here")
        if not stat.S_ISDIR(st.st_mode):
            raise RemoteDevError(f"refused {rel}: {cur.relative_to(root)} is not a folder here")
    return root / rel


def temp_beside(path: Path) -> Path:
    return path.parent / f".{path.name[:40]}.rdtmp-{os.getpid()}-{time.monotonic_ns()}"


class PullFile:
    """A pulled file on its way: a temporary file beside its place, written block by
    block and hashed as it goes; finish() renames it into place.  start: the local copy's
    first start bytes are taken as they are (a file that only grew)."""

    def __init__(self, root: Path, item: Any, start: int = 0) -> None:
        self.path = local_target(root, item.rel, create=True)
        self.mode = item.mode
        self.tmp = temp_beside(self.path)
        self.fd = os.open(self.tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | O_NOFOLLOW, 0o600)
        self.hash = new_hasher()
        self.fetched = 0     # bytes that came from the remote
        try:
            if start:
                self.copy_local(start)
        except BaseException:
            self.discard()
            raise

    def copy_local(self, n: int) -> None:
        fd = os.open(self.path, os.O_RDONLY | O_NOFOLLOW)
        try:
            while n > 0:
                block = os.read(fd, min(n, 1 << 20))
                if not block:
                    raise RemoteDevError(f"{self.path} shrank while being pulled")
                self.put(block)
                n -= len(block)
        finally:
            os.close(fd)

    def put(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            view = view[os.write(self.fd, view):]
        self.hash.update(data)

    def write(self, data: bytes) -> None:
        self.put(data)
        self.fetched += len(data)

    def finish(self) -> tuple[os.stat_result, str]:
        """Rename into place: (its stat, its content hash)."""
        try:
            os.fchmod(self.fd, self.mode & 0o7777)
            os.close(self.fd)
            self.fd = -1
            os.replace(self.tmp, self.path)
        except BaseException:
            self.discard()
            raise
        return os.lstat(self.path), finish(self.hash)

    def discard(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        self.tmp.unlink(missing_ok=True)


def write_link_atomic(path: Path, target: str) -> os.stat_result:
    tmp = temp_beside(path)
    os.symlink(target, tmp)
    try:
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return os.lstat(path)


class PullCommit:
    """Writes pulled files in place (atomically) and records them."""

    def __init__(self, root: Path, records: SyncRecords, result: SyncResult) -> None:
        self.root = root
        self.records = records
        self.result = result
        self.pulled: list[str] = []   # local paths written (Neovim reloads their buffers)

    def same(self, rel: str, rec: Record) -> None:
        self.records.set(rel, rec)

    def put_link(self, item: PullItem) -> os.stat_result:
        """Put a symlink in place, atomically.  In a worker thread; records nothing."""
        return write_link_atomic(local_target(self.root, item.rel, create=True), item.target or "")

    def grown(self, item: PullItem) -> int:
        """The recorded size when the remote file only grew since the last pull and the
        local copy is still what that pull left: only the rest needs to come.  Else 0."""
        rec = self.records.get(item.rel)
        if rec is None or rec.origin != "pull" or rec.kind != FILE or item.kind != FILE:
            return 0
        if not 0 < rec.rsize < item.size or rec.lsize != rec.rsize or rec.hash is None:
            return 0
        try:
            st = os.lstat(local_target(self.root, item.rel))
        except (OSError, RemoteDevError):
            return 0
        if not stat.S_ISREG(st.st_mode) or not rec.same_local(FILE, st.st_size, st.st_mtime_ns):
            return 0
        return rec.rsize

    def done(self, item: PullItem, st: os.stat_result, content_hash: str, fetched: int | None = None) -> None:
        self.records.set(item.rel, Record(item.kind, st.st_size, st.st_mtime_ns, content_hash, item.size, item.mtime,
                                          stat.S_IMODE(st.st_mode) if item.kind == FILE else 0o777, "pull"))
        self.result.files += 1
        self.result.bytes += item.size if fetched is None else fetched
        self.pulled.append(str(self.root / item.rel))

    def error(self, item: PullItem, reason: str) -> None:
        self.result.error(item.rel, reason)
