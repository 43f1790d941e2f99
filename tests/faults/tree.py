"""A project tree whose every version of every file is known, to tell a whole file on the
remote from a partial one, and the checks the push faults share."""

from __future__ import annotations

import hashlib
import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path

TMP_MARK = ".rdtmp-"


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass
class Tree:
    root: Path
    rng: random.Random
    versions: dict[str, set[str]] = field(default_factory=dict)   # rel -> every content written

    def put(self, rel: str, data: bytes) -> None:
        p = self.root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
        self.versions.setdefault(rel, set()).add(digest(data))

    def blob(self, size: int) -> bytes:
        return self.rng.randbytes(size)

    def build(self, small: int, large: list[int]) -> None:
        for i in range(small):
            self.put(f"src/m{i // 40}/f{i}.py", self.blob(self.rng.randint(200, 20000)))
        for i, size in enumerate(large):
            self.put(f"data/big{i}.bin", self.blob(size))

    def change(self, small: int, large: bool = True) -> None:
        """New content for some small files and for every large one."""
        rels = sorted(self.versions)
        for rel in self.rng.sample([r for r in rels if r.startswith("src/")], small):
            self.put(rel, self.blob(self.rng.randint(200, 20000)))
        if large:
            for rel in [r for r in rels if r.startswith("data/")]:
                self.put(rel, self.blob((self.root / rel).stat().st_size))


def remote_state(remote_dir: Path) -> tuple[dict[str, str], list[str]]:
    """({rel: digest} of the files under remote_dir, [temporaries])."""
    files: dict[str, str] = {}
    temps: list[str] = []
    for dirpath, _, names in os.walk(remote_dir):
        for name in names:
            full = os.path.join(dirpath, name)
            rel = os.path.relpath(full, remote_dir)
            if TMP_MARK in name:
                temps.append(rel)
            elif os.path.isfile(full) and not os.path.islink(full):
                files[rel] = digest(Path(full).read_bytes())
    return files, temps


def partial_files(tree: Tree, remote_dir: Path) -> list[str]:
    """Remote files whose content is none of the versions written locally."""
    files, _ = remote_state(remote_dir)
    return [rel for rel, d in files.items() if rel in tree.versions and d not in tree.versions[rel]]


def temps_after(remote_dir: Path, timeout: float) -> list[str]:
    """Temporaries still under remote_dir after timeout (an agent removes its own when its
    channel closes; give it the time to see the close)."""
    deadline = time.monotonic() + timeout
    while True:
        _, temps = remote_state(remote_dir)
        if not temps or time.monotonic() > deadline:
            return temps
        time.sleep(0.1)


def same_as_local(tree: Tree, remote_dir: Path) -> list[str]:
    """Paths where the remote differs from the local tree (after a push that converged)."""
    files, _ = remote_state(remote_dir)
    out = []
    for rel in tree.versions:
        want = digest((tree.root / rel).read_bytes())
        if files.get(rel) != want:
            out.append(rel)
    return out
