"""What the last sync left, per path, and the store that keeps it across sessions.

A record is a cache of both sides' state right after a sync, never the truth: a push
compares the local stat with it to skip what did not change, and hands the agent the
remote half (``expect``) so that the agent replaces a remote file only while it still is
what the last sync left; every push also has the agent check the remote half of the
records it relies on (check.py), so what vanished or changed there is seen.  ``changes``
lists the paths set or dropped, in order, so that check sends only what changed since the
agent last heard.

Writes in flight (``pending``): before a push sends a write or a delete, its path and the
content it sends (a Record whose remote half is not known yet; None for a delete) are
appended to the journal at once, and dropped when the agent answers.  A push cut after the
agent wrote but before its answer came back leaves them there: the next push asks the
remote for those paths first and adopts what is its own write (reconcile.settle_pending)
instead of calling it a change made there by hand.

On disk (per target, see ``state.records_for``): a msgpack snapshot
``{"v": RECORDS_VERSION, "records": {rel: [8 fields]}, "pending": {rel: [8 fields] | None}}``
plus an append-only journal of ``{rel: [8 fields] | None}`` maps; the key "" (never a
path) of a journal map carries changes of the writes in flight, ``{rel: [8 fields] | None
| False}`` (False: no longer in flight).  A ``Record`` is a NamedTuple, which msgpack packs as
the same array the earlier positional lists were: the format is unchanged and
RECORDS_VERSION stays 2.  A snapshot of another version, or one that cannot be read,
starts afresh (an empty table: the next push compares contents with the remote, so
nothing is lost, only a little time).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, NamedTuple

import msgpack

log = logging.getLogger("remote_dev")

RECORDS_VERSION = 2


class Record(NamedTuple):
    """One path as the last sync left it on both sides."""
    kind: str             # "f" file, "l" symlink
    lsize: int            # local size and mtime (ns) right after the sync
    lmtime: int
    hash: str | None      # content hash (see content.py), the same on both sides
    rsize: int            # remote size and mtime (ns) right after the sync
    rmtime: int
    mode: int             # permission bits (0o777 for symlinks)
    origin: str           # "push" | "pull": which way it went

    def expect(self) -> list[Any]:
        """The remote state this sync left, as the agent's ops take it: [kind, size,
        mtime_ns, hash]."""
        return [self.kind, self.rsize, self.rmtime, self.hash]

    def same_local(self, kind: str, size: int, mtime_ns: int, mode: int | None = None) -> bool:
        """The local file still has the stat this sync left (mode too when given)."""
        return self.lmtime == mtime_ns and self.lsize == size and self.kind == kind \
            and (mode is None or self.mode == mode)

    def same_remote(self, state: list[Any] | tuple[Any, ...]) -> bool:
        """A remote [kind, size, mtime_ns, ...] still has the stat this sync left."""
        return state[0] == self.kind and state[1] == self.rsize and state[2] == self.rmtime


def _record(raw: Any) -> Record:
    return Record._make(raw)


class SyncRecords:
    """The records of one target, loaded from disk, changed in memory, saved as a journal
    entry (pushing one file writes a few bytes, not the whole table).  The journal is folded
    into a new snapshot (a temporary file renamed) once it grows; a torn last journal entry
    (a crash while appending) is ignored."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.journal = path.with_name(path.name + ".journal")
        self.data: dict[str, Record] = {}
        self.dirty: dict[str, Record | None] = {}
        self.pending: dict[str, Record | None] = {}    # writes (deletes: None) in flight, see above
        self.dirty_pending: dict[str, Record | None | bool] = {}
        self.journal_entries = 0
        self.journal_file: Any = None        # held open between the saves of a push's writes in flight
        self.uid = os.urandom(6).hex()       # names this table (as loaded) to the agent's check
        self.changes: list[str] = []         # paths set or dropped since it was loaded, in order
        self.load()

    @property
    def gen(self) -> int:
        """The generation of the table: 1 + how many changes it had since it was loaded."""
        return len(self.changes) + 1

    def changed_since(self, gen: int) -> set[str]:
        return set(self.changes[gen - 1:])

    def load(self) -> None:
        if self.path.exists():
            try:
                raw = msgpack.unpackb(self.path.read_bytes(), raw=False, strict_map_key=False, unicode_errors="surrogateescape")
                if isinstance(raw, dict) and raw.get("v") == RECORDS_VERSION:
                    self.data = {rel: _record(rec) for rel, rec in raw["records"].items()}
                    self.pending = {rel: None if rec is None else _record(rec)
                                    for rel, rec in (raw.get("pending") or {}).items()}
            except (ValueError, KeyError, TypeError, msgpack.UnpackException) as e:
                log.warning("sync records %s unreadable (%s): starting afresh", self.path, e)
                self.data, self.pending = {}, {}
        if self.journal.exists():
            try:
                unpacker = msgpack.Unpacker(raw=False, strict_map_key=False, unicode_errors="surrogateescape")
                unpacker.feed(self.journal.read_bytes())
                for change in unpacker:
                    for rel, rec in change.items():
                        self.journal_entries += 1
                        if rel == "" and isinstance(rec, dict):
                            self.load_pending(rec)
                        elif rec is None:
                            self.data.pop(rel, None)
                        else:
                            self.data[rel] = _record(rec)
            except (ValueError, TypeError, msgpack.UnpackException) as e:
                log.warning("sync journal %s: stopped at a damaged entry (%s)", self.journal, e)

    def load_pending(self, changes: dict[str, Any]) -> None:
        for rel, rec in changes.items():
            if rec is False:
                self.pending.pop(rel, None)
            else:
                self.pending[rel] = None if rec is None else _record(rec)

    def get(self, rel: str) -> Record | None:
        return self.data.get(rel)

    def set(self, rel: str, rec: Record) -> None:
        self.data[rel] = rec
        self.dirty[rel] = rec
        self.changes.append(rel)

    def drop(self, rel: str) -> None:
        if self.data.pop(rel, None) is not None:
            self.dirty[rel] = None
            self.changes.append(rel)

    def expect(self, rel: str) -> list[Any] | None:
        rec = self.data.get(rel)
        return None if rec is None else rec.expect()

    def in_flight(self, writes: dict[str, Record | None]) -> None:
        """Writes (rel: the Record the write would leave, remote half unknown) and deletes
        (rel: None) about to be sent: journaled at once (with what else changed), before
        they go out."""
        if writes:
            self.pending.update(writes)
            self.dirty_pending.update(writes)
            try:
                self.save(snapshot=False, hold=True)
            except OSError as e:   # kept in memory, written with the next save
                log.warning("sync journal %s: cannot note the writes in flight (%s)", self.journal, e)

    def landed(self, rel: str) -> None:
        """The agent answered for rel: its write is no longer in flight."""
        if rel in self.pending:
            del self.pending[rel]
            self.dirty_pending[rel] = False

    def save(self, snapshot: bool = True, hold: bool = False) -> None:
        """What changed, as a journal entry; as a new snapshot instead once the journal
        grew (unless not snapshot).  hold: the journal stays open for the next save (a
        push journals each batch from its event loop, where every open and close is a
        system call that hands the GIL to the threads reading ahead); any save without it
        opens the journal afresh and closes it, as the end of a push does."""
        if not self.dirty and not self.dirty_pending:
            if not hold:
                self.close_journal()
            return
        dirty: dict[str, Any] = dict(self.dirty)
        if self.dirty_pending:
            dirty[""] = self.dirty_pending
        if snapshot and self.compaction_due(len(dirty)):
            self.snapshot()
        else:
            data = msgpack.packb(dirty, use_bin_type=True, unicode_errors="surrogateescape")
            if not hold:
                self.close_journal()   # opened afresh: a state folder removed meanwhile is made again
                with self.open_writing(self.journal, "ab") as f:
                    f.write(data)
            else:
                try:
                    if self.journal_file is None:
                        self.journal_file = self.open_writing(self.journal, "ab")
                    self.journal_file.write(data)
                    self.journal_file.flush()
                except OSError:
                    self.close_journal()
                    raise
            self.journal_entries += len(dirty)
            self.dirty, self.dirty_pending = {}, {}   # only once written: a failed save is tried again

    def close_journal(self) -> None:
        f, self.journal_file = self.journal_file, None
        if f is not None:
            try:
                f.close()
            except OSError as e:   # its entries were flushed: nothing is lost
                log.warning("sync journal %s: closing it failed (%s)", self.journal, e)

    def open_writing(self, path: Path, mode: str) -> Any:
        """path opened for writing; its folder made when it is not there (the first save,
        or the state folder removed meanwhile) -- not looked at on every save: a push
        journals each batch, from its event loop."""
        try:
            return open(path, mode)
        except FileNotFoundError:
            path.parent.mkdir(parents=True, exist_ok=True)
            return open(path, mode)

    def compaction_due(self, more: int = 0) -> bool:
        """The journal (with more entries) has grown enough to be folded into a snapshot."""
        return self.journal_entries + more > max(4096, len(self.data) // 2)

    def compact(self) -> None:
        """A new snapshot when the journal has grown (a push leaves that for after it: on
        the bench tree a snapshot is ~6 ms)."""
        if self.compaction_due():
            try:
                self.snapshot()
            except OSError as e:   # the journal still holds everything
                log.warning("sync records %s: cannot write a snapshot (%s)", self.path, e)

    def snapshot(self) -> None:
        """All records and writes in flight as a new snapshot (a temporary file renamed);
        the journal goes."""
        tmp = self.path.with_name(f"{self.path.name}.tmp{os.getpid()}")
        with self.open_writing(tmp, "wb") as f:
            f.write(msgpack.packb({"v": RECORDS_VERSION, "records": self.data, "pending": self.pending},
                                  use_bin_type=True, unicode_errors="surrogateescape"))
        tmp.replace(self.path)
        self.close_journal()
        self.journal.unlink(missing_ok=True)
        self.journal_entries = 0
        self.dirty, self.dirty_pending = {}, {}
