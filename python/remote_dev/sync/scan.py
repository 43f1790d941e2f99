"""The local tree as a push sees it: which files and symlinks, with their stat.

In a git work tree git itself answers which paths count (`git ls-files -co
--exclude-standard`: .gitignore at every level, .git/info/exclude, core.excludesFile).
Elsewhere -- and when the project root is itself ignored by an enclosing repository --
ignore.Walker applies the same rules.  sync.exclude and the sync.pull folders are left out
too (ignore.Excluder); `.git` never counts.  Nested git repositories (submodules, clones
inside the tree) are listed with their own rules.  Symlinks are entries of their own
(never followed).

The Scanner remembers whether git answers, and where inotify exists (watch.Watcher) a
whole-tree scan also starts watching the tree's folders: ``changes()`` then names what
may have changed since, so a push with nothing to do stats nothing.  watchdog's recursive
watch (watch.WatchdogWatcher, where inotify_simple cannot work) is in place before the
scan begins.  Without either, a whole-tree scan leaves a quick.Baseline and ``changes()``
asks git status and the folders' mtimes instead.  The folders are
watched after the scan, in a thread the push starts once it is done (on the bench tree the
watches are ~30 ms and the walk of the folders holding nothing listed ~40 ms: in the scan
they were most of its ~100 ms, and during the push they slowed its sending).  What changed
before its folder's watch was in place is looked at again by the next push: a listed file
whose ctime is not older than the scan, and in a folder whose mtime says its entries
changed since the scan began, what appeared there (ctime) or went away.

git lists the tracked and the untracked files in two processes, read as they write: the
tracked ones (from git's index, at once) are stat'ed while the other still walks the tree.
"""

from __future__ import annotations

import os
import select
import stat
import subprocess
import threading
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, NamedTuple

from ..errors import RemoteDevError
from .ignore import Excluder, Walker, global_excludes_file_cached, is_git_component, mtime
from .include import Includer, included
from .quick import Baseline
from .watch import Watcher, WatchdogWatcher, open_watcher

MAX_CHANGES = 2000        # more changed paths than this: a full scan is cheaper
MTIME_SLACK_NS = 50_000_000   # folder mtimes come from a coarse clock: "since" starts this much earlier
YIELD_EVERY = 16          # folders the background watch walks between letting other threads run
GIT_TIMEOUT = 300.0       # seconds git may take to list the tree
RESCAN_AFTER = 600.0      # seconds: a full scan now and then, whatever the watcher says
_DIR_FD = os.stat in os.supports_dir_fd and os.stat in os.supports_follow_symlinks


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
    """The file or symlink at path, or None (nothing, a folder, something else)."""
    path = os.fspath(path)
    try:
        st = os.lstat(path)
    except OSError:
        return None
    return entry_from_stat(path, st)


def rel_paths(root: Path, paths: list[str] | None, cwd: str | None) -> list[str] | None:
    """Paths given by the user (absolute, or relative to cwd) as paths relative to root.
    A path reached through a symlinked folder counts where it really is."""
    if not paths:
        return None
    out = []
    for p in paths:
        full = Path(os.path.abspath(os.path.join(cwd or os.getcwd(), os.path.expanduser(p))))
        rel = None
        for candidate in (full, Path(os.path.realpath(full.parent)) / full.name):
            try:
                rel = candidate.relative_to(root).as_posix()
                break
            except ValueError:
                continue
        if rel is None:
            raise RemoteDevError(f"{p}: outside the project root {root}")
        out.append("" if rel == "." else rel)
    return out


def in_scope(rel: str, paths: list[str] | None) -> bool:
    if paths is None:
        return True
    return any(p in ("", ".") or rel == p or rel.startswith(p.rstrip("/") + "/") for p in paths)


# --------------------------------------------------------------------------- git


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


def git_listing_start(root: Path, paths: Iterable[str] | None = None, which: tuple[str, ...] = ("-c", "-o")
                      ) -> subprocess.Popen[bytes] | None:
    """git ls-files of the tracked (-c) and/or untracked, not ignored (-o) paths."""
    argv = ["git", "-c", "core.quotepath=off", "ls-files", "-z", *which, "--exclude-standard"]
    if paths is not None:
        argv += ["--", *(f":(literal){p}" if p not in ("", ".") else "." for p in paths)]
    try:
        return subprocess.Popen(argv, cwd=root, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                stdin=subprocess.DEVNULL)
    except OSError:
        return None


