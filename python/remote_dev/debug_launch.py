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

When the remote (or container) Python lacks debugpy, the plugin's own is uploaded once,
content-addressed, and put on PYTHONPATH (mounted read-only into containers); the bootstrap
adds it after the program's own paths.  The plugin has two: its environment's, and the last
release that runs on Python 3.8 and 3.9 (``OLDER_DEBUGPY``); a remote gets the newest its
Python runs, a container both (the command line picks).
"""

from __future__ import annotations

import asyncio
import hashlib
import importlib.metadata
import os
import posixpath
import re
import shlex
import secrets
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import debugpy

from .agent.protocol import (DEBUG_ENV, DEBUG_GUARD_ENV, DEBUG_HOST_ENV, DEBUG_STOP_ENV, DEBUG_TOKEN_ENV,
                             DEBUG_WAIT_MAX_ENV, DEBUGPY_ENV, ENDPOINTS_DIR, OK, python_words, run_dir, shell_word, write_op)
from .engine import TargetSession
from .errors import RemoteDevError
from .runners import BOOTSTRAP, Launch, runner_of

CONTAINER_DEBUGPY = "/opt/remote-dev/debugpy"
CONTAINER_BOOT = "/opt/remote-dev/boot"
SKIP_SUFFIXES = (".pyc", ".pyo", ".dll", ".exe", ".pdb", ".dylib")
PYTHON_WORD = re.compile(r"^(?:.*/)?python[0-9.]*$")
BOOT_SOURCE = Path(__file__).resolve().parent / "agent" / "remote" / "debug_boot.py"
# Programs that start others: run as typed (not as `python -m prog`), each Python process
# below them debugged.
LAUNCHER_PROGRAMS = frozenset(("srun", "mpirun", "mpiexec", "orterun", "torchrun", "deepspeed", "accelerate",
                       "horovodrun", "env", "time", "nice", "nohup", "numactl", "taskset", "sh", "bash",
                       "dash", "zsh", "apptainer", "singularity"))
SHELL_SYNTAX = re.compile(r"[;&|<>()`$]")


# debugpy for remotes whose Python the newest debugpy no longer supports (1.8.22 needs
# 3.10; 1.8.21 still runs on 3.8 and 3.9): scripts/install-host puts that release's
# pure-Python wheel here, at the version of locks/remote-debugpy.txt
OLDER_DEBUGPY = Path(sys.prefix) / "share" / "remote-dev" / "remote-debugpy"


@dataclass(frozen=True)
class Debugpy:
    """One debugpy the plugin can upload: its version, the oldest Python it runs on, its
    package folder."""
    version: str
    min_python: tuple[int, int]
    base: Path


def min_python(requires: str | None) -> tuple[int, int]:
    """The oldest Python a Requires-Python admits (">=3.10" -> (3, 10)); (3, 0) when it
    names none."""
    found = re.search(r">=\s*3\.(\d+)", requires or "")
    return (3, int(found.group(1))) if found else (3, 0)


def debugpys() -> list[Debugpy]:
    """The debugpys the plugin has, newest first: its own environment's, then the older
    release kept for older remote Pythons (when scripts/install-host put it there)."""
    out = [Debugpy(debugpy.__version__, min_python(importlib.metadata.metadata("debugpy").get("Requires-Python")),
                   Path(debugpy.__file__).parent)]
    for info in sorted(OLDER_DEBUGPY.glob("debugpy-*.dist-info")):
        meta = importlib.metadata.PathDistribution(info).metadata
        out.append(Debugpy(meta["Version"], min_python(meta.get("Requires-Python")), OLDER_DEBUGPY / "debugpy"))
    return out


def debugpy_for(python: str, host: str) -> Debugpy:
    """The newest debugpy that runs on the remote's Python (its "3.9.18"), or one clear line."""
    version = tuple(int(x) for x in python.split(".")[:2])
    have = debugpys()
    for d in have:
        if version >= d.min_python:
            return d
    oldest = have[-1]
    raise RemoteDevError(f"debugging on {host} (Python {python}) needs a debugpy for Python "
                         f"{version[0]}.{version[1]}; the plugin has debugpy {oldest.version} (Python >= "
                         f"{oldest.min_python[0]}.{oldest.min_python[1]}): run scripts/install-host, which installs "
                         f"the release of locks/remote-debugpy.txt for older Pythons")


def debugpy_files(base: Path) -> list[tuple[str, Path]]:
    out = []
    for dirpath, dirnames, filenames in os.walk(base):
        dirnames[:] = [d for d in dirnames if d != "__pycache__"]
        for name in filenames:
            if name.endswith(SKIP_SUFFIXES):
                continue
            full = Path(dirpath) / name
            out.append(("debugpy/" + full.relative_to(base).as_posix(), full))
    return sorted(out)


