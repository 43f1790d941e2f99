"""Facts about the remote host and short commands: hello, ping, stat_root, which, exec,
free_port."""

import os
import socket
import subprocess
import sys
import time

from .. import protocol as P
from .common import expand_root, secure_cache
from .reuse import has_index
from . import zstdlib

AGENT_VERSION = "1"


def hello(client_version):
    return {
        "version": AGENT_VERSION,
        "python": "%d.%d.%d" % sys.version_info[:3],
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "cache_dir": secure_cache(),
        "home": os.path.expanduser("~"),
        "codecs": zstdlib.formats(),   # compression formats it decodes (bz2 can be missing)
        "cpus": os.cpu_count() or 1,
        "reuse": has_index(),          # it holds a content index: a push into a new root offers hashes
    }


def ping():
    return time.time()


def stat_root(root):
    """The project root on this host: absolute path, whether it exists, whether it (or
    the nearest folder above it) is writable, and the free space there."""
    path = expand_root(root)
    info = {"path": path, "exists": os.path.isdir(path)}
    probe = path
    while not os.path.isdir(probe):
        parent = os.path.dirname(probe)
        if parent == probe:
            break
        probe = parent
    try:
        vfs = os.statvfs(probe)
        info["free_bytes"] = vfs.f_bavail * vfs.f_frsize
    except OSError:
        info["free_bytes"] = None
    info["writable"] = os.access(probe, os.W_OK)
    return info


def which(names):
    out = {}
    paths = os.environ.get("PATH", "").split(os.pathsep) + ["/usr/sbin", "/usr/local/bin"]
    for name in names:
        out[name] = None
        for d in paths:
            p = os.path.join(d, name)
            if os.path.isfile(p) and os.access(p, os.X_OK):
                out[name] = p
                break
    return out


def exec_(argv, timeout, env):
    """Run a short command and return its exit code and output (preflight, build
    checks, scontrol).  Not for user programs: those are runs."""
    full_env = dict(os.environ)
    full_env.update(env or {})
    try:
        p = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, timeout=timeout, env=full_env)
    except FileNotFoundError:
        return {"code": 127, "stdout": b"", "stderr": ("%s: not found" % argv[0]).encode()}
    except subprocess.TimeoutExpired as e:
        return {"code": 124, "stdout": e.stdout or b"", "stderr": b"timed out"}
    return {"code": p.returncode, "stdout": p.stdout, "stderr": p.stderr}


def free_port():
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
    finally:
        s.close()
