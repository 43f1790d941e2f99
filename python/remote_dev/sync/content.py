"""What a file's content is (its hash) and when replacing a file loses work (the conflict
rule), for sync: both facts come from the agent's protocol module, which the agent applies
on the remote, so the two sides cannot drift apart.  Nothing else in sync hashes content or
states the rule.
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

from ..agent.protocol import (
    HASH_BLOCK,
    LINK,
    O_NOFOLLOW,
    conflict_reason,
    digest,
    file_hash,
    hasher_digest as finish,
    link_hash,
    new_hasher,
)

__all__ = ["HASH_BLOCK", "O_NOFOLLOW", "State", "conflict_reason", "digest", "entry_hash", "file_hash", "finish",
           "link_hash", "new_hasher"]


def entry_hash(root: Path, rel: str, kind: str, target: str | None) -> str:
    """The hash of a local file or symlink (kind "f" or "l")."""
    return link_hash(target or "") if kind == LINK else file_hash(root / rel)


class State(NamedTuple):
    """What is at a path on one side: kind "f" file, "l" symlink, "d" folder, "o" other."""
    kind: str
    size: int
    mtime_ns: int
    hash: str | None = None
