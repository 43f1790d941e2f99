"""Temporary files of atomic writes: made beside their destination (so the rename that
puts them in place never crosses a file system), under names no one else uses."""

import os
import threading

from .. import protocol as P

_lock = threading.Lock()
_counter = [0]


def temp_names(path):
    """Fresh temporary names in path's folder (the caller creates exclusively)."""
    d, base = os.path.split(path)
    while True:
        with _lock:
            _counter[0] += 1
            n = _counter[0]
        yield "%s/%s%s.%d-%d" % (d, P.TMP_MARK, base[:40], os.getpid(), n)


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
