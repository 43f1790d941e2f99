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

import errno
import os
import stat
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any, NamedTuple

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
                             text=True, timeout=10, check=False, cwd=os.path.expanduser("~") if os.path.isdir(
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


def global_excludes_file_cached() -> str | None:
    """The global excludes file as the last global_excludes() found it."""
    for stamp, _spec in _global_cache.values():
        return stamp[0] if stamp else None
    global_excludes()
    for stamp, _spec in _global_cache.values():
        return stamp[0] if stamp else None
    return None


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
    return git_dir(root) is not None


def git_dir(root: Path) -> str | None:
    """The git dir when git answers for root (inside a work tree and not ignored by it),
    else None."""
    try:
        out = subprocess.run(["git", "rev-parse", "--is-inside-work-tree", "--show-prefix", "--absolute-git-dir"],
                             cwd=root, capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    lines = out.stdout.split("\n")
    if out.returncode != 0 or len(lines) < 3 or lines[0].strip() != "true":
        return None
    prefix, gdir = lines[1].strip(), lines[2].strip()
    if prefix:
        # The root is a folder of a bigger repository: if that repository ignores it,
        # git would list nothing; its own .gitignore files still count (the walker).
        try:
            ign = subprocess.run(["git", "check-ignore", "-q", "--", "."], cwd=root, capture_output=True, timeout=30,
                                 check=False)
        except (OSError, subprocess.TimeoutExpired):
            return None
        if ign.returncode == 0:
            return None
    return gdir or None


def _git_argv(paths: Iterable[str] | None) -> list[str]:
    argv = ["git", "-c", "core.quotepath=off", "ls-files", "-z", "-c", "-o", "--exclude-standard"]
    if paths is not None:
        argv += ["--", *(f":(literal){p}" if p not in ("", ".") else "." for p in paths)]
    return argv


def git_listing_start(root: Path, paths: Iterable[str] | None = None) -> subprocess.Popen[bytes] | None:
    try:
        return subprocess.Popen(_git_argv(paths), cwd=root, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                stdin=subprocess.DEVNULL)
    except OSError:
        return None


def git_listing_finish(proc: subprocess.Popen[bytes]) -> list[str] | None:
    try:
        out, _ = proc.communicate(timeout=300)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        return None
    if proc.returncode != 0:
        return None
    # a tracked file in conflict is listed once per stage: keep the first
    return list(dict.fromkeys(out.decode("utf-8", "surrogateescape").split("\0")[:-1]))


def git_listing(root: Path, paths: Iterable[str] | None = None) -> list[str] | None:
    """Paths git would consider (tracked + untracked not ignored), relative to root,
    limited to the given relative paths when any; None when git cannot answer."""
    proc = git_listing_start(root, paths)
    return None if proc is None else git_listing_finish(proc)


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

    def dirs(self) -> list[str]:
        """Every folder the walk enters (relative; "" is the root): what a watcher watches,
        so that a file appearing in a folder that held nothing listed is seen."""
        out: list[str] = []

        def walk(rel_dir: str, specs: list[tuple[str, pathspec.GitIgnoreSpec]]) -> None:
            out.append(rel_dir)
            specs = self._specs_for(rel_dir, specs)
            full = os.path.join(self.root, rel_dir) if rel_dir else self.root
            try:
                with os.scandir(full) as it:
                    names = [e.name for e in it if e.is_dir(follow_symlinks=False) and e.name != ".git"]
            except OSError:
                return
            for name in names:
                rel = f"{rel_dir}/{name}" if rel_dir else name
                if specs and self.ignored(rel, True, specs):
                    continue
                if os.path.lexists(os.path.join(full, name, ".git")):
                    out.append(rel)  # a nested repository: its top is watched, its own scan does the rest
                    continue
                walk(rel, specs)
        walk("", self.base)
        return out

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


# --------------------------------------------------------------------------- watcher

IN_MODIFY, IN_ATTRIB, IN_CLOSE_WRITE = 0x2, 0x4, 0x8
IN_MOVED_FROM, IN_MOVED_TO, IN_CREATE, IN_DELETE = 0x40, 0x80, 0x100, 0x200
IN_DELETE_SELF, IN_MOVE_SELF, IN_Q_OVERFLOW, IN_IGNORED = 0x400, 0x800, 0x4000, 0x8000
IN_ONLYDIR, IN_DONT_FOLLOW, IN_ISDIR = 0x1000000, 0x2000000, 0x40000000
WATCH_MASK = (IN_MODIFY | IN_ATTRIB | IN_CLOSE_WRITE | IN_MOVED_FROM | IN_MOVED_TO | IN_CREATE | IN_DELETE
              | IN_DELETE_SELF | IN_MOVE_SELF | IN_ONLYDIR | IN_DONT_FOLLOW)
MAX_CHANGES = 2000        # more changed paths than this: a full scan is cheaper
RESCAN_AFTER = 600.0      # seconds: a full scan now and then, whatever the watcher says


def _libc() -> Any:
    import ctypes
    import ctypes.util

    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
        libc.inotify_init1.argtypes = [ctypes.c_int]
        libc.inotify_add_watch.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32]
        return libc
    except (OSError, AttributeError):
        return None


class Watcher:
    """inotify on the folders of the tree (Linux): which paths may have changed since the
    last full scan, so that a push with nothing to do stats nothing.  Anything it cannot
    follow exactly (a queue overflow, a folder moved, the root gone, no more watches) makes
    it invalid: the next push scans the whole tree and starts a new watcher."""

    libc: Any = None

    def __init__(self, root: Path) -> None:
        if Watcher.libc is None:
            Watcher.libc = _libc() or False
        if not Watcher.libc:
            raise OSError("inotify is not available")
        self.root = str(root)
        self.fd = Watcher.libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
        if self.fd < 0:
            raise OSError(ctypes_errno(), "inotify_init1")
        self.wds: dict[int, str] = {}
        self.dirs: set[str] = set()
        self.valid = True
        self.changed: set[str] = set()
        self.new_dirs: set[str] = set()

    def watch(self, rel_dir: str) -> None:
        if rel_dir in self.dirs or not self.valid:
            return
        full = os.path.join(self.root, rel_dir) if rel_dir else self.root
        wd = Watcher.libc.inotify_add_watch(self.fd, os.fsencode(full), WATCH_MASK)
        if wd < 0:
            err = ctypes_errno()
            if err in (errno.ENOENT, errno.ENOTDIR):
                return  # gone meanwhile: its parent reports that
            self.valid = False  # ENOSPC (no more watches) and the like: scan instead
            return
        self.wds[wd] = rel_dir
        self.dirs.add(rel_dir)

    def watch_tree(self, rel_dir: str) -> None:
        """A folder that appeared: watch it and every folder below (not through symlinks)."""
        self.watch(rel_dir)
        full = os.path.join(self.root, rel_dir)
        for dirpath, dirnames, _ in os.walk(full):
            dirnames[:] = [d for d in dirnames if d != ".git" and not os.path.islink(os.path.join(dirpath, d))]
            for d in dirnames:
                self.watch(os.path.relpath(os.path.join(dirpath, d), self.root))

    def drain(self) -> None:
        while True:
            try:
                buf = os.read(self.fd, 1 << 16)
            except BlockingIOError:
                return
            except OSError:
                self.valid = False
                return
            if not buf:
                return
            off = 0
            while off + 16 <= len(buf):
                wd, mask, _cookie, length = struct.unpack_from("iIII", buf, off)
                name = os.fsdecode(buf[off + 16:off + 16 + length].rstrip(b"\0"))
                off += 16 + length
                if mask & IN_Q_OVERFLOW:
                    self.valid = False
                    continue
                rel_dir = self.wds.get(wd)
                if rel_dir is None:
                    continue
                if mask & IN_IGNORED:
                    del self.wds[wd]
                    self.dirs.discard(rel_dir)
                    if rel_dir == "":
                        self.valid = False
                    continue
                if mask & (IN_DELETE_SELF | IN_MOVE_SELF):
                    if rel_dir == "" or mask & IN_MOVE_SELF:
                        self.valid = False
                    continue
                if not name:
                    continue
                rel = f"{rel_dir}/{name}" if rel_dir else name
                if mask & IN_ISDIR:
                    if mask & (IN_MOVED_FROM | IN_MOVED_TO):
                        self.valid = False  # the watches below it now carry wrong names
                        continue
                    if mask & IN_CREATE:
                        self.new_dirs.add(rel)
                self.changed.add(rel)

    def reset(self) -> None:
        """Forget what happened so far (a full scan is about to stat everything)."""
        self.drain()
        self.changed.clear()
        self.new_dirs.clear()

    def take(self) -> list[str] | None:
        """Paths changed since the last reset/take, or None when only a full scan can tell."""
        self.drain()
        if not self.valid:
            return None
        changed, new_dirs = self.changed, self.new_dirs
        self.changed, self.new_dirs = set(), set()
        for d in sorted(new_dirs):
            self.watch_tree(d)
        self.drain()  # what happened in the new folders before they were watched is scanned anyway
        if not self.valid:
            return None
        changed |= self.changed
        self.changed = set()
        return sorted(changed)

    def close(self) -> None:
        if self.fd >= 0:
            try:
                os.close(self.fd)
            except OSError:
                pass
            self.fd = -1
            self.valid = False


def ctypes_errno() -> int:
    import ctypes

    return ctypes.get_errno()


# --------------------------------------------------------------------------- scanner


class Scanner:
    """Lists and stats what a push sends.  Whether git answers is found on a whole-tree
    scan and remembered for path scans (push on save runs one git command, or none).
    Where inotify exists, a whole-tree scan also starts watching the tree's folders, and
    changes() then names what may have changed since: a push with nothing to do stats
    nothing."""

    def __init__(self, root: Path, exclude: Iterable[str] = (), pull: Iterable[str] = (),
                 watch: bool = True) -> None:
        self.root = Path(root)
        self.excluder = Excluder(exclude, pull)
        self.git: bool | None = None
        self.git_dir: str | None = None
        self.watch = watch and sys.platform.startswith("linux")
        self.watcher: Watcher | None = None
        self.stamps: tuple[int, ...] | None = None
        self.last_full = 0.0
        self.pending: set[str] = set()

    def refresh(self, paths: list[str] | None) -> None:
        if paths is None or self.git is None:
            self.git_dir = git_dir(self.root)
            self.git = self.git_dir is not None

    def _stamps(self) -> tuple[int, ...]:
        """What changes git's answer without an event in the tree: the index (git add,
        checkout), .git/info/exclude, the global excludes file."""
        files = [global_excludes_file_cached()]
        if self.git_dir:
            files += [os.path.join(self.git_dir, "index"), os.path.join(self.git_dir, "info", "exclude")]
        return tuple(_mtime(f) for f in files)

    def changes(self) -> list[str] | None:
        """Paths that may differ from what the last whole-tree scan saw (plus paths to look
        at again: conflicts, errors), or None when only a whole-tree scan can tell."""
        w = self.watcher
        if w is None or not w.valid or time.monotonic() - self.last_full > RESCAN_AFTER:
            return None
        if self._stamps() != self.stamps:
            return None
        changed = w.take()
        if changed is None or len(changed) + len(self.pending) > MAX_CHANGES:
            return None
        if any(c == ".gitignore" or c.endswith("/.gitignore") for c in changed):
            return None
        out = sorted(set(changed) | self.pending)
        self.pending.clear()
        return out

    def unchanged_rules(self) -> bool:
        """Whether git's answer for already listed paths is still what the last whole-tree
        scan got: no .gitignore touched, same index and excludes files."""
        w = self.watcher
        if w is None or not w.valid or self.stamps is None or self._stamps() != self.stamps:
            return False
        w.drain()
        return w.valid and not any(c == ".gitignore" or c.endswith("/.gitignore") for c in w.changed)

    def scan_known(self, paths: list[str]) -> dict[str, LocalEntry]:
        """scan(paths) for paths the last whole-tree scan listed, while unchanged_rules():
        no git run (push on save of a big tree costs a stat and a read)."""
        out: dict[str, LocalEntry] = {}
        for rel in paths:
            if is_git_component(rel) or self.excluder.excluded(rel):
                continue
            entry = lstat_entry(self.root / rel)
            if entry is not None:
                out[rel] = entry
        return out

    def requeue(self, paths: Iterable[str]) -> None:
        """Look at these again on the next push (not pushed this time)."""
        self.pending.update(paths)

    def close(self) -> None:
        if self.watcher is not None:
            self.watcher.close()
            self.watcher = None

    def _prepare_watcher(self, hint: Iterable[str] | None) -> Watcher | None:
        w = self.watcher
        if w is None or not w.valid:
            if w is not None:
                w.close()
            try:
                w = self.watcher = Watcher(self.root)
            except OSError:
                self.watch = False
                self.watcher = None
                return None
        w.watch("")
        if hint is not None:
            for rel in hint:
                watch_parents(w, rel)
        w.reset()
        self.pending.clear()
        return w

    def invalidate(self) -> None:
        """The last whole-tree scan was not acted upon (the push failed): scan again."""
        if self.watcher is not None:
            self.watcher.valid = False

    def scan(self, paths: list[str] | None = None, hint: Iterable[str] | None = None,
             track: bool = True) -> dict[str, LocalEntry]:
        """Every file and symlink a push sends, by path relative to root: the whole tree,
        or what lies at or under the given relative paths.  hint: paths likely to be
        listed (what the last push saw); they are stat'ed while git lists the tree.
        track: a whole-tree scan becomes the watcher's new starting point (not for
        previews, which record nothing)."""
        self.refresh(paths)
        w = None
        stamps = None
        if paths is None and self.watch and track:
            stamps = self._stamps()
            w = self._prepare_watcher(hint)
            if w is not None:
                for d in Walker(self.root).dirs():
                    w.watch(d)
        out: dict[str, LocalEntry] = {}
        self._scan(self.root, "", paths, bool(self.git), 0, out, hint, w)
        if w is not None and w.valid:
            self.stamps = stamps
            self.last_full = time.monotonic()
        return out

    def _scan(self, root: Path, prefix: str, paths: list[str] | None, use_git: bool, depth: int,
              out: dict[str, LocalEntry], hint: Iterable[str] | None = None, w: Watcher | None = None) -> None:
        base = str(root)
        try:
            root_fd = os.open(base, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0)) if _DIR_FD else None
        except OSError:
            return
        try:
            if root_fd is not None:
                def lstat(rel: str, _fd: int = root_fd, _stat: Any = os.stat) -> os.stat_result:
                    return _stat(rel, dir_fd=_fd, follow_symlinks=False)
            else:
                def lstat(rel: str) -> os.stat_result:
                    return os.lstat(os.path.join(base, rel))
            pre: dict[str, os.stat_result] = {}
            listing = None
            if use_git:
                proc = git_listing_start(root, paths)
                if proc is not None:
                    if hint is not None and not prefix:
                        # git walks the tree in its own process meanwhile
                        for rel in hint:
                            try:
                                pre[rel] = lstat(rel)
                            except OSError:
                                pass
                    listing = git_listing_finish(proc)
            if listing is None:
                listing = Walker(root).listing(paths)
            self._collect(root, prefix, paths, depth, listing, pre, lstat, out, w)
        finally:
            if root_fd is not None:
                os.close(root_fd)

    def _collect(self, root: Path, prefix: str, paths: list[str] | None, depth: int, listing: list[str],
                 pre: dict[str, os.stat_result], lstat: Any, out: dict[str, LocalEntry], w: Watcher | None) -> None:
        excluded = self.excluder.excluded if self.excluder.spec is not None else None
        dirs = w.dirs if w is not None else None
        for rel in listing:
            nested = rel.endswith("/")
            if nested:
                rel = rel.rstrip("/")
            full_rel = prefix + rel if prefix else rel
            if ".git" in full_rel and is_git_component(full_rel):
                continue
            if excluded is not None and excluded(full_rel):
                continue
            if dirs is not None and full_rel.rpartition("/")[0] not in dirs:
                watch_parents(w, full_rel)  # before the stat: a change after it is an event
            st = pre.get(rel)
            if st is None:
                try:
                    st = lstat(rel)
                except OSError:
                    continue
            fmt = st.st_mode & 0o170000
            if fmt == 0o100000:
                out[full_rel] = LocalEntry("f", st.st_size, st.st_mtime_ns, st.st_mode & 0o7777)
            elif fmt == 0o120000:
                try:
                    out[full_rel] = LocalEntry("l", st.st_size, st.st_mtime_ns, 0o777, os.readlink(root / rel))
                except OSError:
                    pass
            elif nested or fmt == 0o040000:
                # a nested repository (an untracked clone or a submodule): its own rules
                full = os.path.join(str(root), rel)
                if depth < 8 and fmt == 0o040000 and os.path.lexists(os.path.join(full, ".git")):
                    inner = None
                    if paths is not None:
                        inner = [p[len(rel) + 1:] for p in paths if p.startswith(rel + "/")] or None
                    sub = Path(full)
                    self._scan(sub, full_rel + "/", inner, git_mode(sub), depth + 1, out, None, w)


def watch_parents(w: Watcher, rel: str) -> None:
    """Watch every folder on the way to rel (the root included)."""
    todo = []
    d = rel.rpartition("/")[0]
    while d and d not in w.dirs:
        todo.append(d)
        d = d.rpartition("/")[0]
    for d in reversed(todo):
        w.watch(d)


_DIR_FD = os.stat in os.supports_dir_fd and os.stat in os.supports_follow_symlinks


def scan(root: Path, exclude: Iterable[str] = (), pull: Iterable[str] = (),
         paths: list[str] | None = None) -> dict[str, LocalEntry]:
    return Scanner(root, exclude, pull).scan(paths)
