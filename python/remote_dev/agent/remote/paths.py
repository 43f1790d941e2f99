"""Paths under a project root, checked: relative, no ``..``, no symlink on the way (so
nothing is ever read or written outside the root); and what is at a path (its state, its
content hash)."""

import os
import stat

from .. import protocol as P
from .common import AgentError

def check_relpath(rel):
    if not isinstance(rel, str) or rel == "" or "\0" in rel:
        raise AgentError("path", "bad path %r" % (rel,))
    if rel.startswith("/"):   # (the agent runs on POSIX: os.path.isabs says no more)
        raise AgentError("path", "refused absolute path %r" % rel)
    parts = rel.split("/")
    if "" in parts or "." in parts or ".." in parts:
        raise AgentError("path", "refused path %r: empty, '.' or '..' component" % rel)
    return parts


def resolve(root, rel, create_parents=False, known_dirs=None):
    """Absolute path of root/rel after checking that no component on the way is a
    symlink (so nothing is ever read or written outside root).  known_dirs: {folder:
    made by this request} for folders already checked during the same request; a folder
    is put there only after every folder above it, so a path whose folder is there needs
    no look at any of them."""
    parts = check_relpath(rel)
    if len(parts) == 1:
        return root + "/" + rel
    if known_dirs is not None and root + "/" + rel[:-len(parts[-1]) - 1] in known_dirs:
        return root + "/" + rel
    cur = root
    for part in parts[:-1]:
        cur = cur + "/" + part
        if known_dirs is not None and cur in known_dirs:
            continue
        try:
            st = os.lstat(cur)
        except FileNotFoundError:
            if not create_parents:
                return os.path.join(root, *parts)  # nothing below a missing folder
            try:
                os.mkdir(cur, 0o777)
                if known_dirs is not None:
                    known_dirs[cur] = True  # made now: nothing below it yet
                    continue
            except FileExistsError:
                pass
            st = os.lstat(cur)
        if stat.S_ISLNK(st.st_mode):
            raise AgentError("path", "refused %r: %r is a symlink" % (rel, cur[len(root) + 1:]))
        if not stat.S_ISDIR(st.st_mode):
            raise AgentError("path", "refused %r: %r is not a folder" % (rel, cur[len(root) + 1:]))
        if known_dirs is not None:
            known_dirs[cur] = False
    return root + "/" + rel


def stat_state(st):
    """[kind, size, mtime_ns] of a stat result (protocol kinds)."""
    if stat.S_ISLNK(st.st_mode):
        return [P.LINK, st.st_size, st.st_mtime_ns]
    if stat.S_ISREG(st.st_mode):
        return [P.FILE, st.st_size, st.st_mtime_ns]
    if stat.S_ISDIR(st.st_mode):
        return [P.DIR, 0, st.st_mtime_ns]
    return [P.OTHER, st.st_size, st.st_mtime_ns]


def entry_state(path):
    """[kind, size, mtime_ns] of what is at path, never following a final symlink; None
    when nothing is there."""
    try:
        st = os.lstat(path)
    except (FileNotFoundError, NotADirectoryError):
        return None
    return stat_state(st)


def content_hash(path, state):
    if state[0] == P.LINK:
        return P.link_hash(os.readlink(path))
    if state[0] == P.FILE:
        return P.file_hash(path)
    return None
