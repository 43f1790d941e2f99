""":RemoteDebug — a run under debugpy (debug_launch.py says how its processes start), each
of its debugged processes (endpoints) reached through a local listener carried over SSH
(dap_proxy), with an nvim-dap attach configuration per endpoint whose pathMappings come
from the mapping module.

A run has one endpoint per Python process the bootstrap debugs: the program, or each rank
of a launcher (srun, torchrun, mpirun...), found in the run folder as they start and
announced one by one (one nvim-dap session each, named with rank and host).  Subprocesses
of a debugged process are debugpy's child sessions: debugpy (1.8) sends nvim-dap a
`startDebugging` request whose configuration is the parent's attach arguments plus the
child's `subProcessId`, its `connect` still the parent's local listener, so the child
session goes through the same listener and SSH to the same debugpy adapter.

How a debug session ends decides what happens to the run: a client ending any of its
sessions (terminate, disconnect) stops the whole run like :RemoteStop (every rank, every
listener); the program ending on its own ends the run with its own exit code, untouched;
a client going away leaves it running (attach again).
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any

from . import runs as runs_mod
from .agent.protocol import LIVE_STATES, is_live
from .dap_proxy import DapProxy
from .debug_launch import DebugPlan, launch_for, prepare
from .engine import Engine, Project, TargetSession
from .errors import RemoteDevError
from .forwards import forwards_of
from .runners import path_mapping, runner_of
from .runs import RunRecord, new_run_id

log = logging.getLogger("remote_dev")

DIRECT = "main"          # the endpoint of a direct (container) debug run
POLL = 30                # seconds of one long poll for new endpoints
SAY_WAITING_AFTER = 60   # seconds without an endpoint before saying that it still waits


def dap_config(run: RunRecord | None, local_port: int, path_mappings: list[dict[str, str]],
               name: str | None = None, endpoint: str | None = None) -> dict[str, Any]:
    """The nvim-dap attach configuration (type `remote_dev`).  Its `remote_dev` field names
    the run (id, project root, target, command) and the endpoint, so that the adapter can
    attach to it again or, once the run has ended, start the same command again
    (dap.restart())."""
    config: dict[str, Any] = {
        "type": "remote_dev",
        "request": "attach",
        "name": name or (f"remote_dev {run.id}" if run else f"remote_dev port {local_port}"),
        "connect": {"host": "127.0.0.1", "port": local_port},
        "pathMappings": path_mappings,
        "justMyCode": True,
    }
    if run is not None:
        config["remote_dev"] = {"run": run.id, "root": run.root, "target": run.target, "cmd": run.cmd,
                                "endpoint": endpoint}
    return config


class DebugFailed(RemoteDevError):
    """The run's process could not start its debugger; the run goes on without it."""


def undebugged_message(run: RunRecord, info: dict[str, Any]) -> str:
    rank = info.get("rank")
    who = (f"rank {rank} (pid {info.get('pid')} on {info.get('host')})" if rank is not None
           else f"pid {info.get('pid')} on {info.get('host')}")
    return (f"run {run.id}: {who} runs WITHOUT the debugger: {info.get('error')} "
            f"(it goes on; :RemoteStop {run.id} ends it)")


@dataclass
class Endpoint:
    """One debugged process of a run: where its debugpy listens (as the remote sees it)
    and the local listener in front of it."""
    key: str
    dest_host: str
    port: int
    node: str | None = None
    rank: int | None = None
    world_size: int | None = None
    pid: int | None = None
    first: bool = False
    proxy: DapProxy | None = None

    @classmethod
    def from_file(cls, name: str, info: dict[str, Any], first: bool) -> "Endpoint":
        return cls(key=name.rsplit(".", 1)[0], dest_host=info["addr"], port=int(info["port"]),
                   node=info.get("host"), rank=info.get("rank"), world_size=info.get("world_size"),
                   pid=info.get("pid"), first=first)

    def name(self, run_id: str) -> str:
        if self.rank is not None and self.world_size != 1:
            return f"remote_dev {run_id} rank {self.rank} @ {self.node}"
        if self.first:
            return f"remote_dev {run_id}"
        return f"remote_dev {run_id} pid {self.pid} @ {self.node}"


class DebugRuns:
    """The debug runs of a project that still have a listener, by run id."""

    def __init__(self) -> None:
        self.by_id: dict[str, DebugRun] = {}


