"""Runs: detached on the remote, followed from a byte offset, stopped as a whole tree.

The agent starts each run under a supervisor that outlives the SSH connection; output goes
to a log file on the remote.  Following a run is a long poll from an offset, so after a
reconnect (or in a new Neovim) nothing is lost or repeated.

Runs know nothing of debugging: a feature that needs more than the plain command hands
``start_run`` a ``Launch`` (what to execute, mounts, published ports) and adds
``on_finish`` hooks to the record.
"""

from __future__ import annotations

import asyncio
import collections
import secrets
import shlex
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from . import tracebacks
from .agent.protocol import ENDED_STATES, LIVE_STATES as LIVE, LOST, RUN_OUTPUT, STARTING, STOPPED, is_live, \
    shell_word
from .engine import Engine, Project, TargetSession, log
from .errors import ConnectError, RemoteDevError
from .rpc import Followup
from .runners import Launch, path_mapping, runner_of
from .status import publish_status
from .termtext import TerminalText

READ_BYTES = 1 << 20
READ_AHEAD = 3               # reads in flight while a run's output is ahead of us
LONG_POLL = 10.0
TAIL_LINES = 5000            # lines kept host-side for the quickfix list
UPDATE_EVERY = 0.05          # seconds between output updates sent to Neovim
MAX_LINES_PER_UPDATE = 10000
LOG_FETCH_LIMIT = 64 << 20   # :RemoteLog fetches at most this much (the tail)
FIRST_OUTPUT = [READ_BYTES, LONG_POLL]   # a run's first read, made by the agent unasked after the start


@dataclass
class RunRecord:
    id: str
    target: str
    cmd: str
    root: str
    runner: str
    created: float
    state: str = STARTING
    code: int | None = None
    ended: float | None = None
    offset: int = 0
    exec_cmd: str = ""             # what runs on the remote (cmd, or cmd wrapped by a Launch)
    detail: str = ""               # runner state beyond running/exited (Slurm queue state)
    meta: dict[str, Any] = field(default_factory=dict)
    tail: collections.deque[str] = field(default_factory=lambda: collections.deque(maxlen=TAIL_LINES))
    follower: asyncio.Task[None] | None = None
    text: TerminalText = field(default_factory=TerminalText)
    quickfix: list[dict[str, Any]] = field(default_factory=list)
    on_finish: list[Callable[["RunRecord"], None]] = field(default_factory=list)   # called once it ended
    lines_seen: int = 0            # lines of output made so far (the tail holds the newest of them)
    stopped_by: str = ""           # who stopped it (":RemoteStop", "dap terminate", ...), when stopped here
    stop_offset: int | None = None  # size of the output when the stop was asked for
    stop_line: int | None = None   # lines_seen at stop_offset: the output after it is the stop's doing

    @classmethod
    def from_info(cls, info: dict[str, Any], proj: Project, default_target: str) -> "RunRecord":
        """A record for a run known only from the agent (started by an earlier Neovim)."""
        meta = info.get("meta") or {}
        rec = cls(id=info["id"], target=meta.get("target", default_target),
                  cmd=meta.get("display") or info.get("cmd", ""), root=str(proj.root),
                  runner=meta.get("runner", "process"), created=info.get("created") or 0, meta=meta)
        update_from_info(rec, info)
        return rec

    def summary(self) -> dict[str, Any]:
        return {
            "id": self.id, "target": self.target, "cmd": self.cmd, "state": self.state, "live": is_live(self.state),
            "code": self.code,
            "created": self.created, "ended": self.ended, "runner": self.runner, "detail": self.detail,
            "duration": round((self.ended or time.time()) - self.created, 2), "job": self.meta.get("job"),
            "root": self.root, "stopped_by": self.stopped_by if self.state == STOPPED else "",
            "step": self.meta.get("step"),
        }

    def program_lines(self) -> list[str]:
        """The tail of the output the program printed on its own: without what it printed
        after a stop was asked for (the KeyboardInterrupt traceback the stop caused)."""
        lines = list(self.tail)
        if self.stop_line is not None:
            after = self.lines_seen - self.stop_line
            lines = lines[:max(0, len(lines) - after)]
        return lines


def new_run_id() -> str:
    return time.strftime("%m%d-%H%M%S") + "-" + secrets.token_hex(2)


