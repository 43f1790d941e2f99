"""The local tree as sync sees it: git's own ignore rules plus sync.exclude.

In a git work tree git itself answers (`git ls-files -co --exclude-standard`: .gitignore at
every level, .git/info/exclude, core.excludesFile).  Elsewhere -- and when the project root
is itself ignored by an enclosing repository -- the .gitignore files are read with
pathspec's git-compatible matcher, walking the tree the way git does: an ignored folder is
not entered (so nothing under it can be re-included), a deeper .gitignore overrides a
shallower one, and the global excludes file (core.excludesFile, else
$XDG_CONFIG_HOME/git/ignore) has the lowest priority.  `.git` is never listed.  Nested git
repositories (submodules, or clones inside the tree) are listed with their own rules.

sync.exclude uses the same gitignore syntax relative to the root; sync.pull folders are
anchored at the root.  Both are never pushed.

Symlinks are entries of their own (never followed): a link to a folder is not entered.
"""

from __future__ import annotations

import os
import stat
import subprocess
import threading
from pathlib import Path
from typing import Iterable, NamedTuple

import pathspec


class LocalEntry(NamedTuple):
    kind: str          # "f" file, "l" symlink
    size: int
    mtime_ns: int
    mode: int
    target: str | None = None   # symlink target


def entry_from_stat(path: str, st: os.stat_result) -> LocalEntry | None:
    m = st.st_mode
    if stat.S_ISREG(m):
        return LocalEntry("f", st.st_size, st.st_mtime_ns, m & 0o7777)
    if stat.S_ISLNK(m):
        try:
            return LocalEntry("l", st.st_size, st.st_mtime_ns, 0o777, os.readlink(path))
        except OSError:
            return None
    return None


def lstat_entry(path: str | os.PathLike[str]) -> LocalEntry | None:
    path = os.fspath(path)
    try:
        st = os.lstat(path)
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError:
        return None
    return entry_from_stat(path, st)


# --------------------------------------------------------------------------- patterns


def _spec(lines: Iterable[str]) -> pathspec.GitIgnoreSpec | None:
    lines = list(lines)
    spec = pathspec.GitIgnoreSpec.from_lines(lines)
    return spec if len(spec.patterns) else None


def _verdict(spec: pathspec.GitIgnoreSpec, path: str) -> bool | None:
    """True: ignored, False: re-included by a negation, None: no pattern matches."""
    check = getattr(spec, "check_file", None)
    if check is not None:
        return check(path).include
    result = None  # pathspec < 0.12: the last matching pattern decides
    for pattern in spec.patterns:
        if pattern.include is not None and pattern.match_file(path) is not None:
            result = pattern.include
    return result


def _read_ignore_file(path: str) -> pathspec.GitIgnoreSpec | None:
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError:
        return None
    return _spec(data.decode("utf-8", errors="surrogateescape").splitlines())


_global_cache: dict[tuple[str | None, ...], tuple[tuple[str, int] | None, pathspec.GitIgnoreSpec | None]] = {}
_global_lock = threading.Lock()


def global_excludes_file() -> str | None:
    """git's core.excludesFile (from the global/system config, GIT_CONFIG_GLOBAL included),
    else $XDG_CONFIG_HOME/git/ignore or ~/.config/git/ignore."""
    try:
        out = subprocess.run(["git", "config", "--path", "--get", "core.excludesFile"], capture_output=True,
                             text=True, timeout=10, cwd=os.path.expanduser("~") if os.path.isdir(
                                 os.path.expanduser("~")) else "/")
        if out.returncode == 0 and out.stdout.strip():
            return os.path.expanduser(out.stdout.strip())
    except (OSError, subprocess.TimeoutExpired):
        pass
    xdg = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return os.path.join(xdg, "git", "ignore")


def _mtime(path: str | None) -> int:
    try:
        return os.stat(path).st_mtime_ns if path else -1
    except OSError:
        return -1


