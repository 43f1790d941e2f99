"""sync.include: files that .gitignore leaves out but the project needs on the remote (a
data set, a local config), and why a path someone named is not pushed.

Include patterns are gitignore syntax, relative to the root, and win over .gitignore (and
.git/info/exclude, the global excludes file); sync.exclude and the sync.pull folders still
win over them.  ``included`` lists the ignored files they match: in a git work tree from
``git ls-files --others --ignored`` limited to the patterns, elsewhere by a walk.
``ignored_by`` names the rule that leaves a path out ("ignored by .gitignore:3").
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterable
from pathlib import Path

from .ignore import _spec, _verdict, global_excludes_file, is_git_component

GIT_TIMEOUT = 60.0


class Includer:
    """Matches the sync.include patterns (git-exact, as sync.exclude is)."""

    def __init__(self, patterns: Iterable[str]) -> None:
        self.patterns = tuple(patterns)
        self.spec = _spec(self.patterns)

    def __bool__(self) -> bool:
        return self.spec is not None

    def matches(self, rel: str) -> bool:
        if self.spec is None:
            return False
        parts = rel.split("/")
        for i in range(1, len(parts)):   # a pattern naming a folder includes what is under it
            if _verdict(self.spec, "/".join(parts[:i]) + "/") is True:
                return True
        return _verdict(self.spec, rel) is True

    def pathspecs(self) -> list[str]:
        """git pathspecs that hold at least what the patterns match."""
        out = []
        for p in self.patterns:
            if p.startswith("!") or not p.strip():
                continue
            body = p.strip()
            anchored = body.startswith("/") or "/" in body.rstrip("/")
            body = body.strip("/")
            out.append(f":(glob){'' if anchored else '**/'}{body}")
            out.append(f":(glob){'' if anchored else '**/'}{body}/**")
        return out


def included(root: Path, includer: Includer, paths: list[str] | None, use_git: bool) -> list[str]:
    """The files under root (or under the named relative paths) that .gitignore leaves out
    and the include patterns take back, relative to root."""
    if not includer:
        return []
    found: list[str] | None = None
    if use_git:
        specs = [f":(literal){p}" for p in paths] if paths is not None else includer.pathspecs()
        try:
            out = subprocess.run(["git", "-c", "core.quotepath=off", "ls-files", "-z", "--others", "--ignored",
                                  "--exclude-standard", "--", *specs], cwd=root, capture_output=True,
                                 timeout=GIT_TIMEOUT, stdin=subprocess.DEVNULL)
            if out.returncode == 0:
                found = [n.decode("utf-8", "surrogateescape") for n in out.stdout.split(b"\0") if n]
        except (OSError, subprocess.TimeoutExpired):
            found = None
    if found is None:
        found = list(_walk(root, paths))
    return [rel for rel in found if not is_git_component(rel) and includer.matches(rel)]


def _walk(root: Path, paths: list[str] | None) -> Iterable[str]:
    base = str(root)
    for start in (paths if paths is not None else [""]):
        top = os.path.join(base, start) if start else base
        if os.path.isfile(top) or os.path.islink(top):
            yield start
            continue
        for folder, dirs, files in os.walk(top):
            dirs[:] = [d for d in dirs if d != ".git"]
            rel_dir = os.path.relpath(folder, base)
            for name in files:
                yield name if rel_dir == "." else f"{rel_dir}/{name}".replace(os.sep, "/")


def ignored_by(root: Path, rel: str) -> str | None:
    """The rule that leaves rel out of the tree, as "FILE:LINE" relative to root when the
    file is inside it (".gitignore:3", "data/.gitignore:1", ".git/info/exclude:2"), else
    the file's path; None when no ignore rule matches."""
    try:
        out = subprocess.run(["git", "check-ignore", "-v", "--no-index", "--", rel], cwd=root,
                             capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL)
        if out.returncode == 0 and out.stdout:
            source, line = out.stdout.split("\t", 1)[0].split(":")[:2]
            return f"{shown_source(root, source)}:{line}"
        if out.returncode == 1:
            return None
    except (OSError, subprocess.TimeoutExpired, ValueError):
        pass
    return _walk_rules(root, rel)


def shown_source(root: Path, source: str) -> str:
    """An ignore file's name as a person reads it: relative to root when inside it."""
    full = os.path.normpath(source if os.path.isabs(source) else os.path.join(str(root), source))
    inside = os.path.relpath(full, str(root))
    return full if inside.startswith("..") else inside


def _walk_rules(root: Path, rel: str) -> str | None:
    """Without git: the last matching line of the .gitignore files from root down to rel's
    folder (a deeper file wins), then the global excludes file."""
    parts = rel.split("/")
    hit = None
    for depth in range(len(parts)):
        folder = "/".join(parts[:depth])
        ignore_file = os.path.join(str(root), folder, ".gitignore")
        below = "/".join(parts[depth:])
        try:
            with open(ignore_file, encoding="utf-8", errors="surrogateescape") as f:
                lines = f.read().splitlines()
        except OSError:
            continue
        for number, line in enumerate(lines, 1):
            spec = _spec([line])
            if spec is not None and _matches_or_parent(spec, below):
                hit = f"{folder + '/' if folder else ''}.gitignore:{number}"
    if hit is None:
        excludes = global_excludes_file()
        if excludes and os.path.isfile(excludes):
            with open(excludes, encoding="utf-8", errors="surrogateescape") as f:
                for number, line in enumerate(f.read().splitlines(), 1):
                    spec = _spec([line])
                    if spec is not None and _matches_or_parent(spec, rel):
                        hit = f"{excludes}:{number}"
    return hit


def _matches_or_parent(spec: object, rel: str) -> bool:
    parts = rel.split("/")
    if any(_verdict(spec, "/".join(parts[:i]) + "/") for i in range(1, len(parts))):  # type: ignore[arg-type]
        return True
    return bool(_verdict(spec, rel))  # type: ignore[arg-type]