class GitListing:
    """The paths a git_listing_start process writes, in parts as they come (each path
    once: a tracked file in conflict is listed once per stage); ``ok`` afterwards: git
    answered (exit 0, within GIT_TIMEOUT), else what was listed does not count."""

    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        self.proc = proc
        self.ok = False

    def __iter__(self) -> Iterator[list[str]]:
        proc = self.proc
        assert proc.stdout is not None
        fd = proc.stdout.fileno()
        deadline = time.monotonic() + GIT_TIMEOUT
        seen: set[str] = set()
        tail = b""
        try:
            while True:
                left = deadline - time.monotonic()
                if left <= 0 or not select.select([fd], [], [], left)[0]:
                    proc.kill()
                    return
                data = os.read(fd, 1 << 16)
                if not data:
                    break
                *names, tail = (tail + data).split(b"\0")
                part = []
                for raw in names:
                    name = raw.decode("utf-8", "surrogateescape")
                    if name not in seen:
                        seen.add(name)
                        part.append(name)
                if part:
                    yield part
            self.ok = proc.wait(max(0.0, deadline - time.monotonic())) == 0 and not tail
        except subprocess.TimeoutExpired:
            proc.kill()
        finally:
            proc.stdout.close()
            if not self.ok:
                proc.kill()
                proc.wait()


def git_listing(root: Path, paths: Iterable[str] | None = None) -> list[str] | None:
    """Paths git would consider (tracked + untracked not ignored), relative to root,
    limited to the given relative paths when any; None when git cannot answer."""
    proc = git_listing_start(root, paths)
    if proc is None:
        return None
    listing = GitListing(proc)
    out = [name for part in listing for name in part]
    return out if listing.ok else None


# --------------------------------------------------------------------------- scanner