def global_excludes() -> pathspec.GitIgnoreSpec | None:
    """The global excludes as a spec; cached while the git config files and the excludes
    file stay the same."""
    home = os.path.expanduser("~")
    gcfg = os.environ.get("GIT_CONFIG_GLOBAL")
    key = (gcfg, os.environ.get("XDG_CONFIG_HOME"), home, os.environ.get("GIT_CONFIG_NOSYSTEM"),
           os.environ.get("GIT_CONFIG_SYSTEM"), str(_mtime(gcfg)), str(_mtime(os.path.join(home, ".gitconfig"))),
           str(_mtime("/etc/gitconfig")))
    with _global_lock:
        cached = _global_cache.get(key)
        if cached is not None:
            file_stamp, spec = cached
            if file_stamp is None or _mtime(file_stamp[0]) == file_stamp[1]:
                return spec
        path = global_excludes_file()
        spec = _read_ignore_file(path) if path else None
        _global_cache.clear()
        _global_cache[key] = ((path, _mtime(path)) if path else None, spec)
        return spec


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


# --------------------------------------------------------------------------- git


def git_mode(root: Path) -> bool:
    """Whether git answers for root: inside a work tree and not ignored by it."""
    try:
        out = subprocess.run(["git", "rev-parse", "--is-inside-work-tree", "--show-prefix"], cwd=root,
                             capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return False
    lines = out.stdout.splitlines()
    if out.returncode != 0 or not lines or lines[0].strip() != "true":
        return False
    prefix = lines[1].strip() if len(lines) > 1 else ""
    if prefix:
        # The root is a folder of a bigger repository: if that repository ignores it,
        # git would list nothing; its own .gitignore files still count (the walker).
        try:
            ign = subprocess.run(["git", "check-ignore", "-q", "--", "."], cwd=root, capture_output=True, timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            return False
        if ign.returncode == 0:
            return False
    return True


def git_listing(root: Path, paths: Iterable[str] | None = None) -> list[str] | None:
    """Paths git would consider (tracked + untracked not ignored), relative to root,
    limited to the given relative paths when any; None when git cannot answer."""
    argv = ["git", "-c", "core.quotepath=off", "ls-files", "-z", "-c", "-o", "--exclude-standard"]
    if paths is not None:
        argv += ["--", *(f":(literal){p}" if p not in ("", ".") else "." for p in paths)]
    try:
        out = subprocess.run(argv, cwd=root, capture_output=True, timeout=300)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if out.returncode != 0:
        return None
    seen: set[str] = set()
    result = []
    for raw in out.stdout.split(b"\0"):
        if raw:
            p = os.fsdecode(raw)
            if p not in seen:  # a tracked file in conflict is listed once per stage
                seen.add(p)
                result.append(p)
    return result


# --------------------------------------------------------------------------- walker


class Walker:
    """git's listing rules without git: .gitignore at every level plus the global excludes."""

    def __init__(self, root: Path) -> None:
        self.root = str(root)
        base = global_excludes()
        self.base: list[tuple[str, pathspec.GitIgnoreSpec]] = [("", base)] if base is not None else []

    def _specs_for(self, rel_dir: str, specs: list[tuple[str, pathspec.GitIgnoreSpec]]
                   ) -> list[tuple[str, pathspec.GitIgnoreSpec]]:
        full = os.path.join(self.root, rel_dir) if rel_dir else self.root
        spec = _read_ignore_file(os.path.join(full, ".gitignore"))
        return specs + [(rel_dir, spec)] if spec is not None else specs

    @staticmethod
    def ignored(rel: str, is_dir: bool, specs: list[tuple[str, pathspec.GitIgnoreSpec]]) -> bool:
        for prefix, spec in reversed(specs):
            sub = rel[len(prefix) + 1:] if prefix else rel
            verdict = _verdict(spec, sub + "/" if is_dir else sub)
            if verdict is not None:
                return verdict
        return False

    def walk(self, rel_dir: str, specs: list[tuple[str, pathspec.GitIgnoreSpec]], out: list[str]) -> None:
        specs = self._specs_for(rel_dir, specs)
        full = os.path.join(self.root, rel_dir) if rel_dir else self.root
        try:
            with os.scandir(full) as it:
                entries = [(e.name, e.is_dir(follow_symlinks=False)) for e in it]
        except OSError:
            return
        entries.sort()
        for name, is_dir in entries:
            if name == ".git":
                continue
            rel = f"{rel_dir}/{name}" if rel_dir else name
            if specs and self.ignored(rel, is_dir, specs):
                continue
            if is_dir:
                if os.path.lexists(os.path.join(full, name, ".git")):
                    out.append(rel + "/")  # a repository of its own, as git lists it
                else:
                    self.walk(rel, specs, out)
            else:
                out.append(rel)

    def listing(self, paths: Iterable[str] | None = None) -> list[str]:
        out: list[str] = []
        if paths is None:
            self.walk("", self.base, out)
            return out
        for p in dict.fromkeys(p.strip("/") for p in paths):
            if p in ("", "."):
                self.walk("", self.base, out)
                continue
            parts = p.split("/")
            specs = self._specs_for("", self.base)
            rel_dir = ""
            blocked = False
            for part in parts[:-1]:
                rel_dir = f"{rel_dir}/{part}" if rel_dir else part
                full = os.path.join(self.root, rel_dir)
                if part == ".git" or not os.path.isdir(full) or os.path.islink(full) or \
                        (specs and self.ignored(rel_dir, True, specs)):
                    blocked = True
                    break
                if os.path.lexists(os.path.join(full, ".git")):
                    out.append(rel_dir + "/")  # inside a nested repository: its own rules
                    blocked = True
                    break
                specs = self._specs_for(rel_dir, specs)
            if blocked or parts[-1] == ".git":
                continue
            full = os.path.join(self.root, p)
            try:
                st = os.lstat(full)
            except OSError:
                continue
            is_dir = stat.S_ISDIR(st.st_mode)
            if specs and self.ignored(p, is_dir, specs):
                continue
            if is_dir:
                if os.path.lexists(os.path.join(full, ".git")):
                    out.append(p + "/")
                else:
                    self.walk(p, specs, out)
            else:
                out.append(p)
        return out


# --------------------------------------------------------------------------- scanner


class Scanner:
    """Lists and stats what a push sends.  Whether git answers is found on a whole-tree
    scan and remembered for path scans (push on save runs one git command, or none)."""

    def __init__(self, root: Path, exclude: Iterable[str] = (), pull: Iterable[str] = ()) -> None:
        self.root = Path(root)
        self.excluder = Excluder(exclude, pull)
        self.git: bool | None = None

    def refresh(self, paths: list[str] | None) -> None:
        if paths is None or self.git is None:
            self.git = git_mode(self.root)

    def scan(self, paths: list[str] | None = None) -> dict[str, LocalEntry]:
        """Every file and symlink a push sends, by path relative to root: the whole tree,
        or what lies at or under the given relative paths."""
        self.refresh(paths)
        out: dict[str, LocalEntry] = {}
        self._scan(self.root, "", paths, bool(self.git), 0, out)
        return out

    def _scan(self, root: Path, prefix: str, paths: list[str] | None, use_git: bool, depth: int,
              out: dict[str, LocalEntry]) -> None:
        listing = git_listing(root, paths) if use_git else None
        if listing is None:
            listing = Walker(root).listing(paths)
        excluded = self.excluder.excluded
        base = str(root)
        for rel in listing:
            nested = rel.endswith("/")
            rel = rel.rstrip("/")
            full_rel = prefix + rel
            if is_git_component(full_rel) or excluded(full_rel):
                continue
            full = os.path.join(base, rel)
            try:
                st = os.lstat(full)
            except OSError:
                continue
            if nested or stat.S_ISDIR(st.st_mode):
                # a nested repository (an untracked clone or a submodule): its own rules
                if depth < 8 and stat.S_ISDIR(st.st_mode) and os.path.lexists(os.path.join(full, ".git")):
                    inner = None
                    if paths is not None:
                        inner = [p[len(rel) + 1:] for p in paths if p.startswith(rel + "/")] or None
                    sub = Path(full)
                    self._scan(sub, full_rel + "/", inner, git_mode(sub), depth + 1, out)
                continue
            entry = entry_from_stat(full, st)
            if entry is not None:
                out[full_rel] = entry


def scan(root: Path, exclude: Iterable[str] = (), pull: Iterable[str] = (),
         paths: list[str] | None = None) -> dict[str, LocalEntry]:
    return Scanner(root, exclude, pull).scan(paths)
