""":RemoteEnv: a local, read-only mirror of what the target's python imports from outside
remote_root, for language servers, quickfix and nvim-dap.

One refresh is: probe (the agent runs the target's python for its sys.path and a stamp of
it; one round trip) -> when the stamp differs from the mirror's, or when asked to: list
the sources under those folders -> read what differs from the manifest in batches
pipelined like a pull's blocks, each compressed for the link -> write the files, delete
what went, save the manifest.  The mirror lives in the project's state folder, one local
folder per sys.path entry (``env/<target>/<name>-<hash>``); ``manifest.json`` beside them
says what each holds.  Every refresh fires ``RemoteDevEnv`` {target, paths, files, bytes}
and hands the (remote, local) folders to the session's path mapping.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import posixpath
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .agent.protocol import decompress, unpack_files
from .engine import Engine, Project, TargetSession
from .errors import RemoteDevError
from .envsource import AgentSource, ContainerSource, source_of
from .status import publish_status
from .sync.wire import LinkMeter

log = logging.getLogger("remote_dev")

BATCH = 4 << 20          # raw bytes asked for per read request
WINDOW = 24 << 20        # raw bytes of read requests in flight
MANIFEST = "manifest.json"
Source = AgentSource | ContainerSource


@dataclass
class EnvState:
    """Per session: the refresh in progress (one at a time) and the last event's data."""
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    last: dict[str, Any] | None = None


def mirror_dir(proj: Project, target: str) -> Path:
    return proj.state_dir() / "env" / target


def local_name(remote: str) -> str:
    """The local folder of a remote sys.path folder: its name and a hash of its path."""
    digest = hashlib.sha1(remote.encode("utf-8", "surrogateescape")).hexdigest()[:8]
    return f"{posixpath.basename(remote.rstrip('/')) or 'root'}-{digest}"


def load_manifest(folder: Path) -> dict[str, Any]:
    try:
        data = json.loads((folder / MANIFEST).read_text())
        return data if isinstance(data, dict) and data.get("version") == 1 else {}
    except (OSError, ValueError):
        return {}


def save_manifest(folder: Path, manifest: dict[str, Any]) -> None:
    tmp = folder / (MANIFEST + ".tmp")
    tmp.write_text(json.dumps(manifest))
    tmp.replace(folder / MANIFEST)


