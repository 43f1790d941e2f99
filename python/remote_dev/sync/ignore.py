"""Which paths sync leaves out: git's ignore rules without git (the Walker), the global
excludes file, and sync.exclude / sync.pull (the Excluder).

The Walker lists a tree the way ``git ls-files -co --exclude-standard`` does, for
projects that are not in a git work tree (or whose root an enclosing repository
ignores): .gitignore files read with pathspec's git-compatible matcher, an ignored folder
never entered (so nothing under it can be re-included), a deeper .gitignore overriding a
shallower one, the global excludes file (core.excludesFile, else
$XDG_CONFIG_HOME/git/ignore) with the lowest priority.  `.git` is never listed; a nested
repository is listed as "dir/" (its own rules apply inside).  Symlinks are entries of
their own, never entered.
"""

from __future__ import annotations

import os
import stat
import subprocess
import threading
from collections.abc import Iterable, Iterator
from pathlib import Path

import pathspec

Specs = list[tuple[str, pathspec.GitIgnoreSpec]]   # (folder the .gitignore is in, its rules), outermost first


def _spec(lines: Iterable[str]) -> pathspec.GitIgnoreSpec | None:
    spec = pathspec.GitIgnoreSpec.from_lines(list(lines))
    return spec if len(spec.patterns) else None


def _verdict(spec: pathspec.GitIgnoreSpec, path: str) -> bool | None:
    """True: ignored, False: re-included by a negation, None: no pattern matches."""
    return spec.check_file(path).include


def _read_ignore_file(path: str) -> pathspec.GitIgnoreSpec | None:
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError:
        return None
    return _spec(data.decode("utf-8", errors="surrogateescape").splitlines())


# --------------------------------------------------------------------------- global excludes

_global_cache: dict[tuple[str | None, ...], tuple[tuple[str, int] | None, pathspec.GitIgnoreSpec | None]] = {}
_global_lock = threading.Lock()


def global_excludes_file() -> str | None:
    """git's core.excludesFile (from the global/system config, GIT_CONFIG_GLOBAL included),
    else $XDG_CONFIG_HOME/git/ignore or ~/.config/git/ignore."""
    home = os.path.expanduser("~")
    try:
        out = subprocess.run(["git", "config", "--path", "--get", "core.excludesFile"], capture_output=True,
                             text=True, timeout=10, check=False, cwd=home if os.path.isdir(home) else "/")
        if out.returncode == 0 and out.stdout.strip():
            return os.path.expanduser(out.stdout.strip())
    except (OSError, subprocess.TimeoutExpired):
        pass
    xdg = os.environ.get("XDG_CONFIG_HOME") or os.path.join(home, ".config")
    return os.path.join(xdg, "git", "ignore")


def mtime(path: str | None) -> int:
    try:
        return os.stat(path).st_mtime_ns if path else -1
    except OSError:
        return -1


def global_excludes_file_cached() -> str | None:
    """The global excludes file as the last global_excludes() found it."""
    if not _global_cache:
        global_excludes()
    for stamp, _ in _global_cache.values():
        return stamp[0] if stamp else None
    return None


def global_excludes() -> pathspec.GitIgnoreSpec | None:
    """The global excludes as a spec; cached while the git config files and the excludes
    file stay the same."""
    home = os.path.expanduser("~")
    gcfg = os.environ.get("GIT_CONFIG_GLOBAL")
    key = (gcfg, os.environ.get("XDG_CONFIG_HOME"), home, os.environ.get("GIT_CONFIG_NOSYSTEM"),
           os.environ.get("GIT_CONFIG_SYSTEM"), str(mtime(gcfg)), str(mtime(os.path.join(home, ".gitconfig"))),
           str(mtime("/etc/gitconfig")))
    with _global_lock:
        cached = _global_cache.get(key)
        if cached is not None:
            file_stamp, spec = cached
            if file_stamp is None or mtime(file_stamp[0]) == file_stamp[1]:
                return spec
        path = global_excludes_file()
        spec = _read_ignore_file(path) if path else None
        _global_cache.clear()
        _global_cache[key] = ((path, mtime(path)) if path else None, spec)
        return spec


# --------------------------------------------------------------------------- sync.exclude


class Excluder:
    """sync.exclude (gitignore syntax, relative to the root) and the sync.pull folders
    (anchored at the root): never pushed.  Git-exact: a file under an excluded folder stays
    excluded whatever a later negation says."""

    def __init__(self, exclude: Iterable[str], pull: Iterable[str]) -> None:
        anchored = ["/" + p.strip("/") for p in pull if p.strip("/")]
        self.spec = _spec(list(exclude) + anchored)
        self.dirs: dict[str, bool] = {}

    def _dir_excluded(self, d: str) -> bool:
        hit = self.dirs.get(d)
        if hit is None:
            parent = d.rpartition("/")[0]
            hit = (bool(parent) and self._dir_excluded(parent)) or _verdict(self.spec, d + "/") is True  # type: ignore[arg-type]
            self.dirs[d] = hit
        return hit

    def excluded(self, rel: str) -> bool:
        if self.spec is None:
            return False
        parent = rel.rpartition("/")[0]
        if parent and self._dir_excluded(parent):
            return True
        return _verdict(self.spec, rel) is True