class DebugRun:
    """One debug run: its endpoints, each with a local listener (a DapProxy), all closed
    when the run ends.  A client ending any session (terminate, disconnect) stops the run."""

    def __init__(self, engine: Engine, proj: Project, sess: TargetSession, plan: DebugPlan,
                 terminate_stops_run: bool = True) -> None:
        self.engine = engine
        self.proj = proj
        self.sess = sess
        self.plan = plan
        self.terminate_stops_run = terminate_stops_run
        self.run: RunRecord | None = None
        self.endpoints: dict[str, Endpoint] = {}
        self.ended_by: str | None = None      # the client request that ended the program
        self.closed = False
        self.watcher: asyncio.Task[None] | None = None
        self.failed: dict[str, dict[str, Any]] = {}   # processes that run without the debugger, by file name

    def attachable(self, key: str | None) -> Endpoint | None:
        """The endpoint a client may (re)attach to: the run goes on and no client has ended it."""
        ep = self.endpoints.get(key or "") or next(iter(self.endpoints.values()), None)
        if (ep is None or self.run is None or self.run.state not in LIVE_STATES or self.ended_by is not None
                or ep.proxy is None or not ep.proxy.open):
            return None
        return ep

    def answer(self, ep: Endpoint) -> dict[str, Any]:
        assert self.run is not None and ep.proxy is not None
        config = dap_config(self.run, ep.proxy.local_port,
                            path_mapping(self.sess).dap_path_mappings(in_container=runner_of(self.sess).in_container()),
                            ep.name(self.run.id), ep.key)
        return {"id": self.run.id, "port": ep.proxy.local_port, "remote_port": ep.port, "node": ep.node,
                "rank": ep.rank, "name": config["name"], "config": config}

    def announce(self, ep: Endpoint, attach: bool = True) -> dict[str, Any]:
        """Tell the front-end about an endpoint; attach: Neovim starts a session for it."""
        res = self.answer(ep)
        if attach:
            self.engine.report("debug_ready", {"id": res["id"], "port": res["port"], "config": res["config"]})
        self.engine.emit("RemoteDevDebugReady", {"id": res["id"], "port": res["port"], "name": res["name"],
                                                 "rank": ep.rank, "host": ep.node})
        return res

    def client_ended(self, command: str) -> None:
        """A client asked to end the program: stop the run like :RemoteStop (once)."""
        if self.ended_by is not None or self.run is None:
            return
        self.ended_by = command
        run = self.run

        async def stop() -> None:
            try:
                await runs_mod.stop(self.engine, self.proj, self.sess, run.id, run, f"dap {command}")
            except RemoteDevError as e:
                self.engine.message(f"run {run.id}: stopping it after dap {command} failed: {e.message}", "error")
        self.engine.loop.create_task(stop())

    def ended(self, run: RunRecord) -> None:
        self.proj.state(DebugRuns).by_id.pop(run.id, None)
        if self.watcher is not None:
            self.watcher.cancel()
        if self.closed:
            return
        self.closed = True
        for ep in self.endpoints.values():
            if ep.proxy is not None:
                ep.proxy.close()
        self.engine.report("debug_end", {"id": run.id})

    async def listen(self, ep: Endpoint) -> Endpoint:
        """The local listener in front of an endpoint."""
        # a debuggee on another node than the agent's takes connections that open with the run's secret
        # a debuggee on another node than the agent's, or in a container's own network, takes
        # connections that open with the run's secret (debug_boot's guard)
        remote_node = ep.node is not None and ep.node != self.sess.hello["host"]
        elsewhere = (remote_node and bool(self.plan.boot)) or self.plan.publish
        ep.proxy = DapProxy(self.sess, ep.dest_host, ep.port, self.client_ended, intercept=self.terminate_stops_run,
                            secret=self.plan.token if elsewhere else None)
        await ep.proxy.start()
        self.endpoints[ep.key] = ep
        if self.closed:   # the run ended meanwhile
            ep.proxy.close()
        return ep

    async def new_endpoints(self, run: RunRecord, timeout: float, say: bool = True) -> tuple[list[Endpoint], bool]:
        """Endpoints written since the last look (a long poll), and whether the run goes on.
        A process that could not start its debugger is said at once (say), by pid and rank."""
        known = sorted([f"{key}.json" for key in self.endpoints] + list(self.failed))
        res = await self.sess.call("run_endpoints", run.id, known, timeout)
        out = []
        for name, info in res["found"]:
            if name.endswith(".failed"):
                self.failed[name] = info
                if say:
                    self.engine.message(undebugged_message(run, info), "error")
                continue
            ep = Endpoint.from_file(name, info, first=not self.endpoints and not out)
            if ep.key not in self.endpoints:
                out.append(await self.listen(ep))
        return out, res["live"]

    async def first_endpoints(self, run: RunRecord) -> list[Endpoint]:
        """Wait until the run's first debugged processes listen; their listeners."""
        sess, plan = self.sess, self.plan
        if not plan.boot:
            listening = await sess.call("run_listening", run.id, plan.port, 60, plan.publish)
            if not listening:
                info = await sess.call("run_info", run.id)
                if info.get("state") not in LIVE_STATES:
                    raise RemoteDevError(f"run {run.id} ended (exit {info.get('code')}) before debugpy listened "
                                         f"(see the run buffer)")
                raise RemoteDevError(f"run {run.id}: debugpy did not start listening on {sess.target.host} "
                                     f"within 60 s (see the run buffer)")
            return [await self.listen(Endpoint(DIRECT, "127.0.0.1", plan.port, node=sess.hello["host"], first=True))]
        # a queued job or a slow launcher may take long: wait while the run goes on
        waited = 0.0
        while True:
            failed_before = len(self.failed)
            found, live = await self.new_endpoints(run, POLL, say=False)
            if found:
                for info in list(self.failed.values())[failed_before:]:
                    self.engine.message(undebugged_message(run, info), "error")
                return found
            if self.failed:
                # its process runs on without the debugger: the user decides (:RemoteStop)
                raise DebugFailed(undebugged_message(run, next(iter(self.failed.values()))))
            info = await sess.call("run_info", run.id)
            if not live or not is_live(info.get("state", "")):
                raise RemoteDevError(f"run {run.id} ended (exit {info.get('code')}) before debugpy listened "
                                     f"(see the run buffer)")
            waited += POLL
            if waited == SAY_WAITING_AFTER:
                self.engine.message(f"run {run.id}: no Python process of it is under the debugger yet; "
                                    f"still waiting ({info.get('detail') or info.get('state')})")

    def watch(self, run: RunRecord) -> None:
        """Announce each endpoint that appears later (ranks starting one after the other,
        a launcher starting more processes) until the run ends."""
        async def loop() -> None:
            live = True
            while live and not self.closed:
                try:
                    found, live = await self.new_endpoints(run, POLL)
                except RemoteDevError as e:   # a reconnect: look again
                    log.info("run %s: looking for debugged processes: %s", run.id, e.message)
                    await asyncio.sleep(2)
                    continue
                for ep in found:
                    if not self.closed:
                        self.announce(ep)
        if self.plan.boot:
            self.watcher = self.engine.loop.create_task(loop())


