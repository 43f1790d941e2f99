"""Push and pull: incremental, atomic, and never overwriting work done on the other side.

A per-target record holds, for every path synced, what the last sync left on both sides:
the local stat, the content hash, and the remote stat.  A push sends a file only when its
content changed, and the agent replaces the remote file only when it still is what the last
sync left (same stat, or same content); otherwise it is a conflict, which ``!`` (force)
overrides.  Pull is the mirror image.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgpack

from .actions import action, publish_status
from .engine import Engine, Project, TargetSession, log
from .errors import ConnectError, RemoteDevError
from .scan import LocalEntry, lstat_entry, scan

BATCH_BYTES = 4 << 20          # payload per push request
BATCH_OPS = 1024
MAX_INFLIGHT = 6               # push requests on the wire before waiting for answers
CHUNK = 1 << 20                # large files travel in chunks of this size
LARGE = 8 << 20                # files above this are staged in chunks
PROGRESS_AFTER = 1.0           # seconds before progress reports start
PROGRESS_EVERY = 0.25
HASH_BLOCK = 1 << 20

# record fields
KIND, LSIZE, LMTIME, HASH, RSIZE, RMTIME = range(6)


def blake(data: bytes) -> str:
    return hashlib.blake2b(data, digest_size=16).hexdigest()


def link_hash(target: str) -> str:
    return blake(b"link:" + os.fsencode(target))


def file_hash(path: Path) -> str:
    h = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as f:
        while block := f.read(HASH_BLOCK):
            h.update(block)
    return h.hexdigest()


class SyncRecords:
    """What the last sync left, per path: [kind, local size, local mtime_ns, hash,
    remote size, remote mtime_ns].  Saved atomically after every push and pull."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.data: dict[str, list[Any]] = {}
        if path.exists():
            try:
                self.data = msgpack.unpackb(path.read_bytes(), raw=False, strict_map_key=False)
            except (ValueError, msgpack.UnpackException) as e:
                log.warning("sync records %s unreadable (%s): starting afresh", path, e)
                self.data = {}

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(f".tmp{os.getpid()}")
        tmp.write_bytes(msgpack.packb(self.data, use_bin_type=True))
        tmp.replace(self.path)

    def expect(self, rel: str) -> list[Any] | None:
        rec = self.data.get(rel)
        return None if rec is None else [rec[KIND], rec[RSIZE], rec[RMTIME], rec[HASH]]


def records_for(proj: Project, sess: TargetSession) -> SyncRecords:
    cache = proj.extras.setdefault("records", {})
    key = sess.target.name
    if key not in cache:
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in key)
        cache[key] = SyncRecords(proj.state_dir() / f"sync-{safe}.msgpack")
    return cache[key]


def rel_paths(proj: Project, paths: list[str] | None, cwd: str | None) -> list[str] | None:
    """Paths given by the user (absolute, or relative to cwd) as paths relative to the root."""
    if not paths:
        return None
    out = []
    for p in paths:
        full = Path(os.path.abspath(os.path.join(cwd or os.getcwd(), os.path.expanduser(p))))
        try:
            rel = full.relative_to(proj.root).as_posix()
        except ValueError:
            raise RemoteDevError(f"{p}: outside the project root {proj.root}") from None
        out.append("" if rel == "." else rel)
    return out


