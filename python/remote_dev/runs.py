"""Runs: detached on the remote, followed from a byte offset, stopped as a whole tree.

The agent starts each run under a supervisor that outlives the SSH connection; output goes
to a log file on the remote.  Following a run is a long poll from an offset, so after a
reconnect (or in a new Neovim) nothing is lost or repeated.
"""

from __future__ import annotations

import asyncio
import collections
import os
import posixpath
import secrets
import shlex
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any

from . import tracebacks
from .actions import action, publish_status
from .engine import Engine, Project, TargetSession
from .errors import ConnectError, RemoteDevError
from .runners import runner_for
from .sync import do_push
from .termtext import TerminalText

READ_BYTES = 1 << 20
READ_AHEAD = 3               # reads in flight while a run's output is ahead of us
LONG_POLL = 10.0
TAIL_LINES = 5000            # lines kept host-side for the quickfix list
UPDATE_EVERY = 0.05          # seconds between output updates sent to Neovim
MAX_LINES_PER_UPDATE = 10000
LOG_FETCH_LIMIT = 64 << 20   # :RemoteLog fetches at most this much (the tail)
LIVE = ("starting", "running", "pending")


@dataclass
class RunRecord:
    id: str
    target: str
    cmd: str
    root: str
    runner: str
    created: float
    state: str = "starting"
    code: int | None = None
    ended: float | None = None
    offset: int = 0
    exec_cmd: str = ""             # what runs on the remote (cmd, or cmd under debugpy)
    detail: str = ""               # runner state beyond running/exited (Slurm queue state)
    meta: dict[str, Any] = field(default_factory=dict)
    tail: collections.deque[str] = field(default_factory=lambda: collections.deque(maxlen=TAIL_LINES))
    follower: asyncio.Task[None] | None = None
    text: TerminalText = field(default_factory=TerminalText)
    quickfix: list[dict[str, Any]] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        return {
            "id": self.id, "target": self.target, "cmd": self.cmd, "state": self.state, "code": self.code,
            "created": self.created, "ended": self.ended, "runner": self.runner, "detail": self.detail,
            "duration": round((self.ended or time.time()) - self.created, 2), "job": self.meta.get("job"),
        }


def new_run_id() -> str:
    return time.strftime("%m%d-%H%M%S") + "-" + secrets.token_hex(2)


def runs_of(proj: Project) -> dict[str, RunRecord]:
    return proj.extras.setdefault("runs", {})


def expand_command(proj: Project, sess: TargetSession, cmd: str | None, file: str | None) -> str:
    template = cmd or proj.config.run.command
    rel = ""
    if file:
        try:
            rel = sess.mapping().rel(file)
        except ValueError:
            rel = ""
    if "{file}" in template and not rel:
        raise RemoteDevError(f"{proj.config.file}: run.command uses {{file}} but the current buffer is not a "
                             f"file of the project; open one or give a command: :RemoteRun python script.py")
    return template.replace("{file}", shlex.quote(rel) if rel else "").replace(
        "{python}", sess.target.python).replace("{root}", sess.remote_root or sess.target.remote_root)


async def start_run(engine: Engine, ctx: dict[str, Any], cmd: str | None, debug: bool = False) -> RunRecord:
    proj = engine.project(ctx)
    sess = proj.session()
    command = expand_command(proj, sess, cmd, ctx.get("file"))
    await do_push(engine, proj, None, quiet=True)
    runner = runner_for(sess.target)
    run = RunRecord(id=new_run_id(), target=sess.target.name, cmd=command, root=str(proj.root),
                    runner=sess.target.runner, created=time.time(), exec_cmd=command)
    dbg = None
    if debug:
        from .debug import debug_command, prepare  # noqa: PLC0415

        dbg = await prepare(engine, proj, sess)
        launcher = None
        if dbg.get("launch"):
            from .agent import agent_path_remote  # noqa: PLC0415

            ready = posixpath.join(sess.hello["cache_dir"], "runs", run.id, "debug.json")
            launcher = [agent_path_remote(sess.hello["cache_dir"]), "debug-launch", ready]
        run.exec_cmd = debug_command(command, sess.target.python, dbg["listen"], dbg["port"], dbg["pythonpath"],
                                     launcher)
        run.meta["debug"] = dbg
    spec = await runner.spec(engine, proj, sess, run, dbg)
    spec.update(id=run.id, root=sess.target.remote_root)
    spec.setdefault("meta", {}).update(target=sess.target.name, display=command, runner=sess.target.runner,
                                       local_root=str(proj.root))
    info = await sess.call("run_start", spec, retry=False)
    run.meta.update({k: v for k, v in (info.get("meta") or {}).items() if k not in run.meta})
    runs_of(proj)[run.id] = run
    update_from_info(run, info)
    engine.emit("RemoteDevRunStart", {"id": run.id, "target": run.target, "cmd": command})
    engine.report("run_state", {**run.summary(), "new": True})
    run.follower = asyncio.get_running_loop().create_task(follow(engine, proj, sess, run))
    publish_status(engine, proj)
    return run


