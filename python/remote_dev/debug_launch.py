"""How a debug run's command starts under debugpy: the one seam between debugging and the
runners (a runner gets a ``Launch`` and knows nothing else of debugging).

Two ways, chosen by the runner:

* bootstrap (process and Slurm runners, and any runner whose processes see the remote's
  file system and network): the command runs as typed, with the bootstrap
  (agent/remote/debug_boot.py, uploaded as ``sitecustomize.py``) first on PYTHONPATH and the
  run's marker in the environment.  Every Python process it starts -- the program, each
  rank of srun / torchrun / mpirun, a generic launcher's children, on any node -- starts
  debugpy at a free port (127.0.0.1 on the agent's host, the node's address elsewhere) and
  writes that endpoint into the run folder (``debug/``), where the debug run picks it up.
  The subprocesses of a debugged process (pool and DataLoader workers) are debugpy's own
  child sessions.  Nothing but the environment tells a process it is debugged, so an
  allocation's `srun --jobid` step carries it as a batch job does.
* direct (containers with their own network): ``python -m debugpy --listen ADDR:PORT
  --wait-for-client`` at a port chosen beforehand and published on the remote's 127.0.0.1.

When the remote (or container) Python lacks debugpy, the one from the plugin's own
environment is uploaded once, content-addressed, and put on PYTHONPATH (mounted read-only
into containers); the bootstrap adds it after the program's own paths.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import posixpath
import re
import shlex
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import debugpy

from .agent.protocol import OK, write_op
from .engine import TargetSession
from .errors import RemoteDevError
from .runners import Launch

CONTAINER_DEBUGPY = "/opt/remote-dev/debugpy"
CONTAINER_BOOT = "/opt/remote-dev/boot"
SKIP_SUFFIXES = (".pyc", ".pyo", ".dll", ".exe", ".pdb", ".dylib")
PYTHON_WORD = re.compile(r"^(?:.*/)?python[0-9.]*$")
BOOT_SOURCE = Path(__file__).resolve().parent / "agent" / "remote" / "debug_boot.py"
ENDPOINTS = "debug"     # the folder of a run's folder the bootstrap writes endpoints into
# Programs that start others: run as typed (not as `python -m prog`), each Python process
# below them debugged.
LAUNCHERS = frozenset(("srun", "mpirun", "mpiexec", "orterun", "torchrun", "deepspeed", "accelerate",
                       "horovodrun", "env", "time", "nice", "nohup", "numactl", "taskset", "sh", "bash",
                       "dash", "zsh", "apptainer", "singularity"))
SHELL_SYNTAX = re.compile(r"[;&|<>()`$]")


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


async def upload_once(sess: TargetSession, base: str, files: list[tuple[str, Path | bytes]], what: str) -> str:
    """files (name in base, path or bytes) into the remote folder base, unless a former
    upload completed there (its `.complete` marker).  Returns base."""
    marker = (await sess.call("state", base, [".complete"]))[0]
    if marker is not None:
        return base
    agent = await sess.ensure()
    batch: list[dict[str, Any]] = []
    size = 0
    futures = []
    for rel, src in files:
        data = src if isinstance(src, bytes) else await asyncio.to_thread(src.read_bytes)
        batch.append(write_op(rel, None, True, None, 0o600, data))
        size += len(data)
        if size > (4 << 20):
            futures.append(agent.send("push", base, batch))
            await agent.drain()
            batch, size = [], 0
    batch.append(write_op(".complete", None, True, None, 0o600, what.encode()))
    futures.append(agent.send("push", base, batch))
    await agent.drain()
    for fut in futures:
        for answer in await fut:
            if answer[0] != OK:
                raise RemoteDevError(f"uploading {what} to {sess.target.host} failed: {answer}")
    return base


async def ensure_debugpy(sess: TargetSession) -> str:
    """Upload the plugin's debugpy (once per content) into the remote cache; returns the
    folder to put on PYTHONPATH."""
    files = await asyncio.to_thread(debugpy_files)
    digest = debugpy_digest(files)
    base = posixpath.join(sess.hello["cache_dir"], "debugpy", f"{debugpy.__version__}-{digest}")
    return await upload_once(sess, base, list(files), f"debugpy {debugpy.__version__}")


async def ensure_boot(sess: TargetSession) -> str:
    """The bootstrap as `sitecustomize.py` in a remote folder of its own (once per content)."""
    data = await asyncio.to_thread(BOOT_SOURCE.read_bytes)
    base = posixpath.join(sess.hello["cache_dir"], "debug-boot", hashlib.sha256(data).hexdigest()[:16])
    return await upload_once(sess, base, [("sitecustomize.py", data)], "the debug bootstrap")


def split_command(cmd: str) -> tuple[list[str], list[str]]:
    """(VAR=value words in front, the rest) of a simple command line."""
    words = shlex.split(cmd)
    env = []
    while words and re.match(r"^[A-Za-z_][A-Za-z0-9_]*=", words[0]):
        env.append(words.pop(0))
    if not words:
        raise RemoteDevError(f"nothing to debug in {cmd!r}" if cmd.strip() else "nothing to debug: the command is empty")
    return env, words


def exports(env: list[str]) -> str:
    # `VAR=value cmd` of the command: exported first (`exec VAR=value cmd` would run a
    # program named VAR=value)
    return "".join(f"export {shlex.quote(w)}; " for w in env)


def debug_command(cmd: str, python: str, listen: str, port: int, pythonpath: str | None,
                  boot: str | None = None) -> str:
    """Direct: cmd rewritten to start under debugpy, waiting for the client:
    `python [opts] script args` / `python -m mod args` -> `python -m debugpy ... script args`;
    any other program (pytest, a console script) runs as `python -m debugpy ... -m prog`."""
    env, words = split_command(cmd)
    if PYTHON_WORD.match(words[0]) or words[0] == python:
        interp, rest = words[0], words[1:]
        opts = []
        while rest and rest[0].startswith("-") and rest[0] not in ("-m", "-c"):
            opts.append(rest.pop(0))
        if rest and rest[0] == "-c":
            raise RemoteDevError("debugging `python -c` in a container is not supported: put the code in a file")
    else:
        if posixpath.basename(words[0]) in LAUNCHERS:
            raise RemoteDevError(f"debugging `{words[0]}` (a launcher) in a container with its own network is not "
                                 f"supported: debug the Python command itself, or use the process or slurm runner")
        interp, opts, rest = python, [], ["-m", words[0].rsplit("/", 1)[-1]] + words[1:]
    dbg = [interp, "-Xfrozen_modules=off", *opts, "-m", "debugpy", "--listen", f"{listen}:{port}",
           "--wait-for-client", *rest]
    line = " ".join(shlex.quote(w) for w in dbg)
    check = f"{shlex.quote(interp)} -c 'import debugpy' 2>/dev/null"
    supply = ""
    if pythonpath:
        supply = (f"{check} || export PYTHONPATH={shlex.quote(pythonpath)}${{PYTHONPATH:+:$PYTHONPATH}}; ")
    guard = ""
    if boot:   # the bootstrap guards debugpy's listeners (debug_boot.guard_cli)
        guard = f"export REMOTE_DEV_DEBUG_GUARD=1 PYTHONPATH={shlex.quote(boot)}${{PYTHONPATH:+:$PYTHONPATH}}; "
    return f"export PYDEVD_DISABLE_FILE_VALIDATION=1; {exports(env)}{supply}{guard}exec {line}"


def boot_command(cmd: str, python: str, env: dict[str, str]) -> str:
    """Bootstrap: cmd as typed after env (PYTHONPATH put in front of the one in force).
    A simple command execs: `python ...` gets -Xfrozen_modules=off, a launcher (srun,
    torchrun, mpirun, a shell) or a path runs as is, another program (pytest, a console
    script) as `python -m prog`.  A line with shell syntax (&&, |, $VAR) runs as typed."""
    env = dict(env)
    path = env.pop("PYTHONPATH")
    ours = "export " + " ".join(f"{k}={shlex.quote(v)}" for k, v in env.items()) + "; "
    if SHELL_SYNTAX.search(cmd):
        return f"{ours}export PYTHONPATH={shlex.quote(path)}${{PYTHONPATH:+:$PYTHONPATH}}; {cmd}"
    user_env, words = split_command(cmd)
    if PYTHON_WORD.match(words[0]) or words[0] == python:
        words = [words[0], "-Xfrozen_modules=off", *words[1:]]
    elif "/" not in words[0] and words[0] not in LAUNCHERS:
        words = [python, "-Xfrozen_modules=off", "-m", *words]
    line = " ".join(shlex.quote(w) for w in words)
    # the command's own variables first: a PYTHONPATH among them keeps the bootstrap in front
    return (f"{ours}{exports(user_env)}export PYTHONPATH={shlex.quote(path)}${{PYTHONPATH:+:$PYTHONPATH}}; "
            f"exec {line}")


def host_network(args: tuple[str, ...]) -> bool:
    joined = " ".join(args)
    return bool(re.search(r"--net(work)?[= ]host\b", joined))


@dataclass
class DebugPlan:
    """How one debug run's processes start under debugpy and where they listen."""
    pythonpath: str | None                 # folder with debugpy, for a remote that lacks it
    boot: str | None = None                # bootstrap folder: every Python process debugged (see above)
    port: int = 0                          # direct: the debuggee's port
    listen: str = "127.0.0.1"              # direct: the address debugpy binds
    mount: tuple[str, str] | None = None   # (remote debugpy folder, container path)
    boot_mount: tuple[str, str] | None = None   # (remote bootstrap folder, container path): the guard
    publish: bool = False                  # publish the port on the remote's 127.0.0.1 (own container network)
    token: str = field(default_factory=lambda: secrets.token_hex(32))   # the run's secret (debug_boot's guard)