class Scanner:
    """Lists and stats what a push sends.  Whether git answers is found on a whole-tree
    scan and remembered for path scans (push on save runs one git command, or none)."""

    def __init__(self, root: Path, exclude: Iterable[str] = (), pull: Iterable[str] = (),
                 watch: bool = True, include: Iterable[str] = ()) -> None:
        self.root = Path(root)
        self.excluder = Excluder(exclude, pull)
        self.includer = Includer(include)
        self.git: bool | None = None
        self.git_dir: str | None = None
        self.watch = watch
        self.watcher: Watcher | WatchdogWatcher | None = None
        self.stamps: tuple[int, ...] | None = None
        self.last_full = 0.0
        self.pending: set[str] = set()
        self.background: threading.Thread | None = None
        self.quick: Baseline | None = None   # without a watcher: what a check compares with

    def _stamps(self) -> tuple[int, ...]:
        """What changes git's answer without an event in the tree: the index (git add,
        checkout), .git/info/exclude, the global excludes file."""
        files = [global_excludes_file_cached()]
        if self.git_dir:
            files += [os.path.join(self.git_dir, "index"), os.path.join(self.git_dir, "info", "exclude")]
        return tuple(mtime(f) for f in files)

    def settle(self) -> None:
        """Wait for the background watch of the last whole-tree scan."""
        t = self.background
        if t is not None:
            self.start_watch()
            t.join()
            self.background = None

    def _watch_rest(self, w: Watcher, since_ns: int, listed: list[str], watched: set[str]) -> None:
        """After a whole-tree scan (in a thread): watch the folders of the listed files
        and every folder the walk enters; then look again next time at what may have
        changed before its folder's watch was in place (``watched``: the folders watched
        before the scan): a listed file changed since the scan began (ctime), and in each
        folder whose entries changed since, what appeared there (ctime) or went away."""
        if not w.valid:
            return
        try:
            for n, rel in enumerate(listed):
                w.watch_parents(rel)
                if n % (YIELD_EVERY * 16) == 0:
                    time.sleep(0)   # the GIL to the push's threads, which wait for it otherwise
            for n, d in enumerate(Walker(self.root).dirs()):
                w.watch(d)
                if n % YIELD_EVERY == 0:
                    time.sleep(0)
            changed_before_watch(self.root, listed, watched, since_ns, self.pending)
            by_dir: dict[str, set[str]] | None = None
            for d in list(w.dirs):
                if d in watched:
                    continue
                full = os.path.join(self.root, d) if d else str(self.root)
                try:
                    if os.lstat(full).st_mtime_ns < since_ns:
                        continue
                    with os.scandir(full) as it:
                        names = {e.name: e.stat(follow_symlinks=False).st_ctime_ns for e in it}
                except OSError:
                    continue   # gone meanwhile: its parent changed too
                if by_dir is None:
                    by_dir = {}
                    for rel in listed:
                        parent, _, name = rel.rpartition("/")
                        by_dir.setdefault(parent, set()).add(name)
                prefix = d + "/" if d else ""
                self.pending.update(prefix + name for name, ctime in names.items() if ctime >= since_ns)
                self.pending.update(prefix + name for name in by_dir.get(d, ()) if name not in names)
        except Exception:  # noqa: BLE001 - never half-watched: the next push scans the tree
            w.valid = False

    def changes(self) -> list[str] | None:
        """Paths that may differ from what the last whole-tree scan saw (plus paths to look
        at again: conflicts, errors), or None when only a whole-tree scan can tell."""
        self.settle()
        w, q = self.watcher, self.quick
        if time.monotonic() - self.last_full > RESCAN_AFTER or self.stamps is None:
            return None
        stamps = self._stamps()
        if w is not None and w.valid and stamps == self.stamps:
            changed = w.take()
        elif w is None and q is not None and stamps[:1] + stamps[2:] == self.stamps[:1] + self.stamps[2:]:
            changed = q.changes()   # no watcher: git's status and the folders' mtimes
        else:
            return None
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
        self.settle()
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
            elif os.path.isdir(self.root / rel):   # a folder replaced the file: what it holds (its
                out.update(self.scan([rel], track=False))   # files may predate the watch on it)
        return out

    def requeue(self, paths: Iterable[str]) -> None:
        """Look at these again on the next push (not pushed this time)."""
        self.pending.update(paths)

    def invalidate(self) -> None:
        """The last whole-tree scan was not acted upon (the push failed): scan again.
        (No wait for the background watch: an invalid watcher takes no more watches.)"""
        if self.watcher is not None:
            self.watcher.valid = False
        self.quick = None

    def close(self) -> None:
        self.settle()
        if self.watcher is not None:
            self.watcher.close()
            self.watcher = None

    def _prepare_watcher(self) -> Watcher | WatchdogWatcher | None:
        w = self.watcher
        if w is None or not w.valid:
            if w is not None:
                w.close()
            try:
                w = self.watcher = open_watcher(self.root)
            except OSError:
                self.watch = False
                self.watcher = None
                return None
        w.watch("")
        w.reset()
        self.pending.clear()
        return w

    def scan(self, paths: list[str] | None = None, hint: Iterable[str] | None = None,
             track: bool = True) -> dict[str, LocalEntry]:
        """Every file and symlink a push sends, by path relative to root: the whole tree,
        or what lies at or under the given relative paths.  hint: paths likely to be
        listed (what the last push saw); they are stat'ed while git lists the tree.
        track: a whole-tree scan becomes the watcher's new starting point (not for
        previews, which record nothing)."""
        self.settle()
        if paths is None or self.git is None:
            self.git_dir = git_dir(self.root)
            self.git = self.git_dir is not None
        w = quick = status = young = stamps = None
        since = time.time_ns() - MTIME_SLACK_NS
        if paths is None and track:
            self.quick = None
            stamps = self._stamps()
            w = self._prepare_watcher() if self.watch else None
            if w is None:   # git's answer for the tracked files before any stat (quick.py)
                quick, young = Baseline(self.root, self.git_dir, self.includer, self.excluder), set()
                status = quick.start()
        watched = set(w.dirs) if w is not None else set()   # before any stat: no news lost there
        out: dict[str, LocalEntry] = {}
        scan_tree(self.excluder, self.root, "", paths, bool(self.git), 0, out, hint, young, since)
        if self.includer:
            add_included(self.root, self.includer, self.excluder, paths, bool(self.git), out)
        if quick is not None:
            self.stamps, self.last_full, self.quick = stamps, time.monotonic(), quick
            quick.scan_ns = time.time_ns() - since - MTIME_SLACK_NS
            self.background = threading.Thread(target=quick.build, args=(status, since, out, young), daemon=True,
                                               name="rd-baseline")
        elif w is not None and w.valid:
            self.stamps = stamps
            self.last_full = time.monotonic()
            if w.recursive:   # watching the whole tree since before the scan
                return out
            self.background = threading.Thread(target=self._watch_rest, args=(w, since, list(out), watched),
                                               daemon=True, name="rd-watch")
        return out

    def start_watch(self) -> None:
        """Start the background watch of the last whole-tree scan (a push starts it when
        it is done: until then the GIL and the cores are the push's)."""
        t = self.background
        if t is not None and t.ident is None:
            t.start()