def update_from_info(run: RunRecord, info: dict[str, Any]) -> None:
    state = info.get("state", run.state)
    run.state = state
    if state in ("exited", "stopped", "lost"):
        run.code = info.get("code") if info.get("code") is not None else (137 if state == "stopped" else -1)
        if state == "stopped" and run.code == 0:
            run.code = 130
        run.ended = info.get("ended") or time.time()
    run.created = info.get("created") or run.created
    run.detail = info.get("detail") or run.detail
    if info.get("job"):
        run.meta["job"] = info["job"]


async def follow(engine: Engine, proj: Project, sess: TargetSession, run: RunRecord) -> None:
    """Stream a run's output from run.offset until it ends; survives reconnects.

    Output goes to Neovim at most every UPDATE_EVERY seconds, with at most
    MAX_LINES_PER_UPDATE lines (the newest; the others are counted as dropped).  Chunks
    read between two updates are held as bytes and split into lines when the update goes
    out; a chunk whose lines cannot be among the newest ones of that update (and so
    neither of the host-side tail) is stepped over without building its lines."""
    runner = runner_for(sess.target)
    keep = max(MAX_LINES_PER_UPDATE, TAIL_LINES)
    held: collections.deque[tuple[bytes, int]] = collections.deque()  # (chunk, its newlines) since the last update
    held_nl = 0
    dropped = 0
    last_sent = 0.0
    last_detail = run.detail
    # Reads sent ahead, for output already on the remote (a run printing fast): the remote
    # reads and sends the next chunks while this side handles one.
    ahead: collections.deque[asyncio.Future[Any]] = collections.deque()
    next_ahead = 0               # offset of the next read to send ahead

    def take_lines() -> list[str]:
        """The held chunks as lines (into the tail); the newest MAX_LINES_PER_UPDATE of them."""
        nonlocal held_nl, dropped
        if not held:
            return []
        lines = run.text.feed(b"".join(chunk for chunk, _ in held))
        held.clear()
        held_nl = 0
        run.tail.extend(lines)
        if len(lines) > MAX_LINES_PER_UPDATE:
            dropped += len(lines) - MAX_LINES_PER_UPDATE
            lines = lines[-MAX_LINES_PER_UPDATE:]
        return lines

    try:
        while True:
            try:
                if ahead:
                    res = await ahead.popleft()
                elif held:
                    # Keep reading while an update is held back: return early only with a
                    # full chunk, else when the next update is due.
                    left = max(0.0, UPDATE_EVERY - (time.monotonic() - last_sent))
                    res = await sess.call("run_read", run.id, run.offset, READ_BYTES, left, READ_BYTES)
                else:
                    res = await sess.call("run_read", run.id, run.offset, READ_BYTES, LONG_POLL)
            except ConnectError as e:
                cancel_all(ahead)
                engine.report("run_state", {**run.summary(), "detail": f"reconnecting: {e.message}"})
                await asyncio.sleep(2)
                continue
            except RemoteDevError as e:
                engine.message(f"run {run.id}: {e.message}", "error")
                run.state = "lost"
                break
            data = res["data"]
            if data and res["offset"] - len(data) != run.offset:  # never: reads ahead go in order
                cancel_all(ahead)
                continue
            if data:
                run.offset = res["offset"]
                if not ahead:
                    next_ahead = run.offset
                # only where the remote has output, so every read ahead but the last gets a
                # whole chunk and the next one's offset is known
                while len(ahead) < READ_AHEAD and next_ahead < res["size"] and next_ahead >= run.offset:
                    ahead.append(asyncio.ensure_future(sess.call("run_read", run.id, next_ahead, READ_BYTES, 0)))
                    next_ahead = next_ahead + READ_BYTES if next_ahead + READ_BYTES <= res["size"] else -1
                nl = res.get("newlines")
                if nl is None:
                    nl = data.count(b"\n")
                held.append((data, nl))
                held_nl += nl
                # the chunks after the oldest complete more than `keep` lines: none of the
                # oldest one's lines (nor the one it leaves unfinished) is shown or kept
                while len(held) > 1 and held_nl - held[0][1] > keep:
                    chunk, n = held.popleft()
                    held_nl -= n
                    dropped += run.text.skip(chunk, n)
            info = await runner.refresh(engine, sess, run, res["info"])
            update_from_info(run, info)
            done = run.state not in LIVE and run.offset >= res["size"]
            now = time.monotonic()
            if done or run.detail != last_detail or (held and now - last_sent >= UPDATE_EVERY):
                lines = take_lines()
                engine.report("run_output", {"id": run.id, "lines": lines, "partial": run.text.current(),
                                             "dropped": dropped})
                if run.detail != last_detail:
                    engine.report("run_state", run.summary())
                    last_detail = run.detail
                dropped = 0
                last_sent = now
            if done:
                break
    finally:
        cancel_all(ahead)
    rest = take_lines()           # read but not shown yet (the run was lost); in the tail already
    final = run.text.feed(b"", final=True)
    run.tail.extend(final)
    if rest or final:
        engine.report("run_output", {"id": run.id, "lines": rest + final, "partial": "", "dropped": dropped})
    finish(engine, proj, sess, run)