def debugpy_digest(version: str, files: list[tuple[str, Path]]) -> str:
    h = hashlib.sha256(version.encode())
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


async def ensure_debugpy(sess: TargetSession, which: Debugpy | None = None) -> str:
    """Upload a debugpy (once per content) into the remote cache; returns the folder to put
    on PYTHONPATH.  which: by default the newest that runs on the remote's Python."""
    d = which or debugpy_for(sess.hello["python"], sess.target.host)
    files = await asyncio.to_thread(debugpy_files, d.base)
    digest = debugpy_digest(d.version, files)
    base = posixpath.join(sess.hello["cache_dir"], "debugpy", f"{d.version}-{digest}")
    return await upload_once(sess, base, list(files), f"debugpy {d.version}")


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


def python_prefix(words: list[str], python: str) -> int:
    """How many of the command's first words are the target's python (0: none): its words as
    configured (`~/venv/bin/python`, `conda run -n X python`) or as ``{python}`` wrote them."""
    for form in (python_words(python), shlex.split(shell_word(python))):
        if form and words[:len(form)] == form:
            return len(form)
    return 0


def interpreter(words: list[str], python: str) -> tuple[str, list[str]]:
    """(the interpreter as a shell word, the rest) when the command starts with a Python
    interpreter (`python3`, a path to one, the target's python), else ("", words)."""
    n = python_prefix(words, python)
    if n:
        return shell_word(python), words[n:]
    if PYTHON_WORD.match(words[0]):
        return shlex.quote(words[0]), words[1:]
    return "", words


def debug_command(cmd: str, python: str, listen: str, port: int, supplied: list[tuple[tuple[int, int], str]],
                  boot: str | None = None) -> str:
    """Direct: cmd rewritten to start under debugpy, waiting for the client:
    `python [opts] script args` / `python -m mod args` -> `python -m debugpy ... script args`;
    any other program (pytest, a console script) runs as `python -m debugpy ... -m prog`.
    supplied: (oldest Python, folder) of the debugpys mounted into the container, newest
    first: when its Python lacks debugpy, the first that runs on it goes on PYTHONPATH."""
    env, words = split_command(cmd)
    interp, rest = interpreter(words, python)
    if interp:
        opts = []
        while rest and rest[0].startswith("-") and rest[0] not in ("-m", "-c"):
            opts.append(rest.pop(0))
        if rest and rest[0] == "-c":
            raise RemoteDevError("debugging `python -c` in a container is not supported: put the code in a file")
    else:
        if posixpath.basename(words[0]) in LAUNCHER_PROGRAMS:
            raise RemoteDevError(f"debugging `{words[0]}` (a launcher) in a container with its own network is not "
                                 f"supported: debug the Python command itself, or use the process or slurm runner")
        interp, opts, rest = shell_word(python), [], ["-m", words[0].rsplit("/", 1)[-1]] + words[1:]
    dbg = ["-Xfrozen_modules=off", *opts, "-m", "debugpy", "--listen", f"{listen}:{port}", "--wait-for-client", *rest]
    line = interp + " " + " ".join(shlex.quote(w) for w in dbg)
    check = f"{interp} -c 'import debugpy' 2>/dev/null"
    supply = ""
    if supplied:
        pick = f"_rd_debugpy={shlex.quote(supplied[0][1])}; "
        for (newer, _), (_, folder) in zip(supplied, supplied[1:]):
            # older than what the newer one needs: the next one
            pick += (f"{interp} -c 'import sys; sys.exit(sys.version_info < {newer})' "
                     f"2>/dev/null || _rd_debugpy={shlex.quote(folder)}; ")
        supply = f'{check} || {{ {pick}export PYTHONPATH="$_rd_debugpy${{PYTHONPATH:+:$PYTHONPATH}}"; }}; '
    guard = ""
    if boot:   # the bootstrap guards debugpy's listeners (debug_boot.guard_cli)
        guard = f"export {DEBUG_GUARD_ENV}=1 PYTHONPATH={shlex.quote(boot)}${{PYTHONPATH:+:$PYTHONPATH}}; "
    return f"export PYDEVD_DISABLE_FILE_VALIDATION=1; {exports(env)}{supply}{guard}exec {line}"


