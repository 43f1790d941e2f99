"""What a push or pull did, per path problems included, and how it is told to the user.

Problems are per path, each with a reason in a few words: conflicts (left alone; ``!``
overwrites), errors (the other side refused or failed), skipped (not sent, for a reason
of this side: over sync.max_file_size, unreadable).  ``done_payload`` is the data of the
RemoteDevPushDone / RemoteDevPullDone events (and of the dry run's preview);
``summarize`` the one line message.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

TOO_LARGE = "over sync.max_file_size"


@dataclass
class SyncResult:
    """The outcome of one push or pull (a dry run fills send/delete instead of files)."""
    files: int = 0
    bytes: int = 0
    wire: int = 0            # bytes that crossed the wire for content (compressed, only tails...)
    copied: int = 0          # files the remote copied from content it held (of files)
    deleted: int = 0
    unchanged: int = 0
    conflicts: list[dict[str, str]] = field(default_factory=list)
    errors: list[dict[str, str]] = field(default_factory=list)
    skipped: list[dict[str, Any]] = field(default_factory=list)
    send: list[str] = field(default_factory=list)
    delete: list[str] = field(default_factory=list)

    def conflict(self, rel: str, reason: str) -> None:
        self.conflicts.append({"path": rel, "reason": reason})

    def error(self, rel: str, reason: str) -> None:
        self.errors.append({"path": rel, "reason": reason})

    def not_pushed(self) -> list[str]:
        """Paths to look at again on the next push."""
        return [p["path"] for p in self.conflicts + self.errors + self.skipped]


def too_large(rel: str, size: int, limit: int) -> dict[str, Any]:
    return {"path": rel, "size": size, "reason": f"{TOO_LARGE} ({human(limit)})"}


def unreadable(rel: str, size: int | None, err: OSError) -> dict[str, Any]:
    """A local file this user cannot read (or that vanished while being read)."""
    out: dict[str, Any] = {"path": rel, "reason": f"cannot read: {err.strerror or err}"}
    if size is not None:
        out["size"] = size
    return out


def is_too_large(skipped: dict[str, Any]) -> bool:
    return str(skipped.get("reason", "")).startswith(TOO_LARGE)


def done_payload(root: Path, target: str, res: SyncResult, ms: float, host: str = "") -> dict[str, Any]:
    return {
        "target": target, "host": host, "files": res.files, "bytes": res.bytes, "wire_bytes": res.wire, "ms": round(ms, 1),
        "copied": res.copied,
        "deleted": res.deleted, "unchanged": res.unchanged,
        "conflicts": [c["path"] for c in res.conflicts],
        "conflict_details": [dict(c, local=str(root / c["path"])) for c in res.conflicts],
        "errors": res.errors, "skipped": res.skipped, "root": str(root),
    }


def _some(items: list[str], n: int = 5) -> str:
    return ", ".join(items[:n]) + (" …" if len(items) > n else "")


def summarize(kind: str, data: dict[str, Any]) -> tuple[str, str]:
    """(message, level) for a push or pull payload: "info" when all went well, "warn"
    for conflicts and skipped files, "error" for errors."""
    wire = data.get("wire_bytes") or 0
    on_wire = f" ({human(wire)} on the wire)" if data["bytes"] and wire < 0.9 * data["bytes"] else ""
    if data.get("copied"):
        on_wire = f" ({human(wire)} on the wire, {data['copied']} files copied there)"
    parts = [f"{kind} {data['target']}: {data['files']} files, {human(data['bytes'])}{on_wire} in "
             f"{data['ms'] / 1000:.2f} s"]
    if data.get("deleted"):
        parts.append(f"{data['deleted']} deleted")
    level = "info"
    if data["conflicts"]:
        level = "warn"
        bang = ":RemotePush!" if kind == "push" else ":RemotePull!"
        parts.append(f"{len(data['conflicts'])} conflict(s), not overwritten: {_some(data['conflicts'])}"
                     f" (see quickfix; {bang} overwrites)")
    if data.get("errors"):
        level = "error"
        where = f" on {data['host']}" if data.get("host") else ""
        parts.append(f"{len(data['errors'])} error(s){where}: " + "; ".join(f"{e['path']}: {e['reason']}" for e in data["errors"][:3]))
    skipped = data.get("skipped") or []
    large = [s for s in skipped if s["reason"].startswith(TOO_LARGE)]
    other = [s for s in skipped if not s["reason"].startswith(TOO_LARGE)]
    if skipped:
        level = "warn" if level == "info" else level
    if large:
        parts.append(f"not pushed, {large[0]['reason']}: " + _some([f"{s['path']} ({human(s['size'])})" for s in large])
                     + " — raise sync.max_file_size (bytes) in .remote-dev.toml to push them, or add them to sync.exclude")
    if other:
        parts.append("not pushed: " + _some([f"{s['path']} ({s['reason']})" for s in other], 3))
    return "; ".join(parts), level


def human(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} GB"
