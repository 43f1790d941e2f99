"""What sync keeps per project between pushes: one sync at a time, the scanner (and its
watcher), the records per target, what each target's agent holds for the remote check,
the save queue."""

from __future__ import annotations

import asyncio
import hashlib
import os
from dataclasses import dataclass, field
from typing import Any

from ..engine import Project, TargetSession
from .check import CheckMemory
from .records import SyncRecords
from .scan import Scanner
from .watch import WATCHER_ENV


@dataclass
class SyncState:
    """Per project: one sync at a time, the scanner, the records, what each target's agent
    holds for the remote check, and push on save (saves queued while a push runs; the
    failure reported once)."""
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    scanner: Scanner | None = None
    scanner_key: tuple[Any, ...] = ()
    records: dict[str, SyncRecords] = field(default_factory=dict)
    check: CheckMemory = field(default_factory=CheckMemory)
    save_pending: set[str] = field(default_factory=set)
    save_running: bool = False
    save_error: str | None = None
    later: set[asyncio.Task[None]] = field(default_factory=set)   # work left for after a sync
    # files over sync.max_file_size told of by a run's or a save's push, per target: path ->
    # size; told again once the file changes (another size), dropped once it fits or is gone
    told_large: dict[str, dict[str, int]] = field(default_factory=dict)


def sync_state(proj: Project) -> SyncState:
    return proj.state(SyncState)


def compact_later(proj: Project, records: SyncRecords) -> None:
    """Fold the records' journal into a snapshot after this sync, when it has grown (one
    sync at a time: under the lock)."""
    if not records.compaction_due():
        return
    st = sync_state(proj)

    async def compact() -> None:
        async with st.lock:
            await asyncio.to_thread(records.compact)
    task = asyncio.get_running_loop().create_task(compact())
    st.later.add(task)
    task.add_done_callback(st.later.discard)


def scanner_for(proj: Project) -> Scanner:
    """The project's scanner, made anew when the root, the sync rules or the watcher asked
    for (REMOTE_DEV_WATCHER) changed."""
    st = sync_state(proj)
    cfg = proj.config.sync
    key = (str(proj.root), cfg.exclude, cfg.pull, cfg.include, os.environ.get(WATCHER_ENV, ""))
    if st.scanner is None or st.scanner_key != key:
        if st.scanner is not None:
            st.scanner.close()
        st.scanner = Scanner(proj.root, cfg.exclude, cfg.pull, include=cfg.include)
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