def expand_command(proj: Project, sess: TargetSession, cmd: str | None, file: str | None) -> str:
    template = cmd or proj.config.run.command
    rel = ""
    if file:
        try:
            rel = path_mapping(sess).rel(file)
        except ValueError:
            rel = ""
    if "{file}" in template and not rel:
        raise RemoteDevError(f"{proj.config.file}: run.command uses {{file}} but the current buffer is not a "
                             f"file of the project; open one or give a command: :RemoteRun python script.py")
    return template.replace("{file}", shlex.quote(rel) if rel else "").replace(
        "{python}", shell_word(sess.target.python)).replace("{root}", sess.remote_root or sess.target.remote_root)


@dataclass
class PreparedRun:
    """A run ready to start: its record and the agent's request.  A push with nothing to
    send makes the request with its remote check (sync.do_push's then); start_run makes
    it otherwise."""
    run: RunRecord
    request: Followup


async def prepare_run(proj: Project, sess: TargetSession, command: str, launch: Launch | None = None,
                      run_id: str | None = None,
                      on_finish: list[Callable[[RunRecord], None]] | None = None) -> PreparedRun:
    """The record and the run_start request of command (shown as such) on the target's
    runner; launch: what really runs, when a feature wraps the command.  The request asks
    for the first output unasked (FIRST_OUTPUT)."""
    launch = launch or Launch(command)
    run = RunRecord(id=run_id or new_run_id(), target=sess.target.name, cmd=command, root=str(proj.root),
                    runner=sess.target.runner, created=time.time(), exec_cmd=launch.command,
                    on_finish=list(on_finish or []))
    runner = runner_of(sess)
    if (launch.mounts or launch.publish) and not runner.honours_launch:
        raise RemoteDevError(f"targets.{sess.target.name}: runner = \"{runner.name}\" cannot mount folders or "
                             f"publish ports for this run")
    spec = await runner.spec(proj, sess, run.id, launch)
    spec.update(id=run.id, root=sess.target.remote_root)
    spec.setdefault("meta", {}).update(target=sess.target.name, display=command, runner=sess.target.runner,
                                       local_root=str(proj.root))
    return PreparedRun(run, Followup("run_start", [spec, FIRST_OUTPUT], note=(RUN_OUTPUT, run.id)))


async def start_run(engine: Engine, proj: Project, sess: TargetSession, command: str,
                    launch: Launch | None = None, run_id: str | None = None,
                    on_finish: list[Callable[[RunRecord], None]] | None = None,
                    prepared: PreparedRun | None = None) -> RunRecord:
    """Start command (see prepare_run; prepared: made already, its request perhaps made by
    the push before).  The tree is expected pushed already."""
    prepared = prepared or await prepare_run(proj, sess, command, launch, run_id, on_finish)
    run, req = prepared.run, prepared.request
    if req.outcome is not None:
        info = req.result()
    else:
        agent = await sess.ensure()
        req.notified = agent.expect(*req.note) if req.note else None
        try:
            info = await agent.call(req.method, *req.params)
        except BaseException:
            if req.note:
                agent.unexpect(*req.note)
            raise
    run.meta.update({k: v for k, v in (info.get("meta") or {}).items() if k not in run.meta})
    proj.runs[run.id] = run
    update_from_info(run, info)
    engine.emit("RemoteDevRunStart", {"id": run.id, "target": run.target, "cmd": command})
    engine.report("run_state", {**run.summary(), "new": True})
    run.follower = asyncio.get_running_loop().create_task(follow(engine, proj, sess, run, req.notified))
    publish_status(engine, proj)
    return run


def update_from_info(run: RunRecord, info: dict[str, Any]) -> None:
    state = info.get("state", run.state)
    run.state = state
    if state in ENDED_STATES:
        run.code = info.get("code") if info.get("code") is not None else (137 if state == STOPPED else -1)
        if state == STOPPED and run.code == 0:
            run.code = 130
        run.ended = info.get("ended") or time.time()
    run.created = info.get("created") or run.created
    run.detail = info.get("detail") or run.detail
    if info.get("job"):
        run.meta["job"] = info["job"]
    step = info.get("step")
    if step:   # a job step in a held allocation
        run.meta.update(job=str(step.get("job")), step=f"{step.get('job')}.{step.get('step')}", node=step.get("node"))