def boot_command(cmd: str, python: str, env: dict[str, str]) -> str:
    """Bootstrap: cmd as typed after env (PYTHONPATH put in front of the one in force).
    A simple command execs: `python ...` (or the target's python) gets -Xfrozen_modules=off,
    a launcher (srun, torchrun, mpirun, a shell) or a path runs as is, another program
    (pytest, a console script) as `python -m prog`.  A line with shell syntax (&&, |, $VAR)
    runs as typed."""
    env = dict(env)
    path = env.pop("PYTHONPATH")
    ours = "export " + " ".join(f"{k}={shlex.quote(v)}" for k, v in env.items()) + "; "
    boot_path = f"export PYTHONPATH={shlex.quote(path)}${{PYTHONPATH:+:$PYTHONPATH}}; "
    if SHELL_SYNTAX.search(cmd.replace(shell_word(python), "")):
        return f"{ours}{boot_path}{cmd}"
    user_env, words = split_command(cmd)
    interp, rest = interpreter(words, python)
    if interp:
        line = f"{interp} -Xfrozen_modules=off"
    elif "/" not in words[0] and words[0] not in LAUNCHER_PROGRAMS:
        line, rest = f"{shell_word(python)} -Xfrozen_modules=off -m", words
    else:
        line, rest = shlex.quote(words[0]), words[1:]
    line = " ".join([line, *(shlex.quote(w) for w in rest)])
    # the command's own variables first: a PYTHONPATH among them keeps the bootstrap in front
    return f"{ours}{exports(user_env)}{boot_path}exec {line}"


def host_network(args: tuple[str, ...]) -> bool:
    joined = " ".join(args)
    return bool(re.search(r"--net(work)?[= ]host\b", joined))


@dataclass
class DebugPlan:
    """How one debug run's processes start under debugpy and where they listen."""
    pythonpath: str | None                 # bootstrap: folder with debugpy, for a remote that lacks it
    boot: str | None = None                # bootstrap folder: every Python process debugged (see above)
    port: int = 0                          # direct: the debuggee's port
    listen: str = "127.0.0.1"              # direct: the address debugpy binds
    supplied: list[tuple[tuple[int, int], str]] = field(default_factory=list)  # direct: debugpys in the container
    mounts: list[tuple[str, str]] = field(default_factory=list)   # (remote debugpy folder, container path)
    guard: str | None = None               # direct: the bootstrap's folder in the container (its guard)
    publish: bool = False                  # publish the port on the remote's 127.0.0.1 (own container network)
    token: str = field(default_factory=lambda: secrets.token_hex(32))   # the run's secret (debug_boot's guard)


async def prepare(sess: TargetSession) -> DebugPlan:
    """debugpy (and the bootstrap) on the target, and the way its runner starts a debug run."""
    t = sess.target
    if runner_of(sess).debug_mode() == BOOTSTRAP:
        pythonpath, boot = await asyncio.gather(ensure_debugpy(sess), ensure_boot(sess))
        return DebugPlan(pythonpath, boot=boot)
    # the image's Python is known only inside it: every debugpy the plugin has goes in, and
    # the command line picks the newest that runs there
    plan = DebugPlan(None, port=await sess.call("free_port"))
    have = debugpys()
    folders, boot = await asyncio.gather(asyncio.gather(*(ensure_debugpy(sess, d) for d in have)), ensure_boot(sess))
    for i, (d, folder) in enumerate(zip(have, folders)):
        inside = CONTAINER_DEBUGPY if i == 0 else f"{CONTAINER_DEBUGPY}-{d.version}"
        plan.supplied.append((d.min_python, inside))
        plan.mounts.append((folder, inside))
    plan.mounts.append((boot, CONTAINER_BOOT))   # the guard on debugpy's listeners (debug_boot.guard_cli)
    plan.guard = CONTAINER_BOOT
    if not host_network(t.container.args):
        # the container has its own network: listen on its interfaces, published only
        # on the remote's 127.0.0.1
        plan.listen = "0.0.0.0"
        plan.publish = True
    return plan


def endpoints_folder(sess: TargetSession, run_id: str) -> str:
    return posixpath.join(run_dir(sess.hello["cache_dir"], run_id), ENDPOINTS_DIR)


def launch_for(sess: TargetSession, plan: DebugPlan, command: str, run_id: str, stop_on_entry: str = "",
               wait: float = 600.0) -> Launch:
    """The Launch of a debug run.  stop_on_entry: "" (none), "all", or ranks "0,2" that stop
    at the program's first line (bootstrap only).  wait: seconds a debugged process waits
    for its debugger before it ends (run.debug_wait; bootstrap only)."""
    if plan.boot:
        env = {"PYDEVD_DISABLE_FILE_VALIDATION": "1", DEBUG_ENV: endpoints_folder(sess, run_id),
               DEBUG_HOST_ENV: sess.hello["host"], DEBUGPY_ENV: plan.pythonpath or "",
               DEBUG_STOP_ENV: stop_on_entry, DEBUG_WAIT_MAX_ENV: f"{wait:g}", "PYTHONPATH": plan.boot}
        return Launch(boot_command(command, sess.target.python, env), env={DEBUG_TOKEN_ENV: plan.token})
    wrapped = debug_command(command, sess.target.python, plan.listen, plan.port, plan.supplied, plan.guard)
    return Launch(wrapped, mounts=list(plan.mounts), publish=[plan.port] if plan.publish else [],
                  env={DEBUG_TOKEN_ENV: plan.token})
