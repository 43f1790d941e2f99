"""Actions the front-ends can request: ``async def name(engine, ctx, **args)``.

ctx carries where the request comes from: {"file": current buffer, "cwd": cwd}.
"""

from __future__ import annotations

import importlib.metadata
import sys
import time
from typing import Any, Awaitable, Callable

from . import __version__
from .engine import Engine, Project
from .errors import RemoteDevError

Action = Callable[..., Awaitable[Any]]
ACTIONS: dict[str, Action] = {}


def action(func: Action) -> Action:
    ACTIONS[func.__name__.rstrip("_")] = func
    return func


def project_status(engine: Engine, proj: Project) -> dict[str, Any]:
    sess = proj.session()
    t = sess.target
    runs = proj.extras.get("runs", {})
    return {
        "root": str(proj.root),
        "config": str(proj.config.file),
        "target": t.name,
        "targets": list(proj.config.targets),
        "host": t.host,
        "runner": t.runner,
        "remote_root": sess.remote_root or t.remote_root,
        "connected": sess.connected,
        "python": sess.hello.get("python"),
        "agent": sess.hello.get("version"),
        "remote_host": sess.hello.get("host"),
        "rtt_ms": round(sess.rtt_ms, 1) if sess.rtt_ms is not None else None,
        "last_push": proj.last_push.get(t.name),
        "runs": [r.summary() for r in runs.values() if r.target == t.name],
        "error": sess.last_error,
        "push_on_save": proj.config.sync.push_on_save,
        "version": __version__,
    }


def publish_status(engine: Engine, proj: Project) -> dict[str, Any]:
    status = project_status(engine, proj)
    engine.report("status", status)
    return status


@action
async def status(engine: Engine, ctx: dict[str, Any], refresh: bool = True) -> dict[str, Any]:
    """Connect if needed, measure the round trip, and describe the target."""
    proj = engine.project(ctx)
    sess = proj.session()
    if refresh:
        try:
            await sess.ping()
        except RemoteDevError as e:
            sess.last_error = e.message
            publish_status(engine, proj)
            raise
    return publish_status(engine, proj)


@action
async def target(engine: Engine, ctx: dict[str, Any], name: str | None = None) -> dict[str, Any]:
    """Show the active target, or switch to another one (remembered per project)."""
    proj = engine.project(ctx)
    if name:
        proj.config.target(name)  # validates
        proj.target_name = name
        state = proj.state_dir()
        state.mkdir(parents=True, exist_ok=True)
        tmp = state / "target.tmp"
        tmp.write_text(name + "\n")
        tmp.replace(state / "target")
    return publish_status(engine, proj)


def _local_health() -> list[dict[str, str]]:
    out = [{"level": "ok", "text": f"Python host {sys.version.split()[0]} ({sys.executable})"}]
    for dist in ("pynvim", "asyncssh", "msgpack", "debugpy", "pathspec"):
        try:
            out.append({"level": "ok", "text": f"{dist} {importlib.metadata.version(dist)}"})
        except importlib.metadata.PackageNotFoundError:
            out.append({"level": "error", "text": f"{dist} is not installed in {sys.executable}: "
                                                  f"{sys.executable} -m pip install {dist}"})
    return out


@action
async def health(engine: Engine, ctx: dict[str, Any]) -> dict[str, Any]:
    """What :checkhealth shows: the local side, then the remote side when a project is found."""
    report: dict[str, Any] = {"local": _local_health(), "remote": None}
    try:
        proj = engine.project(ctx)
    except RemoteDevError as e:
        report["project"] = e.message
        return report
    sess = proj.session()
    t = sess.target
    items: list[dict[str, str]] = []
    report["project"] = f"{proj.config.file} (target {t.name}: {t.host}:{t.remote_root}, runner {t.runner})"
    report["remote"] = items
    try:
        t0 = time.perf_counter()
        await sess.ensure()
        items.append({"level": "ok", "text": f"ssh to {t.host}: connected in {(time.perf_counter() - t0) * 1000:.0f} ms "
                                             f"(host key verified)"})
    except RemoteDevError as e:
        items.append({"level": "error", "text": e.message})
        return report
    rtt = await sess.ping()
    py = sess.hello.get("python", "?")
    items.append({"level": "ok", "text": f"remote {t.python}: Python {py}"})
    items.append({"level": "ok", "text": f"agent {sess.hello.get('version')} answers (round trip {rtt:.1f} ms)"})
    root = await sess.call("stat_root", t.remote_root)
    free = root.get("free_bytes")
    free_txt = f"{free / 1e9:.1f} GB free" if free is not None else "free space unknown"
    level = "ok" if free is None or free > 5e9 else "warn"
    state = "exists" if root["exists"] else "will be created on the first push"
    items.append({"level": level if root.get("writable") else "error",
                  "text": f"remote_root {root['path']} {state}; {free_txt}"
                          + ("" if root.get("writable") else "; NOT writable")})
    found = await sess.call("which", ["docker", "podman", "sbatch", "squeue", "scancel", "nvidia-smi"])
    for tool in ("docker", "podman"):
        items.append({"level": "ok" if found[tool] else "info",
                      "text": f"{tool}: {found[tool]}" if found[tool] else f"{tool}: not found"})
    slurm = [n for n in ("sbatch", "squeue", "scancel") if found[n]]
    items.append({"level": "ok" if len(slurm) == 3 else ("warn" if t.runner == "slurm" else "info"),
                  "text": f"slurm: {', '.join(found[n] for n in slurm)}" if slurm else "slurm: sbatch not found"})
    if found["nvidia-smi"]:
        res = await sess.call("exec", ["nvidia-smi", "-L"], 20, t.env)
        text = res["stdout"].decode(errors="replace").strip() or res["stderr"].decode(errors="replace").strip()
        items.append({"level": "ok" if res["code"] == 0 else "warn", "text": f"GPUs: {text}"})
    else:
        items.append({"level": "info", "text": "GPUs: nvidia-smi not found"})
    from .runners import runner_health  # noqa: PLC0415

    items.extend(await runner_health(engine, proj, sess, found))
    return report


from . import runs as _runs  # noqa: E402,F401  - registers the run actions
from . import sync as _sync  # noqa: E402,F401  - registers the sync actions
from . import debug as _debug  # noqa: E402,F401  - registers the debug and forward actions
