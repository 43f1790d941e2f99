"""A pull, start to end: list the remote folders -> look at the local side -> decide ->
fetch (compressed for the link, streamed to disk, only the tail of a file that grew) and
write atomically -> commit records.

The mirror image of a push: a local file is replaced only while it is what the last sync
left (or already has the remote content); otherwise it is a conflict that ``!``
overrides.  A buffer open in Neovim with unsaved changes is never overwritten, not even
with ``!``.  Paths named by the remote never land outside the root (apply.local_target).
"""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path
from typing import Any

import asyncssh

from ..engine import Engine, Project, log
from ..errors import ConnectError, RemoteDevError
from . import reconcile
from .apply import PullCommit, local_target
from .content import entry_hash
from .problem import SyncResult, done_payload, summarize
from .reconcile import PullItem
from .scan import LocalEntry, in_scope, lstat_entry
from .state import records_for, sync_state
from .fetch import fetch_all
from .wire import LinkMeter


def local_side(root: Path, items: list[PullItem], modified: set[str], result: SyncResult
               ) -> tuple[dict[str, LocalEntry | None], set[str]]:
    """(what is at each item's local path, the items open with unsaved changes); a path
    that would land outside root is an error and left out.  In a worker thread."""
    local: dict[str, LocalEntry | None] = {}
    unsaved: set[str] = set()
    for item in items:
        try:
            path = local_target(root, item.rel)
        except (RemoteDevError, OSError) as e:
            result.error(item.rel, str(e))
            continue
        if os.path.realpath(path) in modified or str(path) in modified:
            unsaved.add(item.rel)
        local[item.rel] = lstat_entry(path)
    return local, unsaved


PRESENT_MAX = 20_000   # local paths sent with a listing at most (more: the agent hashes every new file)


def present_locally(root: Path, folders: list[str]) -> list[str] | None:
    """What is at the pull folders' paths here (files and symlinks, relative, never
    following symlinks): the listing hashes only the remote files that have a local
    counterpart to compare with (a file only fetched is hashed as it arrives).  None: more
    than PRESENT_MAX.  In a worker thread."""
    out: list[str] = []
    for folder in folders:
        base = root / folder if folder else root
        if os.path.islink(base) or os.path.isfile(base):
            out.append(folder)
            continue
        for dirpath, dirnames, filenames in os.walk(base):
            rel = os.path.relpath(dirpath, root).replace(os.sep, "/")
            prefix = "" if rel == "." else rel + "/"
            out += [prefix + n for n in filenames]
            out += [prefix + d for d in dirnames if os.path.islink(os.path.join(dirpath, d))]
            if len(out) > PRESENT_MAX:
                return None
    return out


def local_hash(root: Path, rel: str, entry: LocalEntry) -> str | None:
    try:
        return entry_hash(root, rel, entry.kind, entry.target)
    except OSError:
        return None


async def do_pull(engine: Engine, proj: Project, paths: list[str] | None, force: bool,
                  modified: set[str]) -> dict[str, Any]:
    """Pull the sync.pull folders (paths None) or the given relative paths.  modified:
    files open in Neovim with unsaved changes."""
    sess = proj.session()
    folders = paths if paths is not None else list(proj.config.sync.pull)
    if not folders:
        raise RemoteDevError(f"{proj.config.file}: sync.pull is empty; name folders to pull, "
                             f"e.g. pull = [\"results/\"], or give paths to :RemotePull")
    folders = [f.strip("/") for f in folders]
    modified = {os.path.realpath(m) for m in modified if m}
    root = proj.root
    async with sync_state(proj).lock:
        records = records_for(proj, sess)
        t0 = time.perf_counter()
        res = SyncResult()
        commit = PullCommit(root, records, res)
        try:
            known = {rel: [rec.kind, rec.rsize, rec.rmtime] for rel, rec in records.data.items()
                     if in_scope(rel, folders)}
            meter = sess.state(LinkMeter)
            present = await asyncio.to_thread(present_locally, root, folders)
            t1 = time.perf_counter()
            listing = await sess.call("list", sess.target.remote_root, folders, known, present)
            if meter.rtt_ms is None:   # a round trip (and a little listing): enough to tell loopback
                meter.rtt_ms = sess.rtt_ms or (time.perf_counter() - t1) * 1000
            items = reconcile.remote_changed(listing, records.data)
            local, unsaved = await asyncio.to_thread(local_side, root, items, modified, res)
            plan = await asyncio.to_thread(
                reconcile.plan_pull, [i for i in items if i.rel in local], records.data, local,
                unsaved.__contains__, force, lambda rel, entry: local_hash(root, rel, entry))
            for rel, rec in plan.same:
                commit.same(rel, rec)
            res.conflicts += plan.conflicts
            agent = await sess.ensure()
            used = await fetch_all(agent, sess.target.remote_root, plan.fetch, commit, meter)
            if used:
                log.info("pull %s: %s, %s", sess.target.name, used, meter.describe())
        except ConnectError as e:
            if not res.files and not e.retry:
                raise   # a login that failed interrupted nothing
            raise RemoteDevError(f"pull from {sess.target.host} interrupted after {res.files} files: {e.message}. "
                                 f"Nothing half-written is left; :RemotePull again completes it.") from None
        except (asyncssh.Error, OSError) as e:
            raise RemoteDevError(f"pull from {sess.target.host} failed after {res.files} files: {e}") from None
        finally:
            await asyncio.to_thread(records.save)
    data = done_payload(root, sess.target.name, res, (time.perf_counter() - t0) * 1000,
                        sess.target.host)
    data["pulled"] = commit.pulled
    engine.emit("RemoteDevPullDone", data)
    text, level = summarize("pull", data)
    engine.message(text, level)
    return data
