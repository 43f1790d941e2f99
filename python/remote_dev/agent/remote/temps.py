"""Temporary files of atomic writes: made beside their destination (so the rename that
puts them in place never crosses a file system), under names no one else uses:

    .rdtmp-<name[:40]>.<host tag>.<pid>.<n>

An agent removes its own when a write fails or its channel closes.  One killed mid-write
(SIGKILL, a crash, the machine going down) cannot.  So every agent notes, before it makes
its first temporary in a folder, that folder in a journal of its own
(<cache>/temps/<host tag>.<pid>), and removes the journal when it ends cleanly.  The next
agent to start on the host sweeps the folders of the journals whose writer is gone; the
next agent writing into a folder sweeps it too.  Either knows from a temporary's name that
its writer is gone (same host, no such pid).  Temporaries of other hosts sharing the file
system (a cluster's home) stay.
"""

import hashlib
import itertools
import os
import socket
import threading

from .. import protocol as P
from .common import cache_dir, private_dir, unlink_quiet

HOST_TAG = hashlib.sha256(socket.gethostname().encode()).hexdigest()[:8]
_lock = threading.Lock()
_numbers = itertools.count(1)   # next() is atomic: no lock per temporary


_owner = {}   # "<host tag>.<pid>." of this process, made once (again in a forked child)


def owner_tag():
    tag = _owner.get("tag")
    if tag is None:
        tag = _owner["tag"] = "%s.%d." % (HOST_TAG, os.getpid())
    return tag


os.register_at_fork(after_in_child=_owner.clear)


def temp_head(path):
    """(path's folder, the start of its temporaries' names: a number follows)."""
    d, _, base = path.rpartition("/")
    return d or "/", "%s/%s%s.%s" % (d, P.TMP_MARK, base[:40], owner_tag())


def temp_names(path):
    """Fresh temporary names in path's folder (the caller creates exclusively)."""
    head = temp_head(path)[1]
    while True:
        yield head + str(next(_numbers))


def temp_owner(name):
    """(host tag, pid) of the agent that made the temporary file called name, or None when
    the name is not one of ours."""
    if not name.startswith(P.TMP_MARK):
        return None
    parts = name.rsplit(".", 3)
    if len(parts) != 4 or len(parts[1]) != len(HOST_TAG) or not parts[2].isdigit() or not parts[3].isdigit():
        return None
    return parts[1], int(parts[2])


def process_exists(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # EPERM: someone else's, alive
        return True
    return True


def sweep(folder):
    """Remove the temporaries in folder whose writer, an agent on this host, is gone.
    How many went."""
    try:
        names = os.listdir(folder)
    except OSError:
        return 0
    swept = 0
    me = os.getpid()
    for name in names:
        owner = temp_owner(name)
        if owner is None or owner[0] != HOST_TAG or owner[1] == me or process_exists(owner[1]):
            continue
        try:
            os.unlink(os.path.join(folder, name))
            swept += 1
        except OSError:
            pass
    return swept


# --------------------------------------------------------------------------- the journal

_journal = {"fd": None, "folders": set()}


def journal_dir():
    return os.path.join(cache_dir(), "temps")


def journal_path(pid=None):
    return os.path.join(journal_dir(), "%s.%d" % (HOST_TAG, pid or os.getpid()))


def note_folder(folder):
    """Write folder into this agent's journal (once), before a temporary is made in it."""
    if folder in _journal["folders"]:
        return   # (a set only grows while temporaries are made: read without the lock)
    with _lock:
        if folder in _journal["folders"]:
            return
        try:
            if _journal["fd"] is None:
                private_dir(journal_dir())
                _journal["fd"] = os.open(journal_path(), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
            os.write(_journal["fd"], os.fsencode(folder) + b"\0")
        except OSError:
            return   # no journal (a full disk): the folder is still swept by the next write into it
        _journal["folders"].add(folder)


def forget_journal():
    """The agent ends with its temporaries removed: its journal goes."""
    with _lock:
        if _journal["fd"] is not None:
            os.close(_journal["fd"])
            _journal["fd"] = None
            unlink_quiet(journal_path())
        _journal["folders"].clear()


def sweep_dead_agents():
    """Sweep the folders noted by agents of this host that are gone (killed mid-write),
    then drop their journals.  How many temporaries went."""
    try:
        names = os.listdir(journal_dir())
    except OSError:
        return 0
    swept = 0
    for name in names:
        tag, _, pid = name.partition(".")
        if tag != HOST_TAG or not pid.isdigit() or int(pid) == os.getpid() or process_exists(int(pid)):
            continue
        path = os.path.join(journal_dir(), name)
        try:
            with open(path, "rb") as f:
                folders = set(f.read().split(b"\0"))
        except OSError:
            continue
        for folder in folders:
            if folder:
                swept += sweep(os.fsdecode(folder))
        unlink_quiet(path)
    return swept


def make_temp(path, flags=os.O_WRONLY, mode=0o600):
    """A new temporary file in path's folder: (name, fd).  Never follows or reuses
    whatever already has the name."""
    folder, head = temp_head(path)
    note_folder(folder)
    flags |= os.O_CREAT | os.O_EXCL | P.O_NOFOLLOW
    while True:   # (temp_names without a generator: every write comes here)
        tmp = head + str(next(_numbers))
        try:
            fd = os.open(tmp, flags, mode)
        except FileExistsError:
            continue
        except OSError as e:   # named after the file being written, not its temporary
            raise OSError(e.errno, e.strerror, path) from None
        return tmp, fd


def link_temp(path, target):
    """A new symlink to target beside path, under a temporary name."""
    note_folder(os.path.dirname(path))
    for tmp in temp_names(path):
        try:
            os.symlink(target, tmp)
        except FileExistsError:
            continue
        except OSError as e:
            raise OSError(e.errno, e.strerror, path) from None
        return tmp
