"""What :RemoteStatus and ``require('remote_dev').status()`` show, and publishing it.

Below the features (sync, runs, debug call ``publish_status`` after they change something)
and above the engine.  The one renderer of :RemoteStatus is here: a status carries its
``lines``, which Lua (:RemoteStatus) and the CLI (`remote-dev status`) print as they are."""

from __future__ import annotations

import time
from typing import Any, Callable

from . import __version__
from .engine import Engine, Project

# Parts features add to the status, by key: part(project) -> value (wiring.py registers
# them: shells, kernel, notebook; the allocation).  Instant: from what the feature last saw.
STATUS_PARTS: dict[str, Callable[[Project], Any]] = {}
# Their lines in :RemoteStatus, by the same key: lines(status) -> [str] (wiring.py).
STATUS_LINES: dict[str, Callable[[dict[str, Any]], list[str]]] = {}


def since(s: dict[str, Any]) -> str:
    """', since 09:12 (3 h 5 min)': when the login now serving was made, and how when not a
    login of our own (', through your OpenSSH master connection (...)')."""
    t = s.get("connected_since")
    if not t:
        return ""
    mins = int(max(0, time.time() - t) // 60)
    via = f", through {s['connected_via']}" if s.get("connected_via") else ""
    return f", since {time.strftime('%H:%M', time.localtime(t))} ({mins // 60} h {mins % 60} min){via}"


def status_lines(s: dict[str, Any]) -> list[str]:
    """:RemoteStatus as lines (columns of 12)."""
    lp = s.get("last_push")
    runs = s.get("runs") or []
    connected = "yes" + since(s) if s["connected"] else "no" + (f": {s['error']}" if s.get("error") else "")
    lines = [
        f"target      {s['target']} ({s['runner']} runner)  [{', '.join(s.get('targets') or [])}]",
        f"host        {s['host']}" + (f" ({s['remote_host']})" if s.get("remote_host") else ""),
        f"remote_root {s['remote_root']}",
        f"connected   {connected}",
        f"python      {s.get('python') or '?'}",
        f"agent       {s.get('agent') or '?'}",
        f"round trip  {str(s['rtt_ms']) + ' ms' if s.get('rtt_ms') is not None else '?'}",
        (f"last push   {lp['files']} files, {lp['bytes']} bytes, {lp['ms']:.0f} ms, "
         f"{time.strftime('%H:%M:%S', time.localtime(lp['time']))}") if lp else "last push   never (this session)",
        f"runs        {len(runs)} ({sum(1 for r in runs if r.get('live'))} live)",
    ]
    big = (lp or {}).get("too_large") or []
    if big:
        lines.insert(8, "not pushed  " + ", ".join(f"{f['path']} ({f['size'] / 1e6:.1f} MB)" for f in big)
                     + ": over sync.max_file_size")
    for lines_of in STATUS_LINES.values():
        lines += lines_of(s)
    return lines


def project_status(proj: Project) -> dict[str, Any]:
    sess = proj.session()
    t = sess.target
    status = {
        "root": str(proj.root),
        "config": str(proj.config.file),
        "target": t.name,
        "targets": list(proj.config.targets),
        "host": t.host,
        "runner": t.runner,
        "remote_root": sess.remote_root or t.remote_root,
        "connected": sess.connected,
        "connected_since": sess.connected_since if sess.connected else None,
        "connected_via": sess.via if sess.connected else None,
        "python": sess.hello.get("python"),
        "agent": sess.hello.get("version"),
        "remote_host": sess.hello.get("host"),
        "rtt_ms": round(sess.rtt_ms, 1) if sess.rtt_ms is not None else None,
        "last_push": proj.last_push.get(t.name),
        "runs": [r.summary() for r in proj.runs.values() if r.target == t.name],
        "error": sess.last_error,
        "push_on_save": proj.config.sync.push_on_save,
        "version": __version__,
        **{key: part(proj) for key, part in STATUS_PARTS.items()},
    }
    status["lines"] = status_lines(status)
    return status


def publish_status(engine: Engine, proj: Project) -> dict[str, Any]:
    status = project_status(proj)
    engine.report("status", status)
    return status
