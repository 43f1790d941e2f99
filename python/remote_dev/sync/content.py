"""What a file's content is (its hash) and when replacing a file loses work (the conflict
rule): the local copies of the two facts the agent applies on the remote.

The agent (python/remote_dev/agent) keeps its own copy of both (``file_hash``,
``link_hash``, ``conflict_reason``), since it runs with the stdlib only on the remote; they
must stay identical.  When the shared protocol module exists, this module becomes an
import of it: nothing else in sync hashes content or states the rule.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

HASH_BLOCK = 1 << 20
O_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)


def digest(data: bytes | memoryview) -> str:
    """Content hash shared with the agent: sha256 truncated to 128 bits."""
    return hashlib.sha256(data).hexdigest()[:32]


def link_hash(target: str) -> str:
    """A symlink's "content": its target, marked so that it never equals a file's hash."""
    return digest(b"link:" + os.fsencode(target))


def file_hash(path: str | os.PathLike[str]) -> str:
    """digest() of a file read in blocks, never following a final symlink."""
    h = hashlib.sha256()
    fd = os.open(path, os.O_RDONLY | O_NOFOLLOW)
    with os.fdopen(fd, "rb") as f:
        while block := f.read(HASH_BLOCK):
            h.update(block)
    return h.hexdigest()[:32]


def new_hasher() -> Any:
    """For content arriving in chunks: .update(block), then finish(hasher)."""
    return hashlib.sha256()


def finish(hasher: Any) -> str:
    return hasher.hexdigest()[:32]


def entry_hash(root: Path, rel: str, kind: str, target: str | None) -> str:
    """The hash of a local file or symlink (kind "f" or "l")."""
    return link_hash(target or "") if kind == "l" else file_hash(root / rel)


class State(NamedTuple):
    """What is at a path on one side: kind "f" file, "l" symlink, "d" folder, "o" other."""
    kind: str
    size: int
    mtime_ns: int
    hash: str | None = None


WORDS = {
    "remote": ("exists on the remote and differs (never pushed by remote_dev)",
               "changed on the remote since the last sync"),
    "local": ("exists locally and differs", "changed locally since the last sync"),
}


def conflict_reason(current: State | None, expect: State | None, new_hash: str | None,
                    current_hash: Callable[[], str | None] | None = None, side: str = "remote") -> str | None:
    """None when what is at a path may be replaced by content new_hash: nothing is there,
    or it is what the last sync left (expect: same stat, or same content), or it already
    has the new content.  Otherwise why not, in a few words.

    current: the path's state now; its hash is current.hash, else current_hash() is asked
    (only when the stat does not settle it).  side: whose file it is ("remote" for pushes,
    "local" for pulls), for the wording."""
    if current is None:
        return None  # absent (or deleted there): writing it loses nothing
    if current.kind == "d":
        return "a folder is in the way"
    if current.kind == "o":
        return "something other than a file is in the way"
    if expect is not None and current[:3] == expect[:3]:
        return None
    have = current.hash if current.hash is not None or current_hash is None else current_hash()
    if have is not None and (have == new_hash or (expect is not None and have == expect.hash)):
        return None
    never, changed = WORDS[side]
    return never if expect is None else changed
