"""Long-lived remote processes of a project, found again by name: shells (tmux sessions),
the Jupyter kernel and the notebook server (services: detached under the agent's
supervisor, agent/remote/services.py).

Names are namespaced per project and target (``rd-<root name>-<hash of remote_root and
target>-...``), so two projects on one host never share a shell or a kernel, while two
Neovims on the same project find the same ones.

How a long-lived process is started is one seam, ``launcher_for``: the process runs on the
target's host as is, or, while a Slurm allocation is held (alloc.py's launcher, registered
in LAUNCHERS by wiring.py), as a job step (``srun --jobid=ID --overlap ...``) on its node, listening on
the node's address, where its forwards go.
"""

from __future__ import annotations

import hashlib
import json
import posixpath
import re
import shlex
import time
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable

from .agent.protocol import is_live, shell_word
from .engine import Engine, Project, TargetSession
from .errors import RemoteDevError
from .status import publish_status

NAME = re.compile(r"^[A-Za-z0-9_-]{1,32}$")
SHELL, KERNEL, NOTEBOOK = "shell", "kernel", "notebook"
KIND_TAG = {SHELL: "sh", KERNEL: "kernel", NOTEBOOK: "notebook"}
TMUX_SOCKET = "remote-dev"      # tmux -L: remote_dev's own tmux server on the remote


def namespace(sess: TargetSession) -> str:
    """The prefix of every shell and service name of this project's target."""
    return namespace_for(sess.remote_root or sess.target.remote_root, sess.target.name)


def namespace_for(remote_root: str, target: str) -> str:
    root = remote_root.rstrip("/")
    digest = hashlib.sha1(f"{root}\0{target}".encode()).hexdigest()[:8]
    slug = re.sub(r"[^A-Za-z0-9_-]+", "-", posixpath.basename(root))[:20].strip("-") or "project"
    return f"rd-{slug}-{digest}-"


def remote_name(sess: TargetSession, kind: str, name: str = "") -> str:
    """The name on the remote of a shell ("sh-NAME"), the kernel or the notebook."""
    return namespace(sess) + KIND_TAG[kind] + (f"-{name}" if name else "")


def check_name(name: str, what: str = "shell") -> str:
    if not NAME.match(name):
        raise RemoteDevError(f"bad {what} name {name!r}: use letters, digits, - and _ (at most 32)")
    return name


@dataclass
class ServiceLaunch:
    """How a long-lived process starts on the target: its argv (wrapped by the launcher),
    the host its ports are reached at from the target's host, and what its spec gets
    besides (environment, meta)."""
    argv: list[str]
    dest_host: str = "127.0.0.1"
    env: dict[str, str] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)


class HostLauncher:
    """Long-lived processes run on the target's host as they are (also on the Slurm runner
    while no allocation is held: on the login node).  A held allocation's launcher
    (alloc.AllocLauncher) wraps argv as a job step (``srun --jobid=ID --overlap [--pty]
    ...``), makes servers listen on the node's address and names that node as where the
    forwards go."""

    listen = "127.0.0.1"     # the address kernels and servers bind
    env: dict[str, str] = {}     # added to the environment of what it starts
    meta: dict[str, Any] = {}    # added to the service's meta

    def launch(self, sess: TargetSession, argv: list[str], name: str = "") -> ServiceLaunch:
        """name: the remote name of the shell or service (a job step's name)."""
        return ServiceLaunch(list(argv))

    def shell(self, sess: TargetSession, argv: list[str] | None, name: str = "") -> list[str] | None:
        """The program of a tmux session (None: the user's login shell, chosen remotely)."""
        return argv

    def where(self) -> str:
        return ""


# Launchers other than the host's, by name, asked in turn: one answering (not None) starts
# things (wiring.py registers them: the held allocation's).
LAUNCHERS: dict[str, Callable[[TargetSession], Awaitable[HostLauncher | None]]] = {}


async def launcher_for(sess: TargetSession) -> HostLauncher:
    for find in LAUNCHERS.values():
        found = await find(sess)
        if found is not None:
            return found
    return HostLauncher()


@dataclass
class Known:
    """The shells and services of a target as last seen, for status()."""
    items: list[dict[str, Any]] = field(default_factory=list)
    at: float = 0.0


def known(sess: TargetSession) -> Known:
    return sess.state(Known)


def summarize(sess: TargetSession, info: dict[str, Any]) -> dict[str, Any]:
    """One shell or service as front-ends show it: kind, name (the user's), state, detail."""
    prefix = namespace(sess)
    full = info.get("name", "")
    kind = info.get("kind") or (info.get("meta") or {}).get("kind") or "service"
    short = full[len(prefix):] if full.startswith(prefix) else full
    if kind == SHELL and short.startswith("sh-"):
        short = short[3:]
    meta = info.get("meta") or {}
    out = {"kind": kind, "name": short, "remote_name": full, "state": info.get("state"), "live": is_live(info.get("state")),
           "created": info.get("created") or 0, "target": sess.target.name}
    if kind == SHELL:
        out["detail"] = f"{info.get('command') or '?'} in {info.get('cwd') or '?'}" + (
            f", attached {info['attached']}x" if info.get("attached") else "")
    elif kind == KERNEL:
        out["detail"] = meta.get("python") or ""
    elif kind == NOTEBOOK:
        out["detail"] = meta.get("server") or ""
    if info.get("code") is not None:
        out["code"] = info["code"]
    return out


