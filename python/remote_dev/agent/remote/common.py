"""Small helpers every area of the agent uses: its error type, where its files live,
JSON records written atomically."""

import errno
import json
import os
import shutil
import sys
import threading


class AgentError(Exception):
    """An expected failure, reported to the client with a kind and a message."""

    def __init__(self, kind, message):
        Exception.__init__(self, message)
        self.kind = kind
        self.message = message


def activate_interpreter(environ=None, executable=None, prefix=None, base_prefix=None):
    """The agent runs as the target's python; what it starts (runs, debug runs, kernels,
    notebook servers, shells) sees that interpreter's environment as an activated one
    would: a venv's or conda environment's bin first on PATH, VIRTUAL_ENV (a venv) or
    CONDA_PREFIX (conda) set, so `python`, `pip`, `torchrun` in a command are its.  A
    plain system python changes nothing.  Returns the variables it set."""
    environ = os.environ if environ is None else environ
    executable = executable or sys.executable
    prefix = prefix or sys.prefix
    base_prefix = base_prefix or getattr(sys, "base_prefix", prefix)
    venv = prefix != base_prefix
    conda = os.path.isdir(os.path.join(prefix, "conda-meta"))
    bindir = os.path.dirname(executable) if executable else ""
    if not (venv or conda) or not bindir:
        return {}
    changes = {}
    path = environ.get("PATH", os.defpath)
    if path.split(os.pathsep)[0] != bindir:
        changes["PATH"] = bindir + os.pathsep + path
    if venv:
        changes["VIRTUAL_ENV"] = prefix
        environ.pop("PYTHONHOME", None)
    else:
        changes["CONDA_PREFIX"] = prefix
    environ.update(changes)
    return changes


def cache_dir():
    """~/.cache/remote-dev (XDG_CACHE_HOME honoured): the agent, run folders, debugpy."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "remote-dev")


def expand_root(root):
    """A project root as the client names it (~, relative to home) made absolute."""
    root = os.path.expanduser(root)
    if not os.path.isabs(root):
        root = os.path.join(os.path.expanduser("~"), root)
    return os.path.normpath(root)


def write_json(path, obj):
    """obj as JSON at path, atomically.  The temporary is per thread: two threads of one
    agent recording the same file at once (a stop and the watcher of a Slurm job) must not
    rename each other's temporary."""
    tmp = path + ".tmp%d.%d" % (os.getpid(), threading.get_ident())
    with open(tmp, "w") as f:
        json.dump(obj, f)
    os.rename(tmp, path)


def read_json(path):
    with open(path) as f:
        return json.load(f)


def write_all(fd, data):
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


def unlink_quiet(path):
    try:
        os.unlink(path)
    except OSError:
        pass


def renew_dir(d):
    """Make folder d anew (mode 0700), removing an old one; False when another client
    made it this instant (then it is theirs)."""
    shutil.rmtree(d, ignore_errors=True)
    os.makedirs(os.path.dirname(d), exist_ok=True)
    try:
        os.mkdir(d, 0o700)
    except FileExistsError:
        return False
    return True


# What to do about the file system errors a user meets on a remote.
OS_HINTS = {
    errno.ENOSPC: "free space there and try again",
    errno.EDQUOT: "the disk quota is used up: free space there and try again",
    errno.EROFS: "that file system is mounted read-only there",
    errno.EACCES: "the remote user may not write there: check the owner and permissions of the folder",
    errno.EPERM: "the remote user may not change that: check the owner and permissions",
}


def os_message(e, where=None):
    """An OSError as one line: what failed, where (its file, else where), and what to do."""
    where = e.filename or where
    text = "%s: %s" % (e.strerror or e, where) if where else str(e.strerror or e)
    hint = OS_HINTS.get(e.errno)
    return "%s (%s)" % (text, hint) if hint else text