def mirrored_roots(probe: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(remote folder, local folder holding its files, local import folder) per mirrored
    folder, relative to the mirror: the sys.path folders, then each package an editable
    install maps by an import hook, inside an import folder of its own."""
    out = [(remote, local_name(remote), local_name(remote)) for remote in probe["paths"]]
    for name, remote in probe.get("editable") or ():
        top = "editable-" + local_name(remote)
        out.append((remote, f"{top}/{name}", top))
    return out


def libraries_of(folder: Path, manifest: dict[str, Any]) -> tuple[tuple[str, str], ...]:
    """(remote folder, local folder) of what the mirror holds, in sys.path order."""
    roots = manifest.get("roots") or {}
    return tuple((remote, str(folder / roots[remote]["dir"])) for remote in manifest.get("order") or ()
                 if remote in roots)


def event_data(sess: TargetSession, folder: Path, manifest: dict[str, Any], **extra: Any) -> dict[str, Any]:
    roots = manifest.get("roots") or {}
    files = sum(len(r["files"]) for r in roots.values())
    size = sum(f[0] for r in roots.values() for f in r["files"].values())
    order = [remote for remote in manifest.get("order") or () if remote in roots]
    return {"target": sess.target.name, "root": str(sess.project.root),
            "paths": [str(folder / roots[r].get("import", roots[r]["dir"])) for r in order],
            "remotes": order, "files": files, "bytes": size, "python": manifest.get("python"), **extra}


async def refresh(engine: Engine, proj: Project, sess: TargetSession, force: bool = False) -> dict[str, Any]:
    """Bring the mirror up to date (a full listing when force, else only when the probe's
    stamp changed); fires RemoteDevEnv and returns its data."""
    state = sess.state(EnvState)
    source = source_of(sess, proj)
    async with state.lock:
        t0 = time.perf_counter()
        folder = mirror_dir(proj, sess.target.name)
        manifest = load_manifest(folder)
        probe = await source.probe()
        unchanged = (not force and manifest.get("stamp") == probe["stamp"]
                     and manifest.get("order") == [r for r, _, _ in mirrored_roots(probe)])
        fetched = 0
        if not unchanged:
            fetched = await _mirror(sess, source, folder, manifest, probe)
        sess.library_roots = libraries_of(folder, manifest)
        ms = int((time.perf_counter() - t0) * 1000)
        data = event_data(sess, folder, manifest, changed=fetched, ms=ms)
        state.last = {**data, "time": time.time()}
        log.info("env %s: %d folders, %d files, %d bytes; %d fetched in %d ms", sess.target.name,
                 len(data["paths"]), data["files"], data["bytes"], fetched, ms)
        engine.emit("RemoteDevEnv", data)
        publish_status(engine, proj)
        return data


async def _mirror(sess: TargetSession, source: Source, folder: Path, manifest: dict[str, Any],
                  probe: dict[str, Any]) -> int:
    """List, fetch what differs, delete what went; manifest updated in place and saved."""
    mirrored = mirrored_roots(probe)
    order = [remote for remote, _, _ in mirrored]
    listing = await source.list(order)
    old_roots: dict[str, Any] = manifest.get("roots") or {}
    roots: dict[str, Any] = {}
    todo: list[tuple[str, str, int]] = []     # (remote folder, rel, size)
    for (remote, local, top), files in zip(mirrored, listing):
        have = (old_roots.get(remote) or {}).get("files") or {}
        if (old_roots.get(remote) or {}).get("dir") != local:
            have = {}
        entry = roots[remote] = {"dir": local, "import": top, "files": {}}
        for rel, size, mtime in files:
            if have.get(rel) == [size, mtime] and (folder / entry["dir"] / rel).is_file():
                entry["files"][rel] = [size, mtime]
            else:
                todo.append((remote, rel, size))
    folder.mkdir(parents=True, exist_ok=True)
    os.chmod(folder, 0o700)
    # What is no longer listed goes first (a file may become a folder of the same name).
    await asyncio.to_thread(_delete_gone, folder, old_roots, roots, {(r, rel) for r, rel, _ in todo})
    fetched = await _fetch(sess, source, folder, roots, todo)
    for entry in roots.values():       # an empty folder too: every path given out exists
        (folder / entry["dir"]).mkdir(parents=True, exist_ok=True)
    manifest.clear()
    manifest.update({"version": 1, "stamp": probe["stamp"], "order": order, "python": probe.get("version"),
                     "prefix": probe.get("prefix"), "roots": roots})
    await asyncio.to_thread(save_manifest, folder, manifest)
    return fetched


def _delete_gone(folder: Path, old_roots: dict[str, Any], roots: dict[str, Any], coming: set[tuple[str, str]]) -> None:
    for remote, old in old_roots.items():
        if remote not in roots or roots[remote]["dir"] != old["dir"]:
            shutil.rmtree(folder / old.get("import", old["dir"]), ignore_errors=True)
            continue
        keep = roots[remote]["files"]
        emptied: set[Path] = set()
        for rel in old.get("files") or {}:
            if rel not in keep and (remote, rel) not in coming:
                path = folder / old["dir"] / rel
                try:
                    path.unlink()
                except OSError:
                    continue
                emptied.add(path.parent)
        top = folder / old["dir"]
        for d in sorted(emptied, key=lambda p: len(p.parts), reverse=True):
            while d != top and d.is_relative_to(top):
                try:
                    d.rmdir()          # only when empty
                except OSError:
                    break
                d = d.parent


def _batches(todo: list[tuple[str, str, int]], names_max: int) -> list[tuple[str, list[str], int]]:
    """Read requests of up to BATCH bytes (and names_max bytes of names), files of one
    folder each, sorted by suffix so that like compresses with like."""
    out: list[tuple[str, list[str], int]] = []
    by_root: dict[str, list[tuple[str, int]]] = {}
    for remote, rel, size in todo:
        by_root.setdefault(remote, []).append((rel, size))
    for remote, files in by_root.items():
        files.sort(key=lambda f: (os.path.splitext(f[0])[1], f[0]))
        cur: list[str] = []
        cur_size = names = 0
        for rel, size in files:
            if cur and (cur_size + size > BATCH or names + len(rel) + 4 > names_max):
                out.append((remote, cur, cur_size))
                cur, cur_size, names = [], 0, 0
            cur.append(rel)
            cur_size += size
            names += len(rel.encode("utf-8", "surrogateescape")) + 4
        if cur:
            out.append((remote, cur, cur_size))
    return out


async def _fetch(sess: TargetSession, source: Source, folder: Path, roots: dict[str, Any],
                 todo: list[tuple[str, str, int]]) -> int:
    """Read the batches with up to WINDOW raw bytes in flight; write each as it comes."""
    read, drain = await source.reader()
    meter = sess.state(LinkMeter)
    if meter.rtt_ms is None:
        meter.rtt_ms = sess.rtt_ms
    link = meter.link()
    formats = sess.hello.get("codecs")
    queue = _batches(todo, source.batch_limit())
    inflight: list[tuple[str, int, asyncio.Future[Any]]] = []
    in_window = 0
    fetched = 0
    while queue or inflight:
        while queue and (not inflight or in_window + queue[0][2] <= WINDOW):
            remote, rels, size = queue.pop(0)
            inflight.append((remote, size, read(remote, rels, link, formats)))
            in_window += size
        await drain()
        remote, size, fut = inflight.pop(0)
        try:
            fmt, blob = await fut
        except RemoteDevError:
            for _, _, other in inflight:
                other.cancel()
            raise
        in_window -= size
        entry = roots[remote]
        fetched += await asyncio.to_thread(_write_batch, folder / entry["dir"], entry["files"], fmt, blob)
    return fetched


def _write_batch(local: Path, files: dict[str, list[int]], fmt: str, blob: bytes) -> int:
    n = 0
    for rel, size, mtime, data in unpack_files(decompress(fmt, blob)):
        if data is None:
            continue
        if rel.startswith("/") or ".." in rel.split("/"):
            raise RemoteDevError(f"{rel}: outside the mirror folder {local}", kind="env")
        path = local / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.name}.rd-tmp{os.getpid()}")   # two Neovims on one project: their own
        tmp.write_bytes(data)
        os.chmod(tmp, 0o444)
        tmp.replace(path)
        files[rel] = [size, mtime]
        n += 1
    return n


def status_part(proj: Project) -> dict[str, Any] | None:
    """The mirror as :RemoteStatus shows it: the last refresh of the current target."""
    last = proj.session().state(EnvState).last
    return None if last is None else {k: last[k] for k in ("files", "bytes", "paths", "time")}


def status_lines(s: dict[str, Any]) -> list[str]:
    e = s.get("env")
    if not e:
        return ["env         not mirrored in this session (:RemoteEnv)"]
    return [f"env         {e['files']} files, {e['bytes'] / 1e6:.1f} MB in {len(e['paths'])} folders, "
            f"checked {time.strftime('%H:%M:%S', time.localtime(e['time']))} (:RemoteEnv)"]