async def list_all(sess: TargetSession, engine: Engine | None = None, live_only: bool = True) -> list[dict[str, Any]]:
    """The target's shells, kernel and notebook server, as the remote has them now."""
    found = await sess.call("service_list", namespace(sess))
    items = [summarize(sess, i) for i in found if not live_only or is_live(i.get("state"))]
    items.sort(key=lambda i: (i["kind"], i["name"]))
    k = known(sess)
    k.items, k.at = items, time.time()
    if engine is not None:
        publish_status(engine, sess.project)
    return items


def note(engine: Engine, sess: TargetSession, kind: str, name: str, state: str | None, detail: str = "") -> None:
    """Update what status() shows of one shell or service without asking the remote."""
    k = known(sess)
    k.items = [i for i in k.items if not (i["kind"] == kind and i["name"] == name)]
    if state is not None:
        k.items.append({"kind": kind, "name": name, "state": state, "detail": detail, "target": sess.target.name})
        k.items.sort(key=lambda i: (i["kind"], i["name"]))
    publish_status(engine, sess.project)


def status_part(proj: Project) -> list[dict[str, Any]]:
    return list(known(proj.session()).items)


def status_lines(s: dict[str, Any]) -> list[str]:
    """:RemoteStatus lines of status()["services"]."""
    items = s.get("services") or []
    shells = [i["name"] for i in items if i["kind"] == SHELL]
    kernel = notebook = "none"
    for i in items:
        detail = i.get("detail") or ""
        if i["kind"] == KERNEL:
            kernel = f"{i['state']}" + (f" ({detail})" if detail else "")
        elif i["kind"] == NOTEBOOK:
            notebook = f"{i['state']}" + (f" — {detail}" if detail else "")
    return [f"shells      {', '.join(shells) or 'none'}", f"kernel      {kernel}", f"notebook    {notebook}"]



async def service_log_tail(sess: TargetSession, name: str, lines: int = 15) -> str:
    data = await sess.call("service_log", name, 16384)
    text = data.decode(errors="replace").strip().splitlines()[-lines:]
    return "\n".join(text)


def python_argv(py: str, args: list[str]) -> list[str]:
    """argv running the target's python with args (through sh: ~ and commands work)."""
    return ["/bin/sh", "-c", "exec " + shell_word(py) + " " + " ".join(shlex.quote(a) for a in args)]


async def python_modules(sess: TargetSession, modules: list[str]) -> dict[str, Any]:
    """Which of modules the target's python can import (found, not imported), and
    whether it runs as root: {"modules": {name: bool}, "root": bool, "python": path}."""
    probe = ("import importlib.util as u, json, os, sys\n"
             "print(json.dumps({'modules': {m: u.find_spec(m) is not None for m in sys.argv[1:]},"
             " 'root': os.getuid() == 0, 'python': sys.executable}))")
    py = sess.target.python
    res = await sess.call("exec", python_argv(py, ["-c", probe, *modules]), 60, dict(sess.target.env))
    try:
        return json.loads(res["stdout"].decode().strip().splitlines()[-1])
    except (ValueError, IndexError):
        err = (res["stderr"] or res["stdout"]).decode(errors="replace").strip()
        raise RemoteDevError(f"{sess.target.host}: the target's python ({py}) does not run: {err[-300:]}") from None


async def health_items(sess: TargetSession) -> list[dict[str, str]]:
    """:checkhealth lines for shells (tmux), kernels (ipykernel) and notebooks."""
    items = []
    found = await sess.call("which", ["tmux"])
    if found.get("tmux"):
        res = await sess.call("exec", [found["tmux"], "-V"], 20, {})
        items.append({"level": "ok", "text": f"tmux: {res['stdout'].decode(errors='replace').strip()} "
                                             f"({found['tmux']}; :RemoteShell)"})
    else:
        items.append({"level": "warn", "text": "tmux: not found: :RemoteShell needs it (Debian/Ubuntu: "
                                               "`sudo apt install tmux`)"})
    py = sess.target.python
    try:
        mods = await python_modules(sess, ["ipykernel", "jupyter_server", "jupyterlab", "notebook"])
    except RemoteDevError as e:
        return items + [{"level": "error", "text": e.message}]
    have = mods["modules"]
    if have["ipykernel"]:
        items.append({"level": "ok", "text": f"ipykernel: importable by {py} (:RemoteKernel, :RemoteSend)"})
    else:
        items.append({"level": "warn", "text": f"ipykernel: not installed for {py}: :RemoteKernel needs it "
                                               f"(`{py} -m pip install ipykernel`)"})
    servers = [m for m in ("jupyterlab", "notebook", "jupyter_server") if have[m]]
    if servers:
        items.append({"level": "ok", "text": f"Jupyter server: {', '.join(servers)} importable by {py} (:RemoteNotebook)"})
    else:
        items.append({"level": "warn", "text": f"Jupyter server: none for {py}: :RemoteNotebook needs jupyterlab, "
                                               f"notebook or jupyter_server (`{py} -m pip install jupyterlab`)"})
    return items