class OutputFollower:
    """Streams one run's output from run.offset until it ends; survives reconnects.

    Output goes to Neovim at most every UPDATE_EVERY seconds, with at most
    MAX_LINES_PER_UPDATE lines (the newest; the others are counted as dropped).  Chunks
    read between two updates are held as bytes and split into lines when the update goes
    out; a chunk whose lines cannot be among the newest ones of that update (and so
    neither of the host-side tail) is stepped over without building its lines.  While the
    remote has more output than one read returns, reads are sent ahead so the remote reads
    the next chunks while this side handles one."""

    def __init__(self, engine: Engine, sess: TargetSession, run: RunRecord,
                 first: asyncio.Future[Any] | None = None) -> None:
        self.engine = engine
        self.sess = sess
        self.run = run
        self.first = first           # the first read, made by the agent unasked (FIRST_OUTPUT)
        self.keep = max(MAX_LINES_PER_UPDATE, TAIL_LINES)
        self.held: collections.deque[tuple[bytes, int]] = collections.deque()  # (chunk, newlines)
        self.held_nl = 0
        self.dropped = 0
        self.last_sent = 0.0
        self.last_detail = run.detail
        self.ahead: collections.deque[asyncio.Future[Any]] = collections.deque()
        self.next_ahead = 0          # offset of the next read to send ahead

    def take_lines(self) -> list[str]:
        """The held chunks as lines (into the tail); the newest MAX_LINES_PER_UPDATE of them."""
        if not self.held:
            return []
        run = self.run
        data = b"".join(chunk for chunk, _ in self.held)
        self.held.clear()
        self.held_nl = 0
        cut = run.stop_offset
        if cut is not None and run.stop_line is None and cut < run.offset:
            # the stop was asked for within these bytes: count the lines before it
            start = run.offset - len(data)
            before = run.text.feed(data[:max(0, cut - start)])
            run.stop_line = run.lines_seen + len(before)
            lines = before + run.text.feed(data[max(0, cut - start):])
        else:
            lines = run.text.feed(data)
        run.lines_seen += len(lines)
        run.tail.extend(lines)
        if len(lines) > MAX_LINES_PER_UPDATE:
            self.dropped += len(lines) - MAX_LINES_PER_UPDATE
            lines = lines[-MAX_LINES_PER_UPDATE:]
        return lines

    async def read(self) -> dict[str, Any]:
        run = self.run
        if self.first is not None:
            first, self.first = self.first, None
            res = await first
            if res is not None and run.offset == 0:   # None: the agent could not read it
                return res  # type: ignore[no-any-return]
        if self.ahead:
            return await self.ahead.popleft()
        if self.held:
            # Keep reading while an update is held back: return early only with a full
            # chunk, else when the next update is due.
            left = max(0.0, UPDATE_EVERY - (time.monotonic() - self.last_sent))
            return await self.sess.call("run_read", run.id, run.offset, READ_BYTES, left, READ_BYTES)
        return await self.sess.call("run_read", run.id, run.offset, READ_BYTES, LONG_POLL)

    def hold(self, res: dict[str, Any]) -> None:
        """Take a chunk that continues at run.offset; send reads ahead where the remote has
        more (every read ahead but the last gets a whole chunk, so the next offset is known)."""
        run, data = self.run, res["data"]
        run.offset = res["offset"]
        if not self.ahead:
            self.next_ahead = run.offset
        while len(self.ahead) < READ_AHEAD and run.offset <= self.next_ahead < res["size"]:
            self.ahead.append(asyncio.ensure_future(self.sess.call("run_read", run.id, self.next_ahead,
                                                                   READ_BYTES, 0)))
            self.next_ahead = self.next_ahead + READ_BYTES if self.next_ahead + READ_BYTES <= res["size"] else -1
        nl = res.get("newlines")
        if nl is None:
            nl = data.count(b"\n")
        self.held.append((data, nl))
        self.held_nl += nl
        # the chunks after the oldest complete more than `keep` lines: none of the oldest
        # one's lines (nor the one it leaves unfinished) is shown or kept
        while len(self.held) > 1 and self.held_nl - self.held[0][1] > self.keep:
            chunk, n = self.held.popleft()
            self.held_nl -= n
            self.dropped += run.text.skip(chunk, n)

    def send_update(self, done: bool) -> None:
        run, now = self.run, time.monotonic()
        if not (done or run.detail != self.last_detail or (self.held and now - self.last_sent >= UPDATE_EVERY)):
            return
        lines = self.take_lines()
        self.engine.report("run_output", {"id": run.id, "lines": lines, "partial": run.text.current(),
                                          "dropped": self.dropped})
        if run.detail != self.last_detail:
            self.engine.report("run_state", run.summary())
            self.last_detail = run.detail
        self.dropped = 0
        self.last_sent = now

    async def follow(self) -> None:
        run = self.run
        try:
            while True:
                try:
                    res = await self.read()
                except ConnectError as e:
                    cancel_all(self.ahead)
                    self.engine.report("run_state", {**run.summary(), "detail": f"reconnecting: {e.message}"})
                    await asyncio.sleep(2)
                    continue
                except RemoteDevError as e:
                    self.engine.message(f"run {run.id}: {e.message}", "error")
                    run.state = LOST
                    break
                if res["data"] and res["offset"] - len(res["data"]) != run.offset:  # never: reads ahead go in order
                    cancel_all(self.ahead)
                    continue
                if res["data"]:
                    self.hold(res)
                update_from_info(run, res["info"])
                done = run.state not in LIVE and run.offset >= res["size"]
                self.send_update(done)
                if done:
                    break
        finally:
            cancel_all(self.ahead)
        rest = self.take_lines()      # read but not shown yet (the run was lost); in the tail already
        final = run.text.feed(b"", final=True)
        run.lines_seen += len(final)
        run.tail.extend(final)
        if rest or final:
            self.engine.report("run_output", {"id": run.id, "lines": rest + final, "partial": "",
                                              "dropped": self.dropped})


