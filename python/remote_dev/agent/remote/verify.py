"""The remote check of a push (``verify``): what the local side expects at each path it
pushed -- kind, size and mtime as the agent left them -- against what is there now.

The local side's records are a cache, never the truth: the remote tree may have been
deleted, restored from elsewhere or edited by hand since.  A push therefore sends its
expectations and gets back the paths that differ, each with its state now (None: gone)
and, when only the mtime moved, the content hash (a touched file with the same content is
no conflict).  Expectations are kept per (root, records id) for the life of the agent, so
later pushes send only what changed in the records (a delta on a generation number).

Between two checks only what inotify saw change is looked at again (inotify.py), on local
file systems; otherwise, and whenever the watch cannot vouch for a folder, every expected
path is statted.
"""

import os
import stat

from .. import protocol as P
from .common import AgentError, expand_root
from .paths import content_hash, resolve, stat_state
from .inotify import Watch

MAX_TREES = 4      # expectations kept per agent (different roots or records)


def folders_of(rel):
    """The folders holding rel, from the root ("") down."""
    out = [""]
    parts = rel.split("/")[:-1]
    for i in range(len(parts)):
        out.append("/".join(parts[:i + 1]))
    return out


def root_ident(root):
    try:
        st = os.stat(root)
    except OSError:
        return None
    return (st.st_dev, st.st_ino)


class Tree(object):
    """What one local records table expects under one root, and the watch on it."""

    def __init__(self, root):
        self.root = root
        self.gen = 0
        self.states = {}       # rel -> (kind, size, mtime_ns)
        self.suspects = set()  # to look at next time: new or changed expectations, paths that differed
        self.watch = None
        self.ident = None
        self.blind = set()     # expected paths in folders the watch could not take

    def update(self, entries):
        for rel, kind, size, mtime in entries:
            if kind == P.FORGET:
                self.states.pop(rel, None)
                self.suspects.discard(rel)
                self.blind.discard(rel)
            else:
                self.states[rel] = (kind, size, mtime)
                self.suspects.add(rel)

    def rewatch(self):
        """A new watch on every folder holding an expected path, made before anything is
        looked at (so no change falls between the look and the watch)."""
        self.close()
        self.watch = Watch(self.root)
        folders = set()
        for rel in self.states:
            folders.add(rel.rpartition("/")[0])
        for folder in list(folders):
            while folder:
                folder = folder.rpartition("/")[0]
                if folder in folders:
                    break
                folders.add(folder)
        failed = [f for f in sorted(folders) if not self.watch.add(f)]
        if self.watch.broken:
            self.blind = set(self.states)
        elif failed:
            self.blind = set(rel for rel in self.states if self.unwatched(rel))
        else:
            self.blind = set()

    def unwatched(self, rel):
        return any(folder not in self.watch.needed for folder in folders_of(rel))

    def take(self, rel):
        """Watch rel's folders; a path whose folders cannot be watched stays blind."""
        if self.watch.broken:
            self.blind.add(rel)
            return
        for folder in folders_of(rel):
            if folder not in self.watch.needed and not self.watch.add(folder):
                self.blind.add(rel)
                return
        self.blind.discard(rel)

    def to_look_at(self):
        """The expected paths to stat now: all of them when the watch cannot vouch for
        anything, else what changed since the last look."""
        ident = root_ident(self.root)
        changes = self.watch.changes() if self.watch is not None else None
        if changes is None or ident is None or ident != self.ident:
            self.rewatch()
            self.ident = ident
            return list(self.states)
        for rel in list(self.suspects) + list(self.blind):
            self.take(rel)
        look = self.suspects | self.blind
        look.update(rel for rel in changes if rel in self.states)
        return look

    def close(self):
        if self.watch is not None:
            self.watch.close()
            self.watch = None


def differences(root, states, rels):
    """[[rel, state or None], ...] for the rels whose remote kind, size or mtime is not
    what states expect; state is [kind, size, mtime_ns, hash], the hash only when the size
    is the expected one (else the content differs anyway)."""
    out = []
    prefix = root + "/"
    for rel in rels:
        want = states.get(rel)
        if want is None:
            continue
        try:
            st = os.lstat(prefix + rel)
        except OSError:
            out.append([rel, None])
            continue
        mode = st.st_mode
        if st.st_mtime_ns == want[2] and st.st_size == want[1] and \
                (stat.S_ISREG(mode) if want[0] == P.FILE else stat.S_ISLNK(mode)):
            continue
        out.append([rel, state_now(root, rel, st, want)])
    return out


def state_now(root, rel, st, want):
    now = stat_state(st)
    digest = None
    if now[0] == want[0] and now[1] == want[1]:
        try:
            digest = content_hash(resolve(root, rel), now)
        except (AgentError, OSError):
            return [P.OTHER, now[1], now[2], None]   # a symlinked folder on the way, or unreadable
    return now + [digest]


class Checks(object):
    """The expectations of one agent, per (root, records id)."""

    def __init__(self):
        self.trees = {}

    def verify(self, root, uid, base, gen, blob):
        """Apply the expectations in blob (a delta on generation base, or everything when
        base is 0) and answer [gen, differences].  uid None: a one-off check of the paths
        in blob, nothing kept.  [NEED_ALL] when base is not the generation kept here."""
        root = expand_root(root)
        entries = P.unpack_states(blob)
        if uid is None:
            states = dict((e[0], e[1:]) for e in entries if e[1] != P.FORGET)
            return [gen, differences(root, states, list(states))]
        key = (root, uid)
        tree = self.trees.get(key)
        if base == 0:
            if tree is not None:
                tree.close()
            tree = Tree(root)
            self.keep(key, tree)
        elif tree is None or tree.gen != base:
            return [P.NEED_ALL]
        tree.update(entries)
        tree.gen = gen
        diffs = differences(root, tree.states, tree.to_look_at())
        tree.suspects = set(d[0] for d in diffs)
        return [gen, diffs]

    def keep(self, key, tree):
        self.trees.pop(key, None)
        self.trees[key] = tree
        while len(self.trees) > MAX_TREES:
            oldest = next(iter(self.trees))
            self.trees.pop(oldest).close()

    def close(self):
        for tree in self.trees.values():
            tree.close()
        self.trees.clear()
