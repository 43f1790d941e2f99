"""Which paths may have changed since the last whole-tree scan, without a watcher (a
laptop where neither inotify nor watchdog works, or a tree no watcher can follow).

A whole-tree scan leaves a baseline (``Baseline.build``, in the background after the push):
every folder the walk enters with its mtime and its entries' names, and which listed files
git does not vouch for (untracked, taken back by sync.include, marked assume-unchanged or
skip-worktree; in a tree without git, all of them) with their stat.  A check then costs:

* ``git status -uno`` (git lstat's every tracked file against its index, in C, in parallel;
  what it names differs from the index): that is git's answer for the tracked files;
* an lstat of every folder: one whose mtime moved gained or lost entries, and those are
  looked at (a new folder: a whole-tree scan);
* an lstat of each file git does not vouch for, compared with what was seen before.

Why a tracked file git does not name is unchanged since the scan: git says its content is
the index's; the scan saw the index's content too, unless git named it then (git's answer
at the scan was taken *before* the scan stat'ed anything) or it changed during the scan
(its ctime is not older than the scan): both are kept in ``carry`` and stat'ed at every
check until they are the index's again and stay put.  The index itself must hold the same
content (``git ls-files -s``: a commit, an add or a checkout changes it; a mere refresh of
its stat data by another git does not): else a whole-tree scan.  git's stat check is made
exact whatever the user's config says (core.checkStat=default, core.trustctime=true); a
file written in the second its index entry was written is "racy" for git and compared by
content.  What git cannot see: a touch or a chmod (other than +x) of a clean tracked file
changes nothing git looks at: the content is the same, the next whole-tree scan
(scan.RESCAN_AFTER) brings the remote's mtime and mode along.
"""

from __future__ import annotations

import hashlib
import os
import stat
import subprocess
import time
from pathlib import Path
from typing import Any

from .ignore import Excluder, Walker, is_git_component
from .include import Includer, included

Sig = tuple[int, int, int]   # size, mtime_ns, mode (with the file type): what a push compares
STATUS = ["git", "--no-optional-locks", "-c", "core.quotepath=off", "-c", "core.checkStat=default",
          "-c", "core.trustctime=true", "-c", "status.relativePaths=false", "status", "--porcelain=v2", "-z",
          "-uno", "--ignore-submodules=none", "--", "."]
GIT_TIMEOUT = 300.0
GONE: Sig = (-1, -1, -1)
# git folders whose index was found stale -> that index file's stamp.  A stale index (its
# stat data no longer the files': a copied tree, a mass touch) makes git's status compare
# every file by content, and git refreshes it only where it may write the index, which a
# check never does (--no-optional-locks: the user's own git must never meet our lock).
# When git's check costs more than the whole-tree scan it stands in for, pushes scan the
# whole tree until another git writes the index anew.
STALE: dict[str, tuple[int, ...]] = {}


def index_stamp(git_dir: str | None) -> tuple[int, ...]:
    """git writes a new index file (index.lock renamed): its inode tells too."""
    try:
        st = os.stat(os.path.join(git_dir, "index")) if git_dir else None
    except OSError:
        return (-1,)
    return (st.st_mtime_ns, st.st_size, st.st_ino) if st else (-1,)


def stale_index(git_dir: str | None) -> bool:
    return git_dir is not None and STALE.get(git_dir) == index_stamp(git_dir)


def sig_of(st: os.stat_result) -> Sig:
    return (st.st_size, st.st_mtime_ns, st.st_mode)


def status_start(root: Path) -> subprocess.Popen[bytes] | None:
    try:
        return subprocess.Popen(STATUS, cwd=root, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                stdin=subprocess.DEVNULL)
    except OSError:
        return None


def status_paths(proc: subprocess.Popen[bytes] | None, prefix: str) -> set[str] | None:
    """The paths (relative to the project root; prefix: its place in the repository) a
    status_start process names, or None when git did not answer."""
    if proc is None:
        return None
    try:
        out, _ = proc.communicate(timeout=GIT_TIMEOUT)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        return None
    if proc.returncode != 0:
        return None
    paths: set[str] = set()
    fields = out.split(b"\0")
    i = 0
    while i < len(fields):
        rec = fields[i]
        i += 1
        if not rec:
            continue
        kind = rec[:1]
        if kind == b"1":
            path = rec.split(b" ", 8)[8]
        elif kind == b"2":
            path = rec.split(b" ", 9)[9]
            orig = fields[i]
            i += 1
            paths.add(orig.decode("utf-8", "surrogateescape"))
        elif kind == b"u":
            path = rec.split(b" ", 10)[10]
        else:
            continue   # "#" headers; no "?" / "!" with -uno
        paths.add(path.decode("utf-8", "surrogateescape"))
    if prefix:
        paths = {p[len(prefix):] for p in paths if p.startswith(prefix)}
    return paths


LS_FILES = ["git", "-c", "core.quotepath=off", "ls-files", "-z", "-s", "-v", "--", "."]


