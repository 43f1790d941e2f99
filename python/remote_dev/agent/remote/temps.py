"""Temporary files of atomic writes: made beside their destination (so the rename that
puts them in place never crosses a file system), under names no one else uses:

    .rdtmp-<name[:40]>.<host tag>.<pid>.<n>

An agent removes its own when a write fails or its channel closes.  One killed mid-write
(SIGKILL, a crash, the machine going down) cannot: the next agent that writes into the
same folder sweeps them, knowing from the name that their writer is gone (same host, no
such pid).  Temporaries of other hosts sharing the file system (a cluster's home) stay.
"""

import hashlib
import os
import socket
import threading

from .. import protocol as P

HOST_TAG = hashlib.sha256(socket.gethostname().encode()).hexdigest()[:8]
_lock = threading.Lock()
_counter = [0]


def temp_names(path):
    """Fresh temporary names in path's folder (the caller creates exclusively)."""
    d, base = os.path.split(path)
    while True:
        with _lock:
            _counter[0] += 1
            n = _counter[0]
        yield "%s/%s%s.%s.%d.%d" % (d, P.TMP_MARK, base[:40], HOST_TAG, os.getpid(), n)


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


def make_temp(path, flags=os.O_WRONLY, mode=0o600):
    """A new temporary file in path's folder: (name, fd).  Never follows or reuses
    whatever already has the name."""
    for tmp in temp_names(path):
        try:
            fd = os.open(tmp, flags | os.O_CREAT | os.O_EXCL | P.O_NOFOLLOW, mode)
        except FileExistsError:
            continue
        return tmp, fd


def link_temp(path, target):
    """A new symlink to target beside path, under a temporary name."""
    for tmp in temp_names(path):
        try:
            os.symlink(target, tmp)
        except FileExistsError:
            continue
        return tmp
