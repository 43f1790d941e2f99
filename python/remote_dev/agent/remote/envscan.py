"""What the target's python imports from outside the project, for the local :RemoteEnv
mirror: env_probe (its sys.path and a cheap stamp of it), env_list (the sources a type
checker reads under those folders), env_read (a batch of them in one blob).

The stamp changes when a package is installed, upgraded or removed (pip renames folders
in site-packages, which changes that folder's mtime) and when a .pth file changes (an
editable install); it costs a listing of each sys.path folder, no walk.
"""

import hashlib
import json
import os
import subprocess
import sys
import threading

from .. import protocol as P
from .common import AgentError

# Run by the target's interpreter with the target's environment: its import path as a
# program would see it (site, .pth files, PYTHONPATH), without the script's own folder, and
# the packages of editable installs that an import hook finds instead of sys.path
# (setuptools' __editable___*_finder.py: MAPPING = {name: folder}).
PROBE = r"""
import ast, json, os, re, sys
path = sys.path[1:]
editable = []
for d in path:
    try:
        names = sorted(os.listdir(d))
    except OSError:
        continue
    for n in names:
        if n.startswith("__editable__") and n.endswith("_finder.py"):
            try:
                with open(os.path.join(d, n)) as f:
                    m = re.search(r"^MAPPING\s*(?::[^=\n]*)?=\s*(\{.*?\})\s*$", f.read(), re.M | re.S)
                editable += sorted(ast.literal_eval(m.group(1)).items()) if m else []
            except (OSError, ValueError, SyntaxError):
                pass
sys.stdout.write(json.dumps({"path": path, "editable": editable, "prefix": sys.prefix,
                             "version": "%d.%d.%d" % sys.version_info[:3]}))
"""
SOURCE_SUFFIXES = (".py", ".pyi", ".pth")
SOURCE_NAMES = frozenset(("py.typed",))
META_FOLDERS = (".dist-info", ".egg-info")
META_NAMES = frozenset(("METADATA", "PKG-INFO", "RECORD", "top_level.txt", "direct_url.json", "entry_points.txt"))
SKIP_FOLDERS = frozenset(("__pycache__",))
# Install folders inside another root (the base interpreter's site-packages under its
# stdlib, seen from a venv): imported from only when on sys.path, then a root of their own.
INSTALL_FOLDERS = frozenset(("site-packages", "dist-packages"))
_CORES = min(os.cpu_count() or 1, 4)
_SLOTS = threading.BoundedSemaphore(_CORES)   # compressions at once (each read has its thread)


def _inside(path, roots):
    for root in roots:
        if path == root or path.startswith(root.rstrip("/") + "/"):
            return True
    return False


def env_probe(python, env, exclude):
    """{"paths", "editable", "stamp", "version", "prefix"}: the folders of python's sys.path
    (None: this agent's interpreter, which is the target's) outside the folders of exclude,
    in order; [name, folder] of the packages editable installs map by an import hook (outside
    exclude); and the stamp of what they hold."""
    full_env = dict(os.environ)
    full_env.update(env or {})
    exe = python or sys.executable
    try:
        p = subprocess.run([os.path.expanduser(exe), "-c", PROBE], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, timeout=60, env=full_env, cwd="/")
    except (OSError, subprocess.TimeoutExpired) as e:
        raise AgentError("env", "%s: %s" % (exe, e))
    if p.returncode != 0:
        tail = p.stderr.decode("utf-8", "replace").strip().splitlines()[-1:] or ["exit %d" % p.returncode]
        raise AgentError("env", "%s could not list its sys.path: %s" % (exe, tail[0]))
    info = json.loads(p.stdout.decode("utf-8", "surrogateescape"))
    excl = [os.path.normpath(os.path.expanduser(x)) for x in exclude or ()]
    paths = []
    for entry in info.get("path") or ():
        if not entry or not os.path.isabs(entry):
            continue
        entry = os.path.normpath(entry)
        if entry in paths or _inside(entry, excl) or not os.path.isdir(entry):
            continue
        paths.append(entry)
    editable = []
    for name, folder in info.get("editable") or ():
        folder = os.path.normpath(folder)
        if os.path.isdir(folder) and not _inside(folder, excl) and folder not in paths:
            editable.append([name, folder])
    return {"paths": paths, "editable": editable, "stamp": stamp_of(paths + [f for _, f in editable]),
            "version": info.get("version"), "prefix": info.get("prefix")}