@dataclass
class PushItem:
    rel: str
    entry: LocalEntry
    expect: list[Any] | None


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
        self.result = PushResult()
        self.t0 = time.perf_counter()
        self.last_progress = 0.0
        self.total_files = 0
        self.total_bytes = 0

    # -- planning (in a worker thread: stats and hashes)
    def plan(self, paths: list[str] | None) -> tuple[list[PushItem], list[str]]:
        cfg = self.proj.config
        entries = scan(self.proj.root, cfg.sync.exclude, cfg.sync.pull, paths)
        sends: list[PushItem] = []
        for rel, entry in entries.items():
            rec = self.records.data.get(rel)
            if rec and not self.force and rec[KIND] == entry.kind and rec[LSIZE] == entry.size \
                    and rec[LMTIME] == entry.mtime_ns:
                self.result.unchanged += 1
                continue
            if entry.kind == "f" and entry.size > cfg.sync.max_file_size:
                self.result.skipped.append({"path": rel, "size": entry.size})
                continue
            sends.append(PushItem(rel, entry, self.records.expect(rel)))
        deletes = []
        for rel in self.records.data:
            if rel in entries:
                continue
            if paths is not None and not any(p in ("", ".") or rel == p or rel.startswith(p.rstrip("/") + "/")
                                             for p in paths):
                continue
            if lstat_entry(self.proj.root / rel) is None:
                deletes.append(rel)
        return sends, deletes

    def read_batch(self, items: list[PushItem]) -> list[tuple[dict[str, Any], PushItem, str]]:
        """Ops for small files and symlinks; a file whose content equals the record is
        only re-recorded."""
        ops = []
        for item in items:
            path = self.proj.root / item.rel
            if item.entry.kind == "l":
                digest = link_hash(item.entry.target or "")
                op = {"op": "l", "path": item.rel, "target": item.entry.target}
            else:
                try:
                    data = path.read_bytes()
                except OSError as e:
                    self.result.errors.append({"path": item.rel, "reason": f"cannot read: {e.strerror}"})
                    continue
                digest = blake(data)
                op = {"op": "w", "path": item.rel, "data": data, "mode": item.entry.mode}
            rec = self.records.data.get(item.rel)
            if rec and rec[HASH] == digest and not self.force:
                rec[LSIZE], rec[LMTIME] = item.entry.size, item.entry.mtime_ns
                self.result.unchanged += 1
                continue
            op.update(hash=digest, expect=item.expect, force=self.force)
            ops.append((op, item, digest))
        return ops

    # -- sending
    def accept(self, item: PushItem, digest: str, answer: list[Any]) -> None:
        status = answer[0]
        if status == "ok":
            self.records.data[item.rel] = [item.entry.kind, item.entry.size, item.entry.mtime_ns, digest,
                                           answer[1], answer[2]]
            self.result.files += 1
            self.result.bytes += item.entry.size
        elif status == "conflict":
            self.result.conflicts.append({"path": item.rel, "reason": answer[1]})
        else:
            self.result.errors.append({"path": item.rel, "reason": answer[1] if len(answer) > 1 else status})

    def progress(self, done_files: int, done_bytes: int, force: bool = False) -> None:
        now = time.perf_counter()
        if now - self.t0 < PROGRESS_AFTER or (now - self.last_progress < PROGRESS_EVERY and not force):
            return
        self.last_progress = now
        self.engine.report("progress", {
            "action": "push", "target": self.sess.target.name, "files": done_files, "total_files": self.total_files,
            "bytes": done_bytes, "total_bytes": self.total_bytes,
        })

    async def run(self, paths: list[str] | None, dry_run: bool) -> PushResult:
        sends, deletes = await asyncio.to_thread(self.plan, paths)
        if dry_run:
            return await self.preview(sends, deletes)
        agent = await self.sess.ensure()
        root = self.sess.target.remote_root
        self.total_files = len(sends)
        self.total_bytes = sum(i.entry.size for i in sends)
        inflight: list[tuple[asyncio.Future[Any], list[tuple[dict[str, Any], PushItem, str]]]] = []

        async def settle(limit: int) -> None:
            while len(inflight) > limit:
                fut, batch = inflight.pop(0)
                answers = await fut
                for (_op, item, digest), answer in zip(batch, answers):
                    self.accept(item, digest, answer)
                self.progress(self.result.files, self.result.bytes)

        small = [i for i in sends if not (i.entry.kind == "f" and i.entry.size > LARGE)]
        large = [i for i in sends if i.entry.kind == "f" and i.entry.size > LARGE]
        try:
            batch_items: list[PushItem] = []
            size = 0
            for n, item in enumerate(small):
                batch_items.append(item)
                size += item.entry.size + 200
                if size >= BATCH_BYTES or len(batch_items) >= BATCH_OPS or n == len(small) - 1:
                    batch = await asyncio.to_thread(self.read_batch, batch_items)
                    batch_items, size = [], 0
                    if batch:
                        inflight.append((agent.send("push", root, [b[0] for b in batch]), batch))
                        await agent.drain()
                        await settle(MAX_INFLIGHT)
            await settle(0)
            for item in large:
                await self.push_large(agent, root, item)
            if deletes:
                ops = [{"op": "d", "path": rel, "expect": self.records.expect(rel), "force": self.force}
                       for rel in deletes]
                for rel, answer in zip(deletes, await agent.call("push", root, ops)):
                    if answer[0] in ("ok", "gone"):
                        self.records.data.pop(rel, None)
                        self.result.deleted += answer[0] == "ok"
                    elif answer[0] == "conflict":
                        self.result.conflicts.append({"path": rel, "reason": answer[1] + " (deleted locally)"})
                    else:
                        self.result.errors.append({"path": rel, "reason": answer[1]})
        finally:
            await asyncio.to_thread(self.records.save)
        self.progress(self.result.files, self.result.bytes, force=True)
        return self.result

    async def push_large(self, agent: Any, root: str, item: PushItem) -> None:
        path = self.proj.root / item.rel
        token = await agent.call("stage", root, item.rel)
        h = hashlib.blake2b(digest_size=16)
        sent = 0
        try:
            with open(path, "rb") as f:
                while True:
                    block = await asyncio.to_thread(f.read, CHUNK)
                    if not block:
                        break
                    h.update(block)
                    agent.send("append", token, block)
                    sent += len(block)
                    await agent.drain()
                    self.progress(self.result.files, self.result.bytes + sent)
        except OSError as e:
            self.result.errors.append({"path": item.rel, "reason": f"cannot read: {e.strerror}"})
            await agent.call("unstage", token)
            return
        digest = h.hexdigest()
        rec = self.records.data.get(item.rel)
        op = {"op": "w", "path": item.rel, "token": token, "mode": item.entry.mode, "hash": digest,
              "expect": item.expect, "force": self.force}
        if rec and rec[HASH] == digest and not self.force:
            op["expect"] = [rec[KIND], rec[RSIZE], rec[RMTIME], rec[HASH]]
        answer = (await agent.call("push", root, [op]))[0]
        self.accept(item, digest, answer)

    async def preview(self, sends: list[PushItem], deletes: list[str]) -> PushResult:
        """What a push would do, writing nothing: conflicts come from the remote's state."""
        rels = [i.rel for i in sends] + deletes
        states = await self.sess.call("state", self.sess.target.remote_root, rels) if rels else []
        by_rel = dict(zip(rels, states))
        for item in sends:
            local_hash = await asyncio.to_thread(
                lambda: link_hash(item.entry.target or "") if item.entry.kind == "l" else file_hash(self.proj.root / item.rel))
            rec = self.records.data.get(item.rel)
            if rec and rec[HASH] == local_hash and not self.force:
                continue
            remote = by_rel.get(item.rel)
            if not self.force and remote_conflict(remote, item.expect, local_hash):
                self.result.conflicts.append({"path": item.rel, "reason": remote_conflict(remote, item.expect, local_hash)})
            else:
                self.result.send.append(item.rel)
                self.result.bytes += item.entry.size
        for rel in deletes:
            reason = remote_conflict(by_rel.get(rel), self.records.expect(rel), None)
            if reason and not self.force:
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
                     + " — raise sync.max_file_size in .remote-dev.toml to push them, or add them to sync.exclude")
    return "; ".join(parts), level


