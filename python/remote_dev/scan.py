"""The local tree as sync sees it: git's own ignore rules plus sync.exclude.

In a git work tree git itself answers (`git ls-files -co --exclude-standard`: .gitignore at
every level, .git/info/exclude, core.excludesFile).  Elsewhere the .gitignore files are read
with pathspec's git-compatible matcher, walking the tree the way git does (an ignored folder
is not entered, a deeper .gitignore overrides a shallower one).  `.git/` is never listed.
"""

from __future__ import annotations

import os
import stat
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import pathspec


@dataclass(frozen=True)
class LocalEntry:
    kind: str          # "f" file, "l" symlink
    size: int
    mtime_ns: int
    mode: int
    target: str | None = None   # symlink target


def _git_listing(root: Path, paths: Iterable[str] | None = None) -> list[str] | None:
    """Paths git would consider (tracked + untracked not ignored), limited to the given
    paths (relative to root) when any, or None when root is not inside a git work tree."""
    try:
        inside = subprocess.run(["git", "-C", str(root), "rev-parse", "--is-inside-work-tree"],
                                capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if inside.returncode != 0 or inside.stdout.strip() != "true":
        return None
    argv = ["git", "-c", "core.quotepath=off", "ls-files", "-z", "-c", "-o", "--exclude-standard"]
    if paths is not None:
        argv += ["--", *(f":(literal){p}" for p in paths)]
    out = subprocess.run(argv, cwd=root, capture_output=True, timeout=120)
    if out.returncode != 0:
        return None
    seen: set[str] = set()
    paths = []
    for raw in out.stdout.split(b"\0"):
        if raw:
            p = os.fsdecode(raw)
            if p not in seen:  # a tracked file in conflict is listed once per stage
                seen.add(p)
                paths.append(p)
    return paths


def _walk_with_gitignore(root: Path) -> list[str]:
    paths: list[str] = []
    # stack of (prefix relative to root, spec) from the .gitignore files above a folder
    def walk(rel_dir: str, specs: list[tuple[str, pathspec.GitIgnoreSpec]]) -> None:
        full = root / rel_dir if rel_dir else root
        gi = full / ".gitignore"
        if gi.is_file():
            try:
                lines = gi.read_text(errors="replace").splitlines()
            except OSError:
                lines = []
            specs = specs + [(rel_dir, pathspec.GitIgnoreSpec.from_lines(lines))]
        try:
            entries = sorted(os.scandir(full), key=lambda e: e.name)
        except OSError:
            return
        for entry in entries:
            if entry.name == ".git":
                continue
            rel = f"{rel_dir}/{entry.name}" if rel_dir else entry.name
            is_dir = entry.is_dir(follow_symlinks=False)
            if _ignored(rel, is_dir, specs):
                continue
            if is_dir:
                walk(rel, specs)
            else:
                paths.append(rel)
    walk("", [])
    return paths


def _ignored(rel: str, is_dir: bool, specs: list[tuple[str, pathspec.GitIgnoreSpec]]) -> bool:
    for prefix, spec in reversed(specs):
        sub = rel[len(prefix) + 1:] if prefix else rel
        result = spec.check_file(sub + "/" if is_dir else sub)
        if result.include is not None:
            return bool(result.include)
    return False


class Excluder:
    """sync.exclude and sync.pull (never pushed) on top of git's rules."""

    def __init__(self, exclude: Iterable[str], pull: Iterable[str]) -> None:
        self.spec = pathspec.GitIgnoreSpec.from_lines(list(exclude) + list(pull) + [".git/"])

    def excluded(self, rel: str) -> bool:
        return self.spec.match_file(rel)  # a folder pattern ("data/") covers what is under it


def lstat_entry(path: Path) -> LocalEntry | None:
    try:
        st = os.lstat(path)
    except (FileNotFoundError, NotADirectoryError):
        return None
    if stat.S_ISLNK(st.st_mode):
        return LocalEntry("l", st.st_size, st.st_mtime_ns, 0o777, os.readlink(path))
    if stat.S_ISREG(st.st_mode):
        return LocalEntry("f", st.st_size, st.st_mtime_ns, stat.S_IMODE(st.st_mode))
    return None


def scan(root: Path, exclude: Iterable[str] = (), pull: Iterable[str] = (),
         paths: list[str] | None = None) -> dict[str, LocalEntry]:
    """Every file and symlink that a push sends, by path relative to root: the whole tree,
    or what lies at or under the given relative paths."""
    listing = _git_listing(root, paths)
    if listing is None:
        listing = _walk_with_gitignore(root)
        if paths is not None:
            wanted = [p.rstrip("/") for p in paths]
            listing = [r for r in listing if any(r == w or r.startswith(w + "/") or w in ("", ".") for w in wanted)]
    excluder = Excluder(exclude, pull)
    out: dict[str, LocalEntry] = {}
    for rel in listing:
        if excluder.excluded(rel):
            continue
        entry = lstat_entry(root / rel)
        if entry is not None:
            out[rel] = entry
    return out