def stamp_of(paths):
    """A hash of each folder's mtime and of its .pth and .egg-link files (name, size, mtime)."""
    h = hashlib.sha256()
    for path in paths:
        try:
            st = os.stat(path)
            h.update(("%s\0%d\0" % (path, st.st_mtime_ns)).encode("utf-8", "surrogateescape"))
            with os.scandir(path) as it:
                for e in sorted(it, key=lambda e: e.name):
                    if e.name.endswith((".pth", ".egg-link")):
                        s = e.stat()
                        h.update(("%s\0%d\0%d\0" % (e.name, s.st_size, s.st_mtime_ns)).encode("utf-8", "surrogateescape"))
        except OSError:
            h.update(("%s\0gone\0" % path).encode("utf-8", "surrogateescape"))
    return h.hexdigest()[:32]


def wanted(folder, name):
    """Whether a file is one a type checker or a reader of tracebacks needs."""
    if name.endswith(SOURCE_SUFFIXES) or name in SOURCE_NAMES:
        return True
    return name in META_NAMES and folder.endswith(META_FOLDERS)


def env_list(roots, exclude):
    """[[rel, size, mtime_ns], ...] per root: its sources and metadata, without the folders
    of other roots (lib-dynload inside the stdlib), of exclude, and __pycache__."""
    roots = [os.path.normpath(r) for r in roots]
    excl = [os.path.normpath(os.path.expanduser(x)) for x in exclude or ()]
    out = []
    for root in roots:
        others = [r for r in roots if r != root and r.startswith(root.rstrip("/") + "/")] + excl
        files = []
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames[:] = sorted(d for d in dirnames if d not in SKIP_FOLDERS and not d.startswith(".")
                                 and d not in INSTALL_FOLDERS
                                 and not _inside(os.path.join(dirpath, d), others))
            for name in filenames:
                if not wanted(dirpath, name):
                    continue
                full = os.path.join(dirpath, name)
                try:
                    st = os.stat(full)
                except OSError:
                    continue
                if not (st.st_mode & 0o170000 == 0o100000):
                    continue
                files.append([os.path.relpath(full, root), st.st_size, st.st_mtime_ns])
        out.append(files)
    return out


def env_read(root, rels, link, formats=None):
    """[format, blob]: the files rels under root as one blob (a JSON header of [rel, size,
    mtime_ns] -- size -1 for a file gone since it was listed -- then their bytes),
    compressed for a link of link wire bytes per second (protocol.choose_codec)."""
    root = os.path.normpath(root)
    header = []
    parts = []
    for rel in rels:
        full = os.path.normpath(os.path.join(root, rel))
        if not full.startswith(root.rstrip("/") + "/"):
            raise AgentError("path", "%s: outside %s" % (rel, root))
        try:
            with open(full, "rb") as f:
                st = os.fstat(f.fileno())
                data = f.read()
        except OSError:
            header.append([rel, -1, 0])
            continue
        header.append([rel, len(data), st.st_mtime_ns])
        parts.append(data)
    raw = P.pack_files(header, parts)
    if link is not None and raw:
        fmt, level = P.choose_codec(link, _CORES, P.sample_ratio(raw), formats or P.codec_formats())
        if fmt:
            with _SLOTS:
                blob = P.compress(fmt, level, raw)
            if len(blob) < len(raw):
                return [fmt, blob]
    return [P.RAW, raw]