def human(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} GB"


async def do_push(engine: Engine, proj: Project, paths: list[str] | None, force: bool = False,
                  dry_run: bool = False, quiet: bool = False) -> dict[str, Any]:
    sess = proj.session()
    lock = proj.extras.setdefault("push_lock", asyncio.Lock())
    async with lock:
        t0 = time.perf_counter()
        pusher = Pusher(engine, proj, sess, force)
        try:
            res = await pusher.run(paths, dry_run)
        except ConnectError as e:
            done = pusher.result.files
            raise RemoteDevError(f"push to {sess.target.host} interrupted after {done} files: {e.message}. "
                                 f"Nothing half-written is left; :RemotePush again completes it.") from None
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


@action
async def push(engine: Engine, ctx: dict[str, Any], paths: list[str] | None = None, force: bool = False,
               dry_run: bool = False) -> dict[str, Any]:
    proj = engine.project(ctx)
    return await do_push(engine, proj, rel_paths(proj, paths, ctx.get("cwd")), force, dry_run)


@action
async def save(engine: Engine, ctx: dict[str, Any]) -> dict[str, Any] | None:
    """BufWritePost: push that one file when sync.push_on_save is on.  Saves that come
    while a push is under way coalesce into the next push, which reads the newest content;
    a failing remote is reported once until a push works again."""
    proj = engine.project(ctx)
    if not proj.config.sync.push_on_save or not ctx.get("file"):
        return None
    rels = rel_paths(proj, [ctx["file"]], None) or []
    pending: set[str] = proj.extras.setdefault("save_pending", set())
    pending.update(rels)
    if proj.extras.get("save_running"):
        return {"queued": True}
    proj.extras["save_running"] = True
    result = None
    try:
        while pending:
            batch = sorted(pending)
            pending.clear()
            try:
                result = await do_push(engine, proj, batch, quiet=True)
                if proj.extras.pop("save_error", None):
                    engine.message(f"push on save to {proj.target.host} works again", "info")
            except RemoteDevError as e:
                if proj.extras.get("save_error") != e.message:
                    proj.extras["save_error"] = e.message
                    engine.message(f"push on save failed: {e.message}", "error")
                    engine.emit("RemoteDevError", {"message": e.message})
    finally:
        proj.extras["save_running"] = False
    return result