def cancel_all(futures: collections.deque[asyncio.Future[Any]]) -> None:
    while futures:
        futures.popleft().cancel()


def finish(engine: Engine, proj: Project, sess: TargetSession, run: RunRecord) -> None:
    fwd = run.meta.pop("forward", None)
    if fwd is not None:
        from .forwards import forwards_of  # noqa: PLC0415

        forwards_of(sess).close(fwd)
        engine.report("debug_end", {"id": run.id})
    mapping = sess.mapping()
    runner = runner_for(sess.target)
    text = "\n".join(run.tail)
    run.quickfix = runner.extra_quickfix(proj, sess, text) + tracebacks.parse(text, mapping.to_local)
    if run.code:
        problem = runner.diagnose(proj, sess, text)
        if problem:
            engine.message(problem, "error")
            engine.emit("RemoteDevError", {"message": problem})
    ms = round(((run.ended or time.time()) - run.created) * 1000)
    engine.report("run_state", {**run.summary(), "quickfix": run.quickfix, "final": True})
    engine.emit("RemoteDevRunExit", {"id": run.id, "code": run.code, "ms": ms, "target": run.target})
    publish_status(engine, proj)


def pick_run(proj: Project, run_id: str | None, live_only: bool = False) -> RunRecord | None:
    runs = runs_of(proj)
    if run_id:
        return runs.get(run_id)
    candidates = [r for r in runs.values() if r.target == proj.target_name and (r.state in LIVE or not live_only)]
    return max(candidates, key=lambda r: r.created) if candidates else None


@action
async def run(engine: Engine, ctx: dict[str, Any], cmd: str | None = None) -> dict[str, Any]:
    rec = await start_run(engine, ctx, cmd or None)
    return rec.summary()


@action
async def stop(engine: Engine, ctx: dict[str, Any], id: str | None = None) -> dict[str, Any]:  # noqa: A002
    proj = engine.project(ctx)
    sess = proj.session()
    rec = pick_run(proj, id, live_only=True)
    run_id = rec.id if rec else id
    if not run_id:
        raise RemoteDevError(f"no live run on {sess.target.name} to stop (:RemoteRuns lists them)")
    info = await sess.call("run_stop", run_id, proj.config.run.stop_grace)
    if rec is None:
        return info
    update_from_info(rec, info)
    engine.message(f"run {run_id} stopped", "info")
    return rec.summary()


@action
async def stop_all(engine: Engine, ctx: dict[str, Any]) -> int:
    """Stop the live runs this Neovim started or followed (stop_runs_on_exit)."""
    stopped = 0
    for proj in list(engine.projects.values()):
        for rec in list(runs_of(proj).values()):
            if rec.state in LIVE:
                sess = proj.session(rec.target)
                await sess.call("run_stop", rec.id, proj.config.run.stop_grace)
                stopped += 1
    return stopped