async def prepare(sess: TargetSession) -> DebugPlan:
    """debugpy (and the bootstrap) on the target, and the way its runner starts a debug run."""
    t = sess.target
    if t.runner != "container":
        pythonpath, boot = await asyncio.gather(ensure_debugpy(sess), ensure_boot(sess))
        return DebugPlan(pythonpath, boot=boot)
    pythonpath, boot = await asyncio.gather(ensure_debugpy(sess), ensure_boot(sess))
    plan = DebugPlan(CONTAINER_DEBUGPY, port=await sess.call("free_port"), mount=(pythonpath, CONTAINER_DEBUGPY),
                     boot_mount=(boot, CONTAINER_BOOT))
    if not host_network(t.container.args):
        # the container has its own network: listen on its interfaces, published only
        # on the remote's 127.0.0.1
        plan.listen = "0.0.0.0"
        plan.publish = True
    return plan


def endpoints_folder(sess: TargetSession, run_id: str) -> str:
    return posixpath.join(sess.hello["cache_dir"], "runs", run_id, ENDPOINTS)


def launch_for(sess: TargetSession, plan: DebugPlan, command: str, run_id: str, stop_on_entry: str = "",
               wait: float = 600.0) -> Launch:
    """The Launch of a debug run.  stop_on_entry: "" (none), "all", or ranks "0,2" that stop
    at the program's first line (bootstrap only).  wait: seconds a debugged process waits
    for its debugger before it ends (run.debug_wait; bootstrap only)."""
    if plan.boot:
        env = {"PYDEVD_DISABLE_FILE_VALIDATION": "1", "REMOTE_DEV_DEBUG": endpoints_folder(sess, run_id),
               "REMOTE_DEV_DEBUG_HOST": sess.hello["host"], "REMOTE_DEV_DEBUGPY": plan.pythonpath or "",
               "REMOTE_DEV_DEBUG_STOP": stop_on_entry, "REMOTE_DEV_DEBUG_WAIT_MAX": f"{wait:g}",
               "PYTHONPATH": plan.boot}
        return Launch(boot_command(command, sess.target.python, env), env={"REMOTE_DEV_DEBUG_TOKEN": plan.token})
    wrapped = debug_command(command, sess.target.python, plan.listen, plan.port, plan.pythonpath,
                            plan.boot_mount[1] if plan.boot_mount else None)
    return Launch(wrapped, mounts=[m for m in (plan.mount, plan.boot_mount) if m],
                  publish=[plan.port] if plan.publish else [], env={"REMOTE_DEV_DEBUG_TOKEN": plan.token})
