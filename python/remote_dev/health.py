"""What :checkhealth remote_dev (and `remote-dev health`) checks: the local side, then the
remote side of the current project (ssh, python, agent, remote_root, container engines,
Slurm, GPUs, and the runner's own checks)."""

from __future__ import annotations

import importlib.metadata
import sys
import time
from pathlib import Path
from typing import Any

from .debug_launch import debugpys
from .engine import Engine
from .errors import RemoteDevError
from .runners import runner_of
from .services import health_items as services_health


# What scripts/install-host installed, pip's names and versions resolved from the lock for
# this Python (its first line names the lock): :checkhealth compares the packages with it
LOCKED = Path(sys.prefix) / "share" / "remote-dev" / "locked.txt"
SHOWN = ("pynvim", "asyncssh", "cryptography", "msgpack", "debugpy", "pathspec", "zlib-ng", "jupyter_client")


def read_locked(path: Path | None = None) -> tuple[str, dict[str, str]]:
    """(the lock's name, {package: version}) of what scripts/install-host installed."""
    path = path or LOCKED
    lines = path.read_text().splitlines()
    name = lines[0].lstrip("# ").strip() if lines and lines[0].startswith("#") else str(path)
    pins = dict(ln.split("==", 1) for ln in lines if "==" in ln and not ln.startswith("#"))
    return name, pins


def installed(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def local_health() -> list[dict[str, str]]:
    out = [{"level": "ok", "text": f"Python host {sys.version.split()[0]} ({sys.executable})"}]
    lock, pins = read_locked() if LOCKED.exists() else ("", {})
    for dist in SHOWN:
        have = installed(dist)
        if have is None:
            out.append({"level": "error", "text": f"{dist} is not installed in {sys.executable}: run scripts/install-host "
                                                  f"(or {sys.executable} -m pip install <plugin dir>)"})
        else:
            locked = pins.get(dist)
            note = "" if not lock else " (locked)" if locked == have else f" (the lock says {locked})"
            out.append({"level": "ok", "text": f"{dist} {have}{note}"})
    out.append(lock_item(lock, pins))
    out.append(older_debugpy_item())
    return out


def lock_item(lock: str, pins: dict[str, str]) -> dict[str, str]:
    """Whether the packages are the ones the suite passed with."""
    if not lock:
        return {"level": "info", "text": f"{sys.executable} was not set up by scripts/install-host: its packages are "
                                         f"whatever it has, not the tested versions of locks/host.txt"}
    differ = [f"{dist} {have or 'missing'} (locked {want})" for dist, want in sorted(pins.items())
              if (have := installed(dist)) != want]
    if differ:
        return {"level": "warn", "text": f"{len(differ)} of {len(pins)} packages differ from {lock}: "
                                         f"{', '.join(differ[:6])}{' ...' if len(differ) > 6 else ''}; "
                                         f"scripts/install-host puts the tested versions back"}
    return {"level": "ok", "text": f"all {len(pins)} packages at the tested versions of {lock}"}


def older_debugpy_item() -> dict[str, str]:
    have = debugpys()
    if len(have) > 1:
        older = ", ".join(f"{d.version} for Python >= {d.min_python[0]}.{d.min_python[1]}" for d in have[1:])
        return {"level": "ok", "text": f"debugpy uploaded to older remote Pythons: {older}"}
    newest = have[0]
    return {"level": "warn", "text": f"only debugpy {newest.version} (Python >= {newest.min_python[0]}."
                                     f"{newest.min_python[1]}): :RemoteDebug on remotes with an older Python needs "
                                     f"scripts/install-host (it adds the release of locks/remote-debugpy.txt)"}


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