@action
async def runs(engine: Engine, ctx: dict[str, Any]) -> list[dict[str, Any]]:
    """The target's runs, also those started by earlier Neovim sessions."""
    proj = engine.project(ctx)
    sess = proj.session()
    remote = await sess.call("run_list", sess.target.remote_root)
    known = runs_of(proj)
    out = []
    for info in remote:
        rec = known.get(info["id"])
        if rec is None:
            meta = info.get("meta") or {}
            rec = RunRecord(id=info["id"], target=meta.get("target", sess.target.name),
                            cmd=meta.get("display") or info.get("cmd", ""), root=str(proj.root),
                            runner=meta.get("runner", "process"), created=info.get("created") or 0, meta=meta)
            update_from_info(rec, info)
        out.append({**rec.summary(), "following": rec.follower is not None and not rec.follower.done()})
    return sorted(out, key=lambda r: r["created"])


@action
async def attach(engine: Engine, ctx: dict[str, Any], id: str) -> dict[str, Any]:  # noqa: A002
    """Follow a run (from its first byte) into a run buffer, e.g. one started before."""
    proj = engine.project(ctx)
    sess = proj.session()
    rec = runs_of(proj).get(id)
    if rec is not None and rec.follower is not None and not rec.follower.done():
        engine.report("run_state", {**rec.summary(), "show": True})
        return rec.summary()
    info = await sess.call("run_info", id)
    meta = info.get("meta") or {}
    rec = RunRecord(id=id, target=meta.get("target", sess.target.name), cmd=meta.get("display") or info.get("cmd", ""),
                    root=str(proj.root), runner=meta.get("runner", "process"), created=info.get("created") or 0,
                    meta=meta)
    update_from_info(rec, info)
    runs_of(proj)[id] = rec
    engine.report("run_state", {**rec.summary(), "new": True})
    rec.follower = asyncio.get_running_loop().create_task(follow(engine, proj, sess, rec))
    return rec.summary()


@action
async def log_(engine: Engine, ctx: dict[str, Any], id: str | None = None) -> dict[str, Any]:  # noqa: A002
    """A run's full output (ANSI stripped, progress bars collapsed) in a local file."""
    proj = engine.project(ctx)
    sess = proj.session()
    rec = pick_run(proj, id)
    run_id = id or (rec.id if rec else None)
    if not run_id:
        raise RemoteDevError(f"no run on {sess.target.name} yet (:RemoteRuns lists them)")
    info = await sess.call("run_info", run_id)
    size = info.get("size", 0)
    start = max(0, size - LOG_FETCH_LIMIT)
    chunks = []
    offset = start
    while offset < size:
        res = await sess.call("run_read", run_id, offset, 4 << 20, 0)
        if not res["data"]:
            break
        chunks.append(res["data"])
        offset = res["offset"]
    text = TerminalText()
    lines = text.feed(b"".join(chunks), final=True)
    header = [f"# remote_dev run {run_id}: {info.get('cmd')}  ({info.get('state')}"
              + (f", exit {info.get('code')}" if info.get("code") is not None else "") + ")"]
    if start:
        header.append(f"# first {start} bytes left out; the whole log is {info['log']} on {sess.target.host}")
    fd, path = tempfile.mkstemp(prefix=f"remote-dev-{run_id}-", suffix=".log")
    with os.fdopen(fd, "w") as f:
        f.write("\n".join(header + lines) + "\n")
    return {"id": run_id, "path": path, "remote_log": info["log"], "lines": len(lines)}


@action
async def quickfix(engine: Engine, ctx: dict[str, Any], id: str | None = None) -> dict[str, Any]:  # noqa: A002
    """Quickfix entries of a run on demand (also while it runs)."""
    proj = engine.project(ctx)
    sess = proj.session()
    rec = pick_run(proj, id)
    if rec is None:
        raise RemoteDevError("no run to read locations from")
    text = "\n".join(rec.tail)
    entries = runner_for(sess.target).extra_quickfix(proj, sess, text) + tracebacks.parse(text, sess.mapping().to_local)
    return {"id": rec.id, "cmd": rec.cmd, "quickfix": entries}