def is_git_component(rel: str) -> bool:
    return rel == ".git" or rel.startswith(".git/") or "/.git/" in rel or rel.endswith("/.git")


# --------------------------------------------------------------------------- the walker


class Walker:
    """git's listing rules without git: .gitignore at every level plus the global excludes.
    One walk (``_walk``) serves the file listing and the folders a watcher watches."""

    def __init__(self, root: Path) -> None:
        self.root = str(root)
        base = global_excludes()
        self.base: Specs = [("", base)] if base is not None else []

    def _specs_for(self, rel_dir: str, specs: Specs) -> Specs:
        full = os.path.join(self.root, rel_dir) if rel_dir else self.root
        spec = _read_ignore_file(os.path.join(full, ".gitignore"))
        return specs + [(rel_dir, spec)] if spec is not None else specs

    @staticmethod
    def ignored(rel: str, is_dir: bool, specs: Specs) -> bool:
        for prefix, spec in reversed(specs):
            sub = rel[len(prefix) + 1:] if prefix else rel
            verdict = _verdict(spec, sub + "/" if is_dir else sub)
            if verdict is not None:
                return verdict
        return False

    def _nested_repo(self, rel: str) -> bool:
        return os.path.lexists(os.path.join(self.root, rel, ".git"))

    def _walk(self, rel_dir: str, specs: Specs, files: bool = True) -> Iterator[tuple[str, str]]:
        """(rel, what) for rel_dir and everything git would list under it, in git's order:
        what is "dir" (a folder entered, rel_dir first), "file" (a file or symlink; only
        when files) or "repo" (a nested repository: listed, not entered)."""
        yield rel_dir, "dir"
        specs = self._specs_for(rel_dir, specs)
        full = os.path.join(self.root, rel_dir) if rel_dir else self.root
        try:
            with os.scandir(full) as it:
                entries = [(e.name, is_dir) for e in it
                           if (is_dir := e.is_dir(follow_symlinks=False)) or files]
        except OSError:
            return
        entries.sort()
        for name, is_dir in entries:
            if name == ".git":
                continue
            rel = f"{rel_dir}/{name}" if rel_dir else name
            if specs and self.ignored(rel, is_dir, specs):
                continue
            if not is_dir:
                yield rel, "file"
            elif self._nested_repo(rel):
                yield rel, "repo"
            else:
                yield from self._walk(rel, specs, files)

    def _specs_to(self, rel: str) -> Specs | str | None:
        """The rules that apply to rel (its parent folders' .gitignore files read on the
        way), or None when a folder on the way is ignored or not a plain folder, or the
        top of a nested repository on the way (as a str: it is listed instead)."""
        specs = self._specs_for("", self.base)
        rel_dir = ""
        for part in rel.split("/")[:-1]:
            rel_dir = f"{rel_dir}/{part}" if rel_dir else part
            full = os.path.join(self.root, rel_dir)
            if part == ".git" or not os.path.isdir(full) or os.path.islink(full) or \
                    (specs and self.ignored(rel_dir, True, specs)):
                return None
            if self._nested_repo(rel_dir):
                return rel_dir
            specs = self._specs_for(rel_dir, specs)
        return specs

    def _walk_paths(self, paths: Iterable[str] | None, files: bool = True) -> Iterator[tuple[str, str]]:
        """_walk() of the whole tree, or of what lies at or under each of paths."""
        if paths is None:
            yield from self._walk("", self.base, files)
            return
        for p in dict.fromkeys(p.strip("/") for p in paths):
            if p in ("", "."):
                yield from self._walk("", self.base, files)
                continue
            specs = self._specs_to(p)
            if isinstance(specs, str):
                yield specs, "repo"
                continue
            if specs is None or p.rpartition("/")[2] == ".git":
                continue
            try:
                is_dir = stat.S_ISDIR(os.lstat(os.path.join(self.root, p)).st_mode)
            except OSError:
                continue
            if specs and self.ignored(p, is_dir, specs):
                continue
            if not is_dir:
                if files:
                    yield p, "file"
            elif self._nested_repo(p):
                yield p, "repo"
            else:
                yield from self._walk(p, specs, files)

    def listing(self, paths: Iterable[str] | None = None) -> list[str]:
        """What git would list (nested repositories as "dir/"), relative to the root: the
        whole tree, or what lies at or under the given relative paths."""
        return [rel + "/" if what == "repo" else rel for rel, what in self._walk_paths(paths) if what != "dir"]

    def dirs(self) -> Iterator[str]:
        """Every folder the walk enters ("" is the root) and the top of every nested
        repository: what a watcher watches, so that a file appearing in a folder that held
        nothing listed is seen."""
        return (rel for rel, _what in self._walk_paths(None, files=False))