def index_listing(root: Path, proc: subprocess.Popen[bytes] | None = None) -> tuple[str, set[str]] | None:
    """A digest of what the index holds under root (mode, blob, stage, path) and the paths
    git does not vouch for through it (assume-unchanged, skip-worktree), or None (proc:
    such a listing started before)."""
    try:
        if proc is None:
            proc = subprocess.Popen(LS_FILES, cwd=root, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                    stdin=subprocess.DEVNULL)
        out, _ = proc.communicate(timeout=GIT_TIMEOUT)
    except (OSError, subprocess.TimeoutExpired):
        if proc is not None:
            proc.kill()
            proc.communicate()
        return None
    if proc.returncode != 0:
        return None
    unsure = set()
    for rec in out.split(b"\0"):
        if rec and rec[:2] != b"H ":
            unsure.add(rec.partition(b"\t")[2].decode("utf-8", "surrogateescape"))
    return hashlib.blake2b(out, digest_size=20).hexdigest(), unsure


class Baseline:
    """What a check compares with (see the module's docstring)."""

    def __init__(self, root: Path, git_dir: str | None, includer: Includer, excluder: Excluder) -> None:
        self.root = root
        self.git_dir = git_dir
        self.prefix = ""
        self.includer = includer
        self.excluder = excluder   # sync.exclude, the sync.pull folders: never looked into
        self.valid = False
        self.dirs: dict[str, tuple[int, frozenset[str]]] = {}   # folder -> (mtime or 0: look, names)
        self.own: dict[str, Sig | None] = {}      # files git does not vouch for -> last stat
        self.carry: dict[str, Sig | None] = {}    # tracked files git named, or young -> last stat
        self.digest = ""
        self.index_stamp: tuple[int, ...] = (-1,)
        self.ls_proc = None
        self.scan_ns = 0     # what the whole-tree scan took (Scanner.scan): git's check must cost less

    def start(self) -> subprocess.Popen[bytes] | None:
        """Before the whole-tree scan stats anything: git's answer for the tracked files
        (none while the index is stale: no baseline, whole-tree scans)."""
        self.valid = False
        self.index_stamp = index_stamp(self.git_dir)
        if not self.git_dir or stale_index(self.git_dir):
            return None
        try:
            out = subprocess.run(["git", "rev-parse", "--show-prefix"], cwd=self.root, capture_output=True, text=True,
                                 timeout=30, check=False)
        except (OSError, subprocess.TimeoutExpired):
            return None
        if out.returncode != 0:
            return None
        self.prefix = out.stdout.strip()
        try:
            self.ls_proc: subprocess.Popen[bytes] | None = subprocess.Popen(
                LS_FILES, cwd=self.root, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
        except OSError:
            return None
        return status_start(self.root)

    def build(self, status: subprocess.Popen[bytes] | None, since_ns: int, listed: dict[str, Any],
              young: set[str]) -> None:
        """After the whole-tree scan (listed: its entries; young: those whose ctime is not
        older than since_ns), in the background."""
        named: set[str] = set()
        if self.git_dir:
            if status is None:
                return
            got = status_paths(status, self.prefix)
            index = index_listing(self.root, self.ls_proc)
            if got is None or index is None:
                return
            stamp = index_stamp(self.git_dir)
            if stamp != self.index_stamp:   # written meanwhile: the same content?
                again = index_listing(self.root)
                if again is None or again[0] != index[0]:
                    return
                self.index_stamp = stamp
            named = got
            self.digest, unsure = index
            tracked_or_not = self._untracked(listed) | unsure
        else:
            tracked_or_not = set(listed)
        dirs: dict[str, tuple[int, frozenset[str]]] = {}
        base = os.path.join(str(self.root), "")
        for rel, what in Walker(self.root)._walk_paths(None, files=False):
            if what == "repo":
                return   # a nested repository: its own rules, whole-tree scans
            if rel and self._excluded_dir(rel):
                continue
            full = base + rel if rel else str(self.root)
            try:
                m = os.lstat(full).st_mtime_ns
                names = frozenset(os.listdir(full))
            except OSError:
                return
            if m >= since_ns:
                # entries changed since the scan began: the names are those of now, and
                # the files among them the scan did not list are looked at next time
                m = 0
                prefix = rel + "/" if rel else ""
                tracked_or_not |= {prefix + n for n in names if n != ".git" and prefix + n not in listed
                                   and not os.path.isdir(base + prefix + n)}
            dirs[rel] = (m, names)
        if self.includer:
            tracked_or_not |= {rel for rel in included(self.root, self.includer, None, bool(self.git_dir))
                               if rel in listed}
        self.dirs = dirs
        self.own = {rel: _sig(listed.get(rel)) for rel in tracked_or_not}
        self.carry = {rel: None for rel in named | young if rel not in self.own}
        self.valid = True

    def _excluded_dir(self, rel: str) -> bool:
        return self.excluder.spec is not None and self.excluder._dir_excluded(rel)

    def _untracked(self, listed: dict[str, Any]) -> set[str]:
        try:
            out = subprocess.run(["git", "-c", "core.quotepath=off", "ls-files", "-z", "-c", "--", "."],
                                 cwd=self.root, capture_output=True, timeout=GIT_TIMEOUT, check=False)
        except (OSError, subprocess.TimeoutExpired):
            return set(listed)
        tracked = {n.decode("utf-8", "surrogateescape") for n in out.stdout.split(b"\0") if n} \
            if out.returncode == 0 else set()
        return {rel for rel in listed if rel not in tracked}

    def same_index(self) -> bool:
        if not self.git_dir:
            return True
        stamp = index_stamp(self.git_dir)
        if stamp == self.index_stamp:
            return True
        index = index_listing(self.root)
        if index is None or index[0] != self.digest or set(index[1]) - set(self.own):
            return False
        self.index_stamp = stamp   # stat data refreshed by another git: the same content
        return True

    def changes(self) -> list[str] | None:
        """Paths that may differ from what was pushed, or None: only a whole-tree scan can
        tell (a folder appeared or went away, the index's content changed, git failed)."""
        if not self.valid or stale_index(self.git_dir) or not self.same_index():
            return None
        since = time.time_ns() - 50_000_000
        t0 = time.monotonic_ns()
        proc = status_start(self.root) if self.git_dir else None
        try:
            out = self._folders(since)
            if out is None:
                return None
            appeared = stat_table(self.root, self.own, since, out, True, None, self.dirs)
            if self.includer:
                for rel in included(self.root, self.includer, None, bool(self.git_dir)):
                    if rel not in self.own:
                        self.own[rel] = None
                        out.add(rel)
            if proc is not None:
                named = status_paths(proc, self.prefix)
                proc = None
                if named is None:
                    return None
                if self.scan_ns and time.monotonic_ns() - t0 > max(self.scan_ns, 20_000_000):
                    STALE[self.git_dir or ""] = index_stamp(self.git_dir)   # this answer holds; the next is a scan
                for rel in named:
                    if rel not in self.own:
                        self.carry.setdefault(rel, None)
                appeared |= stat_table(self.root, self.carry, since, out, False, named, self.dirs)
            if appeared:
                return None
        finally:
            if proc is not None:
                proc.kill()
                proc.wait()
        return sorted(out)

    def _folders(self, since: int) -> set[str] | None:
        out: set[str] = set()
        base = os.path.join(str(self.root), "")
        dirs = self.dirs
        for rel, (m, names) in list(dirs.items()):
            try:
                now = os.lstat(base + rel).st_mtime_ns if rel else os.lstat(str(self.root)).st_mtime_ns
            except OSError:
                return None
            if now == m:
                continue
            full = base + rel if rel else str(self.root)
            try:
                seen = frozenset(os.listdir(full))
            except OSError:
                return None
            prefix = rel + "/" if rel else ""
            for name in seen ^ names:
                sub = prefix + name
                if name == ".git" or is_git_component(sub):
                    continue
                if sub in dirs or (name in seen and os.path.isdir(base + sub) and not os.path.islink(base + sub)):
                    if sub in dirs or not self._excluded_dir(sub):
                        return None   # a folder came or went: a whole-tree scan
                    continue
                out.add(sub)
                if name in seen:
                    self.own.setdefault(sub, None)   # untracked (an add changes the index)
            dirs[rel] = (0 if now >= since else now, seen)
        return out

def _sig(entry: Any) -> Sig | None:
    """The Sig of a scan's LocalEntry (None: look at it at the next check)."""
    if entry is None:
        return None
    fmt = 0o100000 if entry.kind == "f" else 0o120000
    return None if entry.kind not in ("f", "l") else (entry.size, entry.mtime_ns, fmt | entry.mode)


def stat_table(root: Path, table: dict[str, Sig | None], since: int, out: set[str], keep: bool,
               named: set[str] | None, walked: dict[str, Any]) -> bool:
    """Stat each path of table: changed since the last look, or young (ctime since the
    check began), or new to the table -> out.  keep: the table keeps every path there is
    (else only those git named, changed or young).  True: a folder (not one of walked) is
    where a file was: only a whole-tree scan can tell what is in it."""
    base = os.path.join(str(root), "")
    dir_appeared = False
    for rel, before in list(table.items()):
        try:
            st = os.lstat(base + rel)
            now: Sig | None = sig_of(st)
            young = st.st_ctime_ns >= since
        except OSError:
            now, young = GONE, False
        moved = before is None or now != before or young
        if moved and now is not GONE and now is not None and stat.S_ISDIR(now[2]) and rel not in walked:
            dir_appeared = True
        if moved:
            out.add(rel)
        if keep and now is GONE:
            del table[rel]
        elif keep or moved or (named is not None and rel in named):
            table[rel] = None if young else now
        else:
            del table[rel]
    return dir_appeared
