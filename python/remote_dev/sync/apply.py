"""What a sync changes here: the records (from the agent's answers, for pushes) and the
local files (written atomically, for pulls).  The only writer of records during a sync.

A pushed file is recorded only once the agent answered "ok" with the remote stat it left;
a conflict or an error records nothing, so the next push looks at the path again.  A
pulled file is written to a temporary file beside its place and renamed over it, never
through a symlinked folder on the way.
"""

from __future__ import annotations

import os
import stat
import time
from pathlib import Path
from typing import Any

from ..errors import RemoteDevError
from .content import O_NOFOLLOW
from .problem import SyncResult, unreadable
from .reconcile import PullItem, Send, content_unchanged
from .records import Record, SyncRecords
from .scan import LocalEntry


class PushCommit:
    """Turns what happened to each path of a push into records and the result."""

    def __init__(self, records: SyncRecords, result: SyncResult) -> None:
        self.records = records
        self.result = result

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
        status = answer[0]
        if status == "ok":
            unchanged = large and content_unchanged(self.records.get(item.rel), entry.kind, content_hash,
                                                    entry.mode, item.must, item.force)
            self.records.set(item.rel, Record(entry.kind, entry.size, entry.mtime_ns, content_hash, answer[1],
                                              answer[2], entry.mode, "push"))
            if unchanged:
                self.result.unchanged += 1
                return
            self.result.files += 1
            self.result.bytes += entry.size
        elif status == "conflict":
            self.result.conflict(item.rel, answer[1])
        else:
            self.result.error(item.rel, answer[1] if len(answer) > 1 else status)

    def unreadable(self, item: Send, err: OSError) -> None:
        self.result.skipped.append(unreadable(item.rel, item.entry.size, err))

    def deleted(self, rel: str, answer: list[Any]) -> None:
        """The agent's answer to a delete: ok | gone (already) | conflict | error."""
        if answer[0] in ("ok", "gone"):
            self.records.drop(rel)
            self.result.deleted += answer[0] == "ok"
        elif answer[0] == "conflict":
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


class PullCommit:
    """Writes pulled files in place (atomically) and records them."""

    def __init__(self, root: Path, records: SyncRecords, result: SyncResult) -> None:
        self.root = root
        self.records = records
        self.result = result
        self.pulled: list[str] = []   # local paths written (Neovim reloads their buffers)

    def same(self, rel: str, rec: Record) -> None:
        self.records.set(rel, rec)

    def put(self, item: PullItem, data: bytes | None) -> os.stat_result:
        """Put item in place, atomically (data for a file; a symlink's target comes with
        the item).  Runs in a worker thread; records nothing."""
        path = local_target(self.root, item.rel, create=True)
        if item.kind == "l":
            return write_link_atomic(path, item.target or "")
        return write_file_atomic(path, data or b"", item.mode)

    def done(self, item: PullItem, st: os.stat_result, content_hash: str) -> None:
        self.records.set(item.rel, Record(item.kind, st.st_size, st.st_mtime_ns, content_hash, item.size, item.mtime,
                                          stat.S_IMODE(st.st_mode) if item.kind == "f" else 0o777, "pull"))
        self.result.files += 1
        self.result.bytes += item.size
        self.pulled.append(str(self.root / item.rel))

    def error(self, item: PullItem, reason: str) -> None:
        self.result.error(item.rel, reason)
