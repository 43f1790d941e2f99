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


class Later(object):
    """A method's answer, and what to send after it: once the answer is out, the
    notification [2, method, [key, make()]] (server.py; [key, None] when make fails)."""

    def __init__(self, value, method, key, make):
        self.value = value
        self.method = method
        self.key = key
        self.make = make


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


# What we keep on the remote (runs, services, shells, allocations, debug endpoints, locks,
# the agent, debugpy) is its user's alone: folders 0700, files 0600 (0700 when executable).
# Other users of a shared machine can often traverse the home folder (0755 homes).
PRIVATE_MARK = ".private-v1"   # the cache was tightened once (what earlier versions left)


def private_dir(d):
    """Folder d and any missing folder above it up to the cache, each made 0700; d
    itself made 0700 when it existed already."""
    missing = []
    cur = d
    while not os.path.isdir(cur):
        missing.append(cur)
        parent = os.path.dirname(cur)
        if parent == cur:
            break
        cur = parent
    for folder in reversed(missing):
        try:
            os.mkdir(folder, 0o700)
        except FileExistsError:
            pass
    os.chmod(d, 0o700)   # the umask cannot widen a mkdir's mode; an older folder is tightened
    return d


def private_file(path):
    """An empty file at path, mode 0600."""
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600))


def tighten(path):
    """Folders 0700 and files 0600 (0700 when executable) under path, the way an older
    version left them too; symbolic links are not followed."""
    for dirpath, dirnames, filenames in os.walk(path):
        try:
            os.chmod(dirpath, 0o700)
        except OSError:
            pass
        for name in filenames:
            full = os.path.join(dirpath, name)
            try:
                st = os.lstat(full)
                if not os.path.islink(full):
                    os.chmod(full, 0o700 if st.st_mode & 0o100 else 0o600)
            except OSError:
                pass


def secure_cache():
    """The cache folder 0700; on the first contact of this version everything in it is
    tightened once (a marker remembers it)."""
    base = cache_dir()
    private_dir(base)
    mark = os.path.join(base, PRIVATE_MARK)
    if not os.path.exists(mark):
        tighten(base)
        private_file(mark)
    return base


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
    with os.fdopen(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as f:
        json.dump(obj, f)
    os.rename(tmp, path)


def read_json(path):
    with open(path) as f:
        return json.load(f)


def write_all(fd, data):
    n = os.write(fd, data)   # (a file's whole content, mostly: no view made)
    if n < len(data):
        view = memoryview(data)[n:]
        while view:
            view = view[os.write(fd, view):]


def unlink_quiet(path):
    try:
        os.unlink(path)
    except OSError:
        pass


def renew_dir(d):
    """Make folder d anew (mode 0700), removing an old one; False when another client
    made it this instant (then it is theirs)."""
    shutil.rmtree(d, ignore_errors=True)
    private_dir(os.path.dirname(d))
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