async def follow(engine: Engine, proj: Project, sess: TargetSession, run: RunRecord,
                 first: asyncio.Future[Any] | None = None) -> None:
    await OutputFollower(engine, sess, run, first).follow()
    finish(engine, proj, sess, run)
    await prune(engine, proj, sess)


async def prune(engine: Engine, proj: Project, sess: TargetSession) -> None:
    """Keep run.keep ended runs of the project and target on the remote (the newest); the
    older folders go, live runs never."""
    try:
        gone = await sess.call("run_prune", sess.target.remote_root, sess.target.name, proj.config.run.keep)
    except RemoteDevError as e:
        log.info("run folders of %s not pruned: %s", sess.target.name, e.message)
        return
    for run_id in gone:
        rec = proj.runs.get(run_id)
        if rec is not None and rec.state not in LIVE:   # type: ignore[attr-defined]
            proj.runs.pop(run_id, None)
    if gone:
        log.info("run folders deleted on %s (run.keep = %d): %s", sess.target.host, proj.config.run.keep,
                 ", ".join(gone))
        publish_status(engine, proj)


async def delete_run(engine: Engine, proj: Project, run_id: str) -> dict[str, Any]:
    """Delete an ended run's folder on the remote (:RemoteRuns D); a live run is refused."""
    rec = pick_run(proj, run_id)
    sess = proj.session(rec.target if rec else None)
    await sess.call("run_delete", run_id)
    proj.runs.pop(run_id, None)
    engine.message(f"run {run_id} deleted on {sess.target.host}")
    publish_status(engine, proj)
    return {"id": run_id, "deleted": True}


def cancel_all(futures: collections.deque[asyncio.Future[Any]]) -> None:
    while futures:
        futures.popleft().cancel()


def run_quickfix(proj: Project, sess: TargetSession, run: RunRecord) -> list[dict[str, Any]]:
    """Quickfix entries from what the run printed (its tail), at local files."""
    text = "\n".join(run.program_lines())
    return runner_of(sess).extra_quickfix(proj, sess, text) + tracebacks.parse(text, path_mapping(sess).to_local)


def finish(engine: Engine, proj: Project, sess: TargetSession, run: RunRecord) -> None:
    for hook in run.on_finish:
        hook(run)
    run.on_finish.clear()
    run.quickfix = run_quickfix(proj, sess, run)
    if run.code:
        problem = runner_of(sess).diagnose(proj, sess, "\n".join(run.tail))
        if problem:
            engine.message(problem, "error")
            engine.emit("RemoteDevError", {"message": problem})
    ms = round(((run.ended or time.time()) - run.created) * 1000)
    engine.report("run_state", {**run.summary(), "quickfix": run.quickfix, "final": True})
    engine.emit("RemoteDevRunExit", {"id": run.id, "code": run.code, "ms": ms, "target": run.target})
    publish_status(engine, proj)


def pick_run(proj: Project, run_id: str | None, live_only: bool = False) -> RunRecord | None:
    runs: dict[str, RunRecord] = proj.runs  # type: ignore[assignment]
    if run_id:
        return runs.get(run_id)
    candidates = [r for r in runs.values() if r.target == proj.target_name and (r.state in LIVE or not live_only)]
    return max(candidates, key=lambda r: r.created) if candidates else None