def changed_before_watch(root_path: Path, listed: list[str], watched: set[str], since_ns: int,
                         pending: set[str]) -> None:
    """Listed files in folders watched only after the scan stat'ed them, changed since
    the scan began (ctime: content, mode, or replaced): into pending (looked at again)."""
    root = os.path.join(root_path, "")
    for n, rel in enumerate(listed):
        if rel.rpartition("/")[0] in watched:
            continue
        try:
            if os.lstat(root + rel).st_ctime_ns >= since_ns:
                pending.add(rel)
        except OSError:
            pending.add(rel)   # gone meanwhile
        if n % (YIELD_EVERY * 16) == 0:
            time.sleep(0)


def add_included(root: Path, includer: Includer, excluder: Excluder, paths: list[str] | None, use_git: bool,
                 out: dict[str, LocalEntry]) -> None:
    """The files sync.include takes back from .gitignore (sync.exclude still wins)."""
    for rel in included(root, includer, paths, use_git):
        if rel not in out and not excluder.excluded(rel):
            entry = lstat_entry(root / rel)
            if entry is not None:
                out[rel] = entry


def scan_tree(excluder: Excluder, root: Path, prefix: str, paths: list[str] | None, use_git: bool, depth: int,
              out: dict[str, LocalEntry], hint: Iterable[str] | None = None, young: set[str] | None = None,
              since: int = 0) -> None:
    """Files and symlinks at or under paths of root (git's listing when use_git, else the
    Walker's) into out, by path relative to the project (prefix: root's place in it, a
    nested repository's); hint: paths stat'ed while git lists; young: gets the listed
    paths whose ctime is not older than since."""
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
        if use_git:
            # the untracked ones take git a walk of the tree: the tracked ones are
            # stat'ed meanwhile (and the hint's paths, while git reads its index)
            procs = [git_listing_start(root, paths, (which,)) for which in ("-o", "-c")]
            if None not in procs:
                if hint is not None and not prefix:
                    for rel in hint:
                        try:
                            pre[rel] = lstat(rel)
                        except OSError:
                            pass
                got: dict[str, LocalEntry] = {}
                listings = [GitListing(proc) for proc in reversed(procs)]   # type: ignore[arg-type]
                for listing in listings:
                    for part in listing:
                        collect(excluder, root, prefix, paths, depth, part, pre, lstat, got, young, since)
                    if not listing.ok:
                        break
                if all(listing.ok for listing in listings):
                    out.update(got)
                    return
            for proc in procs:
                if proc is not None:
                    if proc.poll() is None:
                        proc.kill()
                        proc.wait()
                    if proc.stdout is not None:
                        proc.stdout.close()
        collect(excluder, root, prefix, paths, depth, Walker(root).listing(paths), pre, lstat, out, young, since)
    finally:
        if root_fd is not None:
            os.close(root_fd)

def collect(excluder: Excluder, root: Path, prefix: str, paths: list[str] | None, depth: int, listing: list[str],
            pre: dict[str, os.stat_result], lstat: Any, out: dict[str, LocalEntry], young: set[str] | None = None,
            since: int = 0) -> None:
    """The entries of listed paths (stat'ed, or taken from pre) into out; a nested
    repository is scanned with its own rules."""
    excluded = excluder.excluded if excluder.spec is not None else None
    for rel in listing:
        nested = rel.endswith("/")
        if nested:
            rel = rel.rstrip("/")
        full_rel = prefix + rel if prefix else rel
        if ".git" in full_rel and is_git_component(full_rel):
            continue
        if excluded is not None and excluded(full_rel):
            continue
        st = pre.get(rel)
        if st is None:
            try:
                st = lstat(rel)
            except OSError:
                continue
        fmt = st.st_mode & 0o170000
        if young is not None and st.st_ctime_ns >= since:
            young.add(full_rel)
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
                scan_tree(excluder, sub, full_rel + "/", inner, git_dir(sub) is not None, depth + 1, out)
