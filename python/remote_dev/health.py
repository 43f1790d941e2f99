"""What :checkhealth remote_dev (and `remote-dev health`) checks: the local side, then the
remote side of the current project (ssh, python, agent, remote_root, container engines,
Slurm, GPUs, and the runner's own checks)."""

from __future__ import annotations

import importlib.metadata
import sys
import time
from typing import Any

from .engine import Engine
from .errors import RemoteDevError
from .runners import runner_of
from .services import health_items as services_health


def local_health() -> list[dict[str, str]]:
    out = [{"level": "ok", "text": f"Python host {sys.version.split()[0]} ({sys.executable})"}]
    for dist in ("pynvim", "asyncssh", "msgpack", "debugpy", "pathspec"):
        try:
            out.append({"level": "ok", "text": f"{dist} {importlib.metadata.version(dist)}"})
        except importlib.metadata.PackageNotFoundError:
            out.append({"level": "error", "text": f"{dist} is not installed in {sys.executable}: "
                                                  f"{sys.executable} -m pip install {dist}"})
    return out


async def health_report(engine: Engine, ctx: dict[str, Any]) -> dict[str, Any]:
    """What :checkhealth shows: the local side, then the remote side when a project is found."""
    report: dict[str, Any] = {"local": local_health(), "remote": None}
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
    runner = runner_of(sess)
    items.append({"level": "ok" if len(slurm) == 3 else ("warn" if "sbatch" in runner.probes else "info"),
                  "text": f"slurm: {', '.join(found[n] for n in slurm)}" if slurm else "slurm: sbatch not found"})
    if found["nvidia-smi"]:
        res = await sess.call("exec", ["nvidia-smi", "-L"], 20, t.env)
        text = res["stdout"].decode(errors="replace").strip() or res["stderr"].decode(errors="replace").strip()
        items.append({"level": "ok" if res["code"] == 0 else "warn", "text": f"GPUs: {text}"})
    else:
        items.append({"level": "info", "text": "GPUs: nvidia-smi not found"})
    items.extend(await runner.health(proj, sess, found))
    items.extend(await services_health(sess))
    return report