# --------------------------------------------------------------------------- pull


async def do_pull(engine: Engine, proj: Project, paths: list[str] | None, force: bool,
                  modified: set[str]) -> dict[str, Any]:
    sess = proj.session()
    records = records_for(proj, sess)
    root = sess.target.remote_root
    folders = paths if paths is not None else list(proj.config.sync.pull)
    if not folders:
        raise RemoteDevError(f"{proj.config.file}: sync.pull is empty; name folders to pull, "
                             f"e.g. pull = [\"results/\"], or give paths to :RemotePull")
    t0 = time.perf_counter()
    known = {rel: [rec[KIND], rec[RSIZE], rec[RMTIME]] for rel, rec in records.data.items()}
    remote = await sess.call("list", root, [f.rstrip("/") for f in folders], known)
    res = PushResult()
    pulled: list[str] = []
    agent = await sess.ensure()
    try:
        for rel, (kind, size, mtime, digest, mode, target) in sorted(remote.items()):
            rec = records.data.get(rel)
            if rec and rec[KIND] == kind and rec[RSIZE] == size and rec[RMTIME] == mtime:
                continue  # unchanged on the remote since the last sync
            if digest is None:
                digest = rec[HASH] if rec else None
            local = proj.root / rel
            if str(local) in modified:
                res.conflicts.append({"path": rel, "reason": "open in Neovim with unsaved changes"})
                continue
            cur = lstat_entry(local)
            if cur is not None and not force:
                same_stat = rec and rec[KIND] == cur.kind and rec[LSIZE] == cur.size and rec[LMTIME] == cur.mtime_ns
                if not same_stat:
                    local_hash = await asyncio.to_thread(
                        lambda: link_hash(cur.target or "") if cur.kind == "l" else file_hash(local))
                    if local_hash != digest and not (rec and rec[HASH] == local_hash):
                        why = "changed locally since the last sync" if rec else "exists locally and differs"
                        res.conflicts.append({"path": rel, "reason": why})
                        continue
            if kind == "l":
                await asyncio.to_thread(write_link_atomic, local, target)
            else:
                data = bytearray()
                while len(data) < size:
                    block = await agent.call("read", root, rel, len(data), min(4 << 20, size - len(data)))
                    if not block:
                        break
                    data += block
                await asyncio.to_thread(write_file_atomic, local, bytes(data), mode)
                digest = blake(bytes(data))
            st = lstat_entry(local)
            assert st is not None
            records.data[rel] = [kind, st.size, st.mtime_ns, digest, size, mtime]
            res.files += 1
            res.bytes += size
            pulled.append(str(local))
    except ConnectError as e:
        raise RemoteDevError(f"pull from {sess.target.host} interrupted after {res.files} files: {e.message}") from None
    finally:
        await asyncio.to_thread(records.save)
    data = done_payload(proj, sess, res, (time.perf_counter() - t0) * 1000)
    data["pulled"] = pulled
    engine.emit("RemoteDevPullDone", data)
    text, level = summarize("pull", data, proj.config.sync.max_file_size)
    engine.message(text, level)
    return data


def write_file_atomic(path: Path, data: bytes, mode: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.rdtmp-{os.getpid()}"
    try:
        with open(tmp, "wb") as f:
            f.write(data)
        os.chmod(tmp, mode & 0o7777)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_link_atomic(path: Path, target: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.rdtmp-{os.getpid()}"
    tmp.unlink(missing_ok=True)
    os.symlink(target, tmp)
    os.replace(tmp, path)


@action
async def pull(engine: Engine, ctx: dict[str, Any], paths: list[str] | None = None, force: bool = False,
               modified: list[str] | None = None) -> dict[str, Any]:
    proj = engine.project(ctx)
    return await do_pull(engine, proj, rel_paths(proj, paths, ctx.get("cwd")), force, set(modified or []))
