""":RemoteDebug — a run under debugpy, listening on the remote's 127.0.0.1, reached through a
local listener carried over SSH (dap_proxy), with an nvim-dap attach configuration whose
pathMappings come from the mapping module.

How a debug session ends decides what happens to the run: a client ending it (terminate,
disconnect) stops the run like :RemoteStop; the program ending on its own ends the run with
its own exit code, untouched; a client going away leaves it running (attach again).

When the remote (or container) Python lacks debugpy, the one from the plugin's own
environment is uploaded once, content-addressed, and put on PYTHONPATH (mounted read-only
into containers).
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import posixpath
import re
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import debugpy

from . import runs as runs_mod
from .agent import agent_path_remote
from .agent.protocol import LIVE_STATES, OK, is_live, write_op
from .dap_proxy import DapProxy
from .engine import Engine, Project, TargetSession
from .errors import RemoteDevError
from .forwards import forwards_of
from .runners import Launch
from .runs import RunRecord, new_run_id

CONTAINER_DEBUGPY = "/opt/remote-dev/debugpy"
SKIP_SUFFIXES = (".pyc", ".pyo", ".dll", ".exe", ".pdb", ".dylib")
PYTHON_WORD = re.compile(r"^(?:.*/)?python[0-9.]*$")


def debugpy_files() -> list[tuple[str, Path]]:
    base = Path(debugpy.__file__).parent
    out = []
    for dirpath, dirnames, filenames in os.walk(base):
        dirnames[:] = [d for d in dirnames if d != "__pycache__"]
        for name in filenames:
            if name.endswith(SKIP_SUFFIXES):
                continue
            full = Path(dirpath) / name
            out.append(("debugpy/" + full.relative_to(base).as_posix(), full))
    return sorted(out)


def debugpy_digest(files: list[tuple[str, Path]]) -> str:
    h = hashlib.sha256(debugpy.__version__.encode())
    for rel, full in files:
        h.update(f"{rel}\0{full.stat().st_size}\0".encode())
    return h.hexdigest()[:16]


async def ensure_debugpy(sess: TargetSession) -> str:
    """Upload the plugin's debugpy (once per content) into the remote cache; returns the
    folder to put on PYTHONPATH."""
    files = await asyncio.to_thread(debugpy_files)
    digest = debugpy_digest(files)
    base = posixpath.join(sess.hello["cache_dir"], "debugpy", f"{debugpy.__version__}-{digest}")
    marker = (await sess.call("state", base, [".complete"]))[0]
    if marker is not None:
        return base
    agent = await sess.ensure()
    batch: list[dict[str, Any]] = []
    size = 0
    futures = []
    for rel, full in files:
        data = await asyncio.to_thread(full.read_bytes)
        batch.append(write_op(rel, None, True, None, 0o644, data))
        size += len(data)
        if size > (4 << 20):
            futures.append(agent.send("push", base, batch))
            await agent.drain()
            batch, size = [], 0
    batch.append(write_op(".complete", None, True, None, 0o644, debugpy.__version__.encode()))
    futures.append(agent.send("push", base, batch))
    await agent.drain()
    for fut in futures:
        for answer in await fut:
            if answer[0] != OK:
                raise RemoteDevError(f"uploading debugpy to {sess.target.host} failed: {answer}")
    return base


def debug_command(cmd: str, python: str, listen: str, port: int, pythonpath: str | None,
                  launcher: list[str] | None = None) -> str:
    """cmd rewritten to start under debugpy, waiting for the client:
    `python [opts] script args` / `python -m mod args` -> `python -m debugpy ... script args`;
    any other program (pytest, a console script) runs as `python -m debugpy ... -m prog`.
    With a launcher (Slurm: the agent's debug-launch, which picks the node's address and
    port and writes them down) that replaces `-m debugpy --listen ...`."""
    words = shlex.split(cmd)
    if not words:
        raise RemoteDevError("nothing to debug: the command is empty")
    env_prefix = []
    while words and re.match(r"^[A-Za-z_][A-Za-z0-9_]*=", words[0]):
        env_prefix.append(words.pop(0))
    if not words:
        raise RemoteDevError(f"nothing to debug in {cmd!r}")
    if PYTHON_WORD.match(words[0]) or words[0] == python:
        interp, rest = words[0], words[1:]
        opts = []
        while rest and rest[0].startswith("-") and rest[0] not in ("-m", "-c"):
            opts.append(rest.pop(0))
        if rest and rest[0] == "-c":
            raise RemoteDevError("debugging `python -c` is not supported: put the code in a file")
    else:
        interp, opts, rest = python, [], ["-m", words[0].rsplit("/", 1)[-1]] + words[1:]
    if launcher:
        dbg = [interp, "-Xfrozen_modules=off", *opts, *launcher, "--", *rest]
    else:
        dbg = [interp, "-Xfrozen_modules=off", *opts, "-m", "debugpy", "--listen", f"{listen}:{port}",
               "--wait-for-client", *rest]
    line = " ".join(shlex.quote(w) for w in dbg)
    # `VAR=value cmd` of the command: exported first (`exec VAR=value cmd` would run a
    # program named VAR=value), so the check below sees them too
    env = "".join(f"export {shlex.quote(w)}; " for w in env_prefix)
    check = f"{shlex.quote(interp)} -c 'import debugpy' 2>/dev/null"
    supply = ""
    if pythonpath:
        supply = (f"{check} || export PYTHONPATH={shlex.quote(pythonpath)}${{PYTHONPATH:+:$PYTHONPATH}}; ")
    return f"export PYDEVD_DISABLE_FILE_VALIDATION=1; {env}{supply}exec {line}"


def dap_config(run: RunRecord | None, local_port: int, path_mappings: list[dict[str, str]]) -> dict[str, Any]:
    """The nvim-dap attach configuration (type `remote_dev`).  Its `remote_dev` field names
    the run (id, project root, target, command) so that the adapter can attach to it again
    or, once it has ended, start the same command again (dap.restart())."""
    config: dict[str, Any] = {
        "type": "remote_dev",
        "request": "attach",
        "name": f"remote_dev {run.id}" if run else f"remote_dev port {local_port}",
        "connect": {"host": "127.0.0.1", "port": local_port},
        "pathMappings": path_mappings,
        "justMyCode": True,
    }
    if run is not None:
        config["remote_dev"] = {"run": run.id, "root": run.root, "target": run.target, "cmd": run.cmd}
    return config


def host_network(args: tuple[str, ...]) -> bool:
    joined = " ".join(args)
    return bool(re.search(r"--net(work)?[= ]host\b", joined))


@dataclass
class DebugPlan:
    """Where debugpy listens for one debug run and how the client reaches it."""
    pythonpath: str | None                 # folder with debugpy, put on PYTHONPATH when the remote lacks it
    port: int = 0                          # the debuggee's port (0: picked on the node, see on_node)
    listen: str | None = "127.0.0.1"       # address debugpy binds
    dest_host: str | None = "127.0.0.1"    # forward destination, as the remote sees it
    mount: tuple[str, str] | None = None   # (remote debugpy folder, container path)
    publish: bool = False                  # publish the port on the remote's 127.0.0.1 (own container network)
    on_node: bool = False                  # Slurm: debugpy on the compute node writes its address down
    node: str | None = None


async def prepare(sess: TargetSession) -> DebugPlan:
    """Port, listen address and debugpy location for a debug run on this target."""
    t = sess.target
    pythonpath = await ensure_debugpy(sess)
    if t.runner == "slurm":
        # debugpy starts on the compute node, on its cluster address; the forward goes
        # through the login node to it (the address is known once the job runs)
        return DebugPlan(pythonpath, listen=None, dest_host=None, on_node=True)
    plan = DebugPlan(pythonpath, port=await sess.call("free_port"))
    if t.runner == "container":
        plan.mount = (pythonpath, CONTAINER_DEBUGPY)
        plan.pythonpath = CONTAINER_DEBUGPY
        if not host_network(t.container.args):
            # the container has its own network: listen on its interfaces, published only
            # on the remote's 127.0.0.1
            plan.listen = "0.0.0.0"
            plan.publish = True
    return plan


def launch_for(sess: TargetSession, plan: DebugPlan, command: str, run_id: str) -> Launch:
    launcher = None
    if plan.on_node:
        ready = posixpath.join(sess.hello["cache_dir"], "runs", run_id, "debug.json")
        launcher = [agent_path_remote(sess.hello["cache_dir"]), "debug-launch", ready]
    wrapped = debug_command(command, sess.target.python, plan.listen or "", plan.port, plan.pythonpath, launcher)
    return Launch(wrapped, mounts=[plan.mount] if plan.mount else [], publish=[plan.port] if plan.publish else [])


class DebugRuns:
    """The debug runs of a project that still have a listener, by run id."""

    def __init__(self) -> None:
        self.by_id: dict[str, DebugRun] = {}


class DebugRun:
    """One debug run: the local listener in front of its debuggee (a DapProxy), closed when
    the run ends.  A client ending the session (terminate, disconnect) stops the run."""

    def __init__(self, engine: Engine, proj: Project, sess: TargetSession, plan: DebugPlan,
                 terminate_stops_run: bool = True) -> None:
        self.engine = engine
        self.proj = proj
        self.sess = sess
        self.plan = plan
        self.terminate_stops_run = terminate_stops_run
        self.proxy: DapProxy | None = None
        self.run: RunRecord | None = None
        self.ended_by: str | None = None      # the client request that ended the program

    @property
    def attachable(self) -> bool:
        """A client may (re)attach: the run goes on and no client has ended it."""
        return (self.run is not None and self.run.state in LIVE_STATES and self.ended_by is None
                and self.proxy is not None and self.proxy.open)

    def answer(self) -> dict[str, Any]:
        assert self.run is not None and self.proxy is not None
        mapping = self.sess.mapping()
        config = dap_config(self.run, self.proxy.local_port,
                            mapping.dap_path_mappings(in_container=self.sess.target.runner == "container"))
        return {"id": self.run.id, "port": self.proxy.local_port, "remote_port": self.plan.port,
                "node": self.plan.node, "config": config}

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
        if self.proxy is not None:
            self.proxy.close()
            self.proxy = None
            self.engine.report("debug_end", {"id": run.id})

    async def wait_and_listen(self, run: RunRecord) -> DapProxy:
        """Wait until the debuggee listens, then open the local listener in front of it."""
        plan, sess = self.plan, self.sess
        if plan.on_node:
            # a queued job may wait long: keep waiting while it is pending or running
            while True:
                where = await sess.call("run_file", run.id, "debug.json", 30)
                if where is not None:
                    plan.dest_host, plan.port, plan.node = where["host"], where["port"], where.get("node")
                    break
                if not is_live(run.state):
                    raise RemoteDevError(f"run {run.id} ended before debugpy started (see the run buffer)")
        else:
            listening = await sess.call("run_listening", run.id, plan.port, 60, plan.publish)
            if not listening:
                info = await sess.call("run_info", run.id)
                if info.get("state") not in LIVE_STATES:
                    raise RemoteDevError(f"run {run.id} ended (exit {info.get('code')}) before debugpy listened "
                                         f"(see the run buffer)")
                raise RemoteDevError(f"run {run.id}: debugpy did not start listening on {sess.target.host} "
                                     f"within 60 s (see the run buffer)")
        assert plan.dest_host is not None
        self.proxy = DapProxy(sess, plan.dest_host, plan.port, self.client_ended, intercept=self.terminate_stops_run)
        await self.proxy.start()
        if not is_live(run.state):   # it ended meanwhile: nothing to attach to
            self.ended(run)
            raise RemoteDevError(f"run {run.id} ended before the debugger could attach (see the run buffer)")
        return self.proxy


async def start_debug(engine: Engine, proj: Project, sess: TargetSession, command: str,
                      terminate_stops_run: bool = True, announce: bool = True) -> dict[str, Any]:
    """A run under debugpy (the tree pushed already), its listener, and the attach
    configuration.  announce: report it ready (Neovim attaches on that report); off when the
    caller attaches itself (the nvim-dap adapter restarting a session)."""
    plan = await prepare(sess)
    run_id = new_run_id()
    dbg = DebugRun(engine, proj, sess, plan, terminate_stops_run)
    run = await runs_mod.start_run(engine, proj, sess, command, launch_for(sess, plan, command, run_id), run_id,
                                   on_finish=[dbg.ended])
    dbg.run = run
    try:
        await dbg.wait_and_listen(run)
    except Exception:
        # no debuggee is left waiting for a client that will never come
        try:
            await runs_mod.stop(engine, proj, sess, run.id, run, "debug setup failed")
        except RemoteDevError:
            pass
        raise
    if run.state in LIVE_STATES:
        proj.state(DebugRuns).by_id[run.id] = dbg
    res = dbg.answer()
    if announce:
        engine.report("debug_ready", {"id": run.id, "port": res["port"], "config": res["config"]})
    engine.emit("RemoteDevDebugReady", {"id": run.id, "port": res["port"]})
    return res


def attach_existing(proj: Project, run_id: str | None) -> dict[str, Any] | None:
    """The run a configuration names, while it goes on and no client has ended it: what
    the nvim-dap adapter connects to (again, e.g. after dap.close())."""
    dbg = proj.state(DebugRuns).by_id.get(run_id or "")
    return dbg.answer() if dbg is not None and dbg.attachable else None


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
    config = dap_config(None, fwd.local_port, sess.mapping().dap_path_mappings())
    engine.report("debug_ready", {"id": None, "port": fwd.local_port, "config": config})
    engine.emit("RemoteDevDebugReady", {"id": None, "port": fwd.local_port})
    return {"port": fwd.local_port, "config": config}
