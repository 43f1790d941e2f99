"""The remote agent, packed for the remote: the modules of ``remote/`` and ``protocol.py``
(as the package ``remote_dev_agent``) plus msgpack's pure-Python half, in one zip that
``python3 agent.pyz`` runs.  Its bytes are deterministic (fixed order, times and modes),
so its hash names the folder it lives in on the remote: uploaded once per content.

``protocol.py`` holds what both sides share and is imported locally too."""

from __future__ import annotations

import hashlib
import io
import shlex
import zipfile
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import msgpack

from . import protocol
from .protocol import AGENT_ZIP, COMPILED_ZIP

HERE = Path(__file__).resolve().parent
PACKAGE = "remote_dev_agent"          # the agent's package name inside the zip
MSGPACK_FILES = ("__init__.py", "exceptions.py", "ext.py", "fallback.py")
ZIP_TIME = (1980, 1, 1, 0, 0, 0)      # the earliest time a zip can hold
MAIN = (f"from {PACKAGE}.remote.main import main\n"
        "main()\n").encode()
TOP_INIT = b'"""remote_dev\'s remote agent, as packed by remote_dev.agent.bundle()."""\n'


@dataclass(frozen=True)
class Bundle:
    digest: str
    data: bytes


def bundle_files() -> list[tuple[str, bytes]]:
    """(name in the zip, content) of every file the agent's zip holds, in zip order."""
    msgpack_dir = Path(msgpack.__file__).parent
    files = [("__main__.py", MAIN), (f"{PACKAGE}/__init__.py", TOP_INIT),
             (f"{PACKAGE}/protocol.py", (HERE / "protocol.py").read_bytes())]
    files += [(f"{PACKAGE}/remote/{p.name}", p.read_bytes()) for p in sorted((HERE / "remote").glob("*.py"))]
    files += [(f"msgpack/{name}", (msgpack_dir / name).read_bytes()) for name in MSGPACK_FILES]
    return files


def pack(files: list[tuple[str, bytes]]) -> bytes:
    """A zip of files with nothing that varies between builds: given order, fixed time
    and mode, stored (no compression, so no dependence on the zlib version either)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as z:
        for name, data in files:
            info = zipfile.ZipInfo(name, ZIP_TIME)
            info.external_attr = 0o644 << 16
            info.create_system = 3  # unix, whatever this machine is
            z.writestr(info, data)
    return buf.getvalue()


@lru_cache(maxsize=1)
def bundle() -> Bundle:
    data = pack(bundle_files())
    return Bundle(hashlib.sha256(data).hexdigest()[:20], data)


# What the bootstrap prints before its answer: the agent's greeting is found past whatever
# the remote's login shell printed first (a banner of ~/.bashrc, conda init, a MOTD script).
GREETING = b"remote-dev-agent "
NEED = GREETING + b"NEED\n"
OK = GREETING + b"OK "

# Runs on the remote with nothing but python3: uploads the agent's zip when its folder
# lacks it (checked against its hash, written atomically by rename), then runs the agent on
# the same channel, from the copy with bytecode for this interpreter when the agent wrote
# one (remote/compiled.py).
_BOOTSTRAP = r"""
import os, sys
h = sys.argv[1]
base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
d = os.path.join(base, "remote-dev", "agent", h)
src = os.path.join(d, "%(zip)s")
out = sys.stdout.buffer
if not os.path.isfile(src):
    out.write(b"%(need)s\n"); out.flush()
    n = int(sys.stdin.buffer.readline())
    data = sys.stdin.buffer.read(n)
    import hashlib
    if hashlib.sha256(data).hexdigest()[:len(h)] != h:
        sys.stderr.write("the agent arrived damaged (%%d of %%d bytes)\n" %% (len(data), n))
        sys.exit(4)
    for p in (os.path.dirname(os.path.dirname(d)), os.path.dirname(d), d):
        if not os.path.isdir(p):
            os.makedirs(p, 0o700, exist_ok=True)   # ours alone (remote/common.py)
    tmp = "%%s.tmp%%d" %% (src, os.getpid())
    with os.fdopen(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "wb") as f:
        f.write(data)
    os.rename(tmp, src)
out.write(("%(ok)s%%d.%%d\n" %% sys.version_info[:2]).encode()); out.flush()
if sys.version_info < (3, 8):
    sys.exit(3)
fast = os.path.join(d, "%(compiled)s" %% sys.implementation.cache_tag)
sys.path.insert(0, fast if os.path.isfile(fast) else src)
from %(package)s.remote.main import main
main([])
""" % {"zip": AGENT_ZIP, "compiled": COMPILED_ZIP, "package": PACKAGE,
       "need": NEED.decode().strip(), "ok": OK.decode()}

# The command the SSH channel runs: the remote user's login shell gets only these words,
# which every shell (sh, bash, zsh, fish, tcsh) passes unchanged; the script that starts
# the agent (bootstrap_script) follows on the channel's stdin, read by this POSIX sh.  A
# multi-line program as one quoted argument does not survive tcsh ("Unmatched ...").
REMOTE_COMMAND = "exec sh"


def bootstrap_script(python: str, env: dict[str, str] | None = None) -> bytes:
    """The sh script that starts (and if needed installs) the agent: one command that
    replaces sh with the interpreter, so what the channel carries next is the agent's."""
    prefix = " ".join(f"{k}={shlex.quote(v)}" for k, v in (env or {}).items())
    cmd = f"{protocol.shell_word(python)} -c {shlex.quote(_BOOTSTRAP)} {bundle().digest}"
    return ((f"exec env {prefix} {cmd}" if prefix else f"exec {cmd}") + "\n").encode()
