"""What :RemoteStatus and ``require('remote_dev').status()`` show, and publishing it.

Below the features (sync, runs, debug call ``publish_status`` after they change something)
and above the engine."""

from __future__ import annotations

from typing import Any, Callable

from . import __version__
from .engine import Engine, Project

# Parts features add to the status, by key: part(project) -> value (services.py: shells,
# kernel, notebook).  Instant: from what the feature last saw.
STATUS_PARTS: dict[str, Callable[[Project], Any]] = {}


def project_status(proj: Project) -> dict[str, Any]:
    sess = proj.session()
    t = sess.target
    return {
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


def publish_status(engine: Engine, proj: Project) -> dict[str, Any]:
    status = project_status(proj)
    engine.report("status", status)
    return status