async def start_debug(engine: Engine, proj: Project, sess: TargetSession, command: str,
                      terminate_stops_run: bool = True, announce: bool = True,
                      stop_on_entry: str = "") -> dict[str, Any]:
    """A run under debugpy (the tree pushed already), the listeners of its first debugged
    processes, and the attach configuration of the first.  announce: report the first
    ready too (Neovim attaches on that report); off when the caller attaches itself (the
    nvim-dap adapter restarting a session).  Later ones are always announced."""
    plan = await prepare(sess)
    run_id = new_run_id()
    dbg = DebugRun(engine, proj, sess, plan, terminate_stops_run)
    run = await runs_mod.start_run(engine, proj, sess, command, launch_for(sess, plan, command, run_id, stop_on_entry,
                                                                             proj.config.run.debug_wait),
                                   run_id, on_finish=[dbg.ended])
    dbg.run = run
    try:
        first = await dbg.first_endpoints(run)
    except DebugFailed:
        if not is_live(run.state):
            dbg.ended(run)
        raise
    except Exception:
        # no debuggee is left waiting for a client that will never come (a run that
        # ended by itself meanwhile is not "stopped")
        if is_live(run.state):
            try:
                await runs_mod.stop(engine, proj, sess, run.id, run, "debug setup failed")
            except RemoteDevError:
                pass
        raise
    if not is_live(run.state) or dbg.closed:
        dbg.ended(run)
        raise RemoteDevError(f"run {run.id} ended before the debugger could attach (see the run buffer)")
    proj.state(DebugRuns).by_id[run.id] = dbg
    res = dbg.announce(first[0], attach=announce)
    for ep in first[1:]:
        dbg.announce(ep)
    dbg.watch(run)
    return res


def attach_existing(proj: Project, run_id: str | None, endpoint: str | None = None) -> dict[str, Any] | None:
    """The endpoint a configuration names, while its run goes on and no client has ended
    it: what the nvim-dap adapter connects to (again, e.g. after dap.close())."""
    dbg = proj.state(DebugRuns).by_id.get(run_id or "")
    ep = dbg.attachable(endpoint) if dbg is not None else None
    return dbg.answer(ep) if dbg is not None and ep is not None else None


def command_again(proj: Project, run_id: str | None, cmd: str | None) -> str:
    """The command to debug again for a configuration whose run has ended or was ended."""
    rec = runs_mod.pick_run(proj, run_id) if run_id else None
    command = cmd or (rec.cmd if rec else None)
    if not command:
        raise RemoteDevError(f"run {run_id} is not known here: start it again with :RemoteDebug")
    return command


async def attach_port(engine: Engine, proj: Project, port: int) -> dict[str, Any]:
    """nvim-dap to a debugpy already listening on the remote's 127.0.0.1:port (e.g. a
    :RemoteRun of `python -m debugpy --listen 127.0.0.1:5678 train.py`)."""
    sess = proj.session()
    fwd = await forwards_of(sess).add("127.0.0.1", int(port), name=f"debugpy {port}")
    config = dap_config(None, fwd.local_port, path_mapping(sess).dap_path_mappings())
    engine.report("debug_ready", {"id": None, "port": fwd.local_port, "config": config})
    engine.emit("RemoteDevDebugReady", {"id": None, "port": fwd.local_port})
    return {"port": fwd.local_port, "config": config}