async def stop(engine: Engine, proj: Project, sess: TargetSession, run_id: str, rec: RunRecord | None,
               by: str) -> dict[str, Any]:
    """Stop a run as a whole (process tree, container, Slurm job).  What it prints from
    now on (the interrupt's traceback) is the stop's doing: it stays out of quickfix."""
    if rec is not None and rec.state in LIVE and rec.stop_offset is None:
        try:
            rec.stop_offset = int((await sess.call("run_info", run_id)).get("size") or 0)
        except RemoteDevError:
            pass
        rec.stopped_by = by
    info = await sess.call("run_stop", run_id, proj.config.run.stop_grace)
    if info.get("already_ended"):
        if rec is not None:
            update_from_info(rec, info)
        engine.message(already_ended(proj, run_id, info), "warn")
        return rec.summary() if rec is not None else info
    if rec is None:
        return info
    update_from_info(rec, info)
    engine.message(f"run {run_id} stopped" + (f" ({by})" if by != ":RemoteStop" else ""), "info")
    return rec.summary()


def already_ended(proj: Project, run_id: str, info: dict[str, Any]) -> str:
    """What :RemoteStop of a run that had ended says: how it ended, and what it would stop."""
    code = info.get("code")
    how = info.get("state", "ended") + (f", exit {code}" if code is not None else "")
    live = [r for r in proj.runs.values() if r.state in LIVE and r.id != run_id]  # type: ignore[attr-defined]
    if not live:
        return f"run {run_id} had already ended ({how}); no run is live here"
    latest = max(live, key=lambda r: r.created)
    return (f"run {run_id} had already ended ({how}); nothing stopped. :RemoteStop {latest.id} stops "
            f"the live run ({latest.cmd})" + (f", one of {len(live)}" if len(live) > 1 else ""))


async def stop_run(engine: Engine, proj: Project, run_id: str | None, target: str | None = None,
                   by: str = ":RemoteStop") -> dict[str, Any]:
    """Stop a run (the latest live one of the target when run_id is None); target: the one
    a run not known here is on (default: the active target)."""
    rec = pick_run(proj, run_id, live_only=True)
    sess = proj.session(rec.target if rec else target)
    run_id = rec.id if rec else run_id
    if not run_id:
        raise RemoteDevError(f"no live run on {sess.target.name} to stop (:RemoteRuns lists them)")
    return await stop(engine, proj, sess, run_id, rec, by)


async def stop_all(engine: Engine) -> int:
    """Stop the live runs this Neovim started or followed (stop_runs_on_exit)."""
    stopped = 0
    for proj in list(engine.projects.values()):
        for rec in list(proj.runs.values()):
            if rec.state in LIVE:
                await stop(engine, proj, proj.session(rec.target), rec.id, rec, "Neovim exit")
                stopped += 1
    return stopped


async def list_runs(proj: Project) -> list[dict[str, Any]]:
    """The target's runs, also those started by earlier Neovim sessions."""
    sess = proj.session()
    remote = await sess.call("run_list", sess.target.remote_root)
    out = []
    for info in remote:
        rec = proj.runs.get(info["id"]) or RunRecord.from_info(info, proj, sess.target.name)
        following = isinstance(rec, RunRecord) and rec.follower is not None and not rec.follower.done()
        out.append({**rec.summary(), "following": following})
    return sorted(out, key=lambda r: r["created"])


async def attach_run(engine: Engine, proj: Project, run_id: str) -> dict[str, Any]:
    """Follow a run (from its first byte) into a run buffer, e.g. one started before."""
    sess = proj.session()
    rec = pick_run(proj, run_id)
    if rec is not None and rec.follower is not None and not rec.follower.done():
        engine.report("run_state", {**rec.summary(), "show": True})
        return rec.summary()
    rec = RunRecord.from_info(await sess.call("run_info", run_id), proj, sess.target.name)
    proj.runs[run_id] = rec
    engine.report("run_state", {**rec.summary(), "new": True})
    rec.follower = asyncio.get_running_loop().create_task(follow(engine, proj, sess, rec))
    return rec.summary()


async def fetch_log(proj: Project, run_id: str | None, target: str | None = None) -> dict[str, Any]:
    """A run's full output (ANSI stripped, progress bars collapsed) as lines, after a header
    line; at most the last LOG_FETCH_LIMIT bytes.  target: the one a run not known here is on."""
    rec = pick_run(proj, run_id)
    sess = proj.session(rec.target if rec else target)
    run_id = run_id or (rec.id if rec else None)
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
    return {"id": run_id, "root": str(proj.root), "target": sess.target.name, "remote_log": info["log"],
            "header": header, "lines": lines}


def quickfix_of(proj: Project, run_id: str | None) -> dict[str, Any]:
    """Quickfix entries of a run on demand (also while it runs)."""
    rec = pick_run(proj, run_id)
    if rec is None:
        raise RemoteDevError("no run to read locations from")
    return {"id": rec.id, "cmd": rec.cmd, "quickfix": run_quickfix(proj, proj.session(rec.target), rec)}
