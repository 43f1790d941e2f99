"""remote_dev's remote agent.

One stdlib-only program (Python >= 3.8) plus the pure-Python half of msgpack, uploaded
content-addressed into the remote user's cache dir and started over one long-lived SSH
channel.  It speaks msgpack-RPC on stdin/stdout:

    request       [0, msgid, method, params]
    response      [1, msgid, error, result]      error = None or {"kind", "message"}

Requests are handled in arrival order on the reader thread, except the ones marked
``slow`` (long polls, stopping runs) which get a thread of their own, so a long poll never
holds up a push.

File operations take paths relative to a root and refuse anything that would land outside
it: absolute paths, ``..`` components and symlinks on the way.  Every write goes to a
temporary file in the destination folder and is renamed into place; temporary files still
open when the channel closes are removed.

Runs are detached: ``python3 remote_dev_agent.py supervise DIR`` becomes a session leader
and child subreaper, starts the command with its output going straight to DIR/output.log,
and records the exit status in DIR/exit.json.  Stopping a run signals every process of it:
descendants of the supervisor plus any process carrying the run's REMOTE_DEV_RUN_ID.
"""

import errno
import hashlib
import json
import os
import signal
import socket
import stat
import subprocess
import sys
import threading
import time

try:
    import msgpack
except ImportError:  # pragma: no cover - the bundle always carries it
    msgpack = None

AGENT_VERSION = "1"
HASH_CHUNK = 1 << 20
TMP_MARK = ".rdtmp-"
LIVE_STATES = ("starting", "running", "pending")


class AgentError(Exception):
    """An expected failure, reported to the client with a kind and a message."""

    def __init__(self, kind, message):
        Exception.__init__(self, message)
        self.kind = kind
        self.message = message


def cache_dir():
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "remote-dev")


def expand_root(root):
    root = os.path.expanduser(root)
    if not os.path.isabs(root):
        root = os.path.join(os.path.expanduser("~"), root)
    return os.path.normpath(root)


def file_hash(path):
    """Content hash as sync records it: sha256 (hardware-accelerated almost everywhere),
    truncated to 128 bits.  Never follows a final symlink."""
    h = hashlib.sha256()
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    with os.fdopen(fd, "rb") as f:
        while True:
            block = f.read(HASH_CHUNK)
            if not block:
                break
            h.update(block)
    return h.hexdigest()[:32]


def link_hash(target):
    return hashlib.sha256(b"link:" + os.fsencode(target)).hexdigest()[:32]


# --------------------------------------------------------------------------- paths


def check_relpath(rel):
    if not isinstance(rel, str) or rel == "" or "\0" in rel:
        raise AgentError("path", "bad path %r" % (rel,))
    if rel.startswith("/") or os.path.isabs(rel):
        raise AgentError("path", "refused absolute path %r" % rel)
    parts = rel.split("/")
    for part in parts:
        if part in ("", ".", ".."):
            raise AgentError("path", "refused path %r: empty, '.' or '..' component" % rel)
    return parts


def resolve(root, rel, create_parents=False, known_dirs=None):
    """Absolute path of root/rel after checking that no component on the way is a
    symlink (so nothing is ever read or written outside root).  known_dirs: {folder:
    made by this request} for folders already checked during the same request."""
    parts = check_relpath(rel)
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


def entry_state(path):
    """(kind, size, mtime_ns) of what is at path without following a final symlink,
    or None."""
    try:
        st = os.lstat(path)
    except (FileNotFoundError, NotADirectoryError):
        return None
    return stat_state(st)


def stat_state(st):
    if stat.S_ISLNK(st.st_mode):
        return ["l", st.st_size, st.st_mtime_ns]
    if stat.S_ISREG(st.st_mode):
        return ["f", st.st_size, st.st_mtime_ns]
    if stat.S_ISDIR(st.st_mode):
        return ["d", 0, st.st_mtime_ns]
    return ["o", st.st_size, st.st_mtime_ns]


def content_hash(path, state):
    if state[0] == "l":
        return link_hash(os.readlink(path))
    if state[0] == "f":
        return file_hash(path)
    return None


def conflict_reason(path, expect, new_hash, state=False):
    """None when path may be replaced: it is what the last sync left (by stat or by
    content), absent where nothing was synced, or already equal to the new content.
    Otherwise a short reason.  state: entry_state(path) when already known."""
    if state is False:
        state = entry_state(path)
    if state is None:
        return None  # absent (or deleted remotely): writing it loses nothing
    if state[0] == "d":
        return "a folder is in the way"
    if state[0] == "o":
        return "something other than a file is in the way"
    if expect is not None and state[1] == expect[1] and state[2] == expect[2] and state[0] == expect[0]:
        return None
    current = content_hash(path, state)
    if new_hash is not None and current == new_hash:
        return None
    if expect is not None and current == expect[3]:
        return None
    if expect is None:
        return "exists on the remote and differs (never pushed by remote_dev)"
    return "changed on the remote since the last sync"


class Staged(object):
    """A large file arriving in chunks: a temporary file beside its destination, hashed
    as it is written."""

    def __init__(self, tmp, fd, final):
        self.tmp = tmp
        self.fd = fd
        self.final = final
        self.hash = hashlib.sha256()
        self.size = 0
        self.error = None

    def discard(self):
        if self.fd is not None:
            try:
                os.close(self.fd)
            except OSError:
                pass
            self.fd = None
        try:
            os.unlink(self.tmp)
        except OSError:
            pass


def temp_names(path):
    """Fresh temporary names in path's folder (the caller creates exclusively)."""
    d, base = os.path.split(path)
    global _tmp_counter
    while True:
        _tmp_counter += 1
        yield "%s/%s%s.%d-%d" % (d, TMP_MARK, base[:40], os.getpid(), _tmp_counter)


def make_temp(path, flags=os.O_WRONLY, mode=0o600):
    """A new temporary file in path's folder: (name, fd).  Never follows or reuses
    whatever already has the name."""
    for tmp in temp_names(path):
        try:
            fd = os.open(tmp, flags | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), mode)
        except FileExistsError:
            continue
        return tmp, fd


_tmp_counter = 0


def current_umask():
    old = os.umask(0o022)
    os.umask(old)
    return old


UMASK = current_umask()


def write_all(fd, data):
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


def op_from_dict(op):
    """The older map form of a push op: {"op", "path", "data" | "token" | "target", "mode",
    "hash", "expect", "force"}."""
    kind = op.get("op")
    if kind == "w" and op.get("token") is not None:
        return ["s", op.get("path"), op.get("expect"), op.get("force"), op.get("hash"), op.get("mode"), op["token"]]
    if kind == "w":
        return ["w", op.get("path"), op.get("expect"), op.get("force"), op.get("hash"), op.get("mode"), op.get("data", b"")]
    if kind == "l":
        return ["l", op.get("path"), op.get("expect"), op.get("force"), op.get("hash"), None, op.get("target")]
    return [kind, op.get("path"), op.get("expect"), op.get("force")]


def unlink_quiet(path):
    try:
        os.unlink(path)
    except OSError:
        pass


# --------------------------------------------------------------------------- the agent


class Agent(object):
    def __init__(self, out):
        self.out = out
        self.out_lock = threading.Lock()
        self.packer_lock = threading.Lock()
        self.staged = {}  # token -> Staged
        self.staged_lock = threading.Lock()
        self.next_token = 0

    # -- transport
    def send(self, obj):
        data = msgpack.packb(obj, use_bin_type=True)
        with self.out_lock:
            self.out.write(data)
            self.out.flush()

    def respond(self, msgid, error, result):
        try:
            self.send([1, msgid, error, result])
        except (BrokenPipeError, OSError):
            pass

    def handle(self, msg):
        if not isinstance(msg, list) or len(msg) != 4 or msg[0] != 0:
            return
        _, msgid, method, params = msg
        entry = METHODS.get(method)
        if entry is None:
            self.respond(msgid, {"kind": "method", "message": "unknown method %r" % method}, None)
            return
        func, slow = entry
        if slow:
            t = threading.Thread(target=self.call, args=(msgid, func, params))
            t.daemon = True
            t.start()
        else:
            self.call(msgid, func, params)

    def call(self, msgid, func, params):
        try:
            result = func(self, *params)
        except AgentError as e:
            self.respond(msgid, {"kind": e.kind, "message": e.message}, None)
        except OSError as e:
            self.respond(msgid, {"kind": "os", "message": "%s: %s" % (e.strerror or e, e.filename or "")}, None)
        except Exception as e:  # noqa: BLE001 - report, keep serving
            self.respond(msgid, {"kind": "internal", "message": "%s: %s" % (type(e).__name__, e)}, None)
        else:
            self.respond(msgid, None, result)

    def cleanup(self):
        """Remove the temporary files of large files still arriving (channel closed)."""
        with self.staged_lock:
            staged = list(self.staged.values())
            self.staged.clear()
        for entry in staged:
            entry.discard()

    # -- basic
    def m_hello(self, client_version):
        return {
            "version": AGENT_VERSION,
            "python": "%d.%d.%d" % sys.version_info[:3],
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "cache_dir": cache_dir(),
            "home": os.path.expanduser("~"),
        }

    def m_ping(self):
        return time.time()

    def m_stat_root(self, root):
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

    def m_which(self, names):
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

    def m_exec(self, argv, timeout, env):
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

    def m_free_port(self):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            s.bind(("127.0.0.1", 0))
            return s.getsockname()[1]
        finally:
            s.close()

    # -- files
    def m_stage(self, root, rel):
        """Open a temporary file beside root/rel for a large file sent in chunks
        (append), then written by a push op ["s", ...] carrying the token."""
        root = expand_root(root)
        os.makedirs(root, exist_ok=True)
        final = resolve(root, rel, create_parents=True)
        tmp, fd = make_temp(final)
        with self.staged_lock:
            self.next_token += 1
            token = self.next_token
            self.staged[token] = Staged(tmp, fd, final)
        return token

    def m_append(self, token, data):
        with self.staged_lock:
            entry = self.staged.get(token)
        if entry is None:
            raise AgentError("stage", "unknown staged file %r" % token)
        if entry.error is not None:
            raise AgentError("stage", entry.error)
        try:
            write_all(entry.fd, data)
        except OSError as e:
            entry.error = "%s: %s" % (e.strerror or e, entry.final)
            raise AgentError("stage", entry.error)
        entry.hash.update(data)
        entry.size += len(data)
        return None

    def m_unstage(self, token):
        self.drop_staged(token)

    def drop_staged(self, token):
        with self.staged_lock:
            entry = self.staged.pop(token, None)
        if entry is not None:
            entry.discard()

    def m_push(self, root, ops):
        """Apply file operations in order; one result per op:
        ["ok", size, mtime_ns] | ["conflict", reason] | ["error", message] | ["gone"].

        op: ["w", path, expect, force, hash, mode, data]     a file, whole
            ["s", path, expect, force, hash, mode, token]    a file staged in chunks
            ["l", path, expect, force, hash, None, target]   a symlink (never followed)
            ["d", path, expect, force]                       delete a file or symlink
        expect: None (nothing synced yet) or [kind, size, mtime_ns, hash] as the last sync
        left it; a path that is no longer that is a conflict unless force."""
        root = expand_root(root)
        if not os.path.isdir(root):
            os.makedirs(root, exist_ok=True)
        known_dirs = {}
        results = []
        for op in ops:
            if isinstance(op, dict):
                op = op_from_dict(op)
            try:
                results.append(self.apply(root, op, known_dirs))
            except AgentError as e:
                results.append(["error", e.message])
                if op[0] == "s":
                    self.drop_staged(op[6])
            except OSError as e:
                results.append(["error", "%s: %s" % (e.strerror or e, op[1])])
                if op[0] == "s":
                    self.drop_staged(op[6])
        return results

    def apply(self, root, op, known_dirs=None):
        if isinstance(op, dict):
            op = op_from_dict(op)
        kind, rel, expect, force = op[0], op[1], op[2], op[3]
        if kind == "d":
            path = resolve(root, rel, known_dirs=known_dirs)
            state = entry_state(path)
            if state is None:
                return ["gone"]
            if state[0] == "d":
                return ["error", "%s is a folder" % rel]
            if not force:
                reason = conflict_reason(path, expect, None, state)
                if reason:
                    return ["conflict", reason]
            os.unlink(path)
            self.prune_dirs(root, os.path.dirname(path))
            return ["ok", 0, 0]
        if kind not in ("w", "s", "l"):
            raise AgentError("op", "unknown op %r" % (kind,))
        new_hash, mode, payload = op[4], op[5], op[6]
        staged = None
        if kind == "s":
            with self.staged_lock:
                staged = self.staged.pop(payload, None)
            if staged is None:
                raise AgentError("stage", "unknown staged file %r" % (payload,))
        try:
            path = resolve(root, rel, create_parents=True, known_dirs=known_dirs)
            if staged is not None and staged.final != path:
                raise AgentError("stage", "staged for another path")
            if known_dirs is not None and known_dirs.get(path.rpartition("/")[0]):
                state = None  # in a folder this request made
            else:
                state = entry_state(path)
            if state is not None and state[0] == "d":
                return ["error", "%s: a folder is in the way" % rel]
            if not force:
                reason = conflict_reason(path, expect, new_hash, state)
                if reason:
                    return ["conflict", reason]
            if kind == "l":
                tmp = self.link_temp(path, payload)
                try:
                    os.rename(tmp, path)
                except BaseException:
                    unlink_quiet(tmp)
                    raise
                st = os.lstat(path)
                return ["ok", st.st_size, st.st_mtime_ns]
            elif staged is not None:
                if staged.error is not None:
                    return ["error", staged.error]
                if new_hash is not None and staged.hash.hexdigest()[:32] != new_hash:
                    return ["error", "%s: the staged content does not match (%d bytes arrived)" % (rel, staged.size)]
                tmp, fd = staged.tmp, staged.fd
                staged.fd = None
            want = (mode if mode is not None else 0o644) & 0o7777
            if staged is None:
                tmp, fd = make_temp(path, mode=want & 0o777)
            try:
                try:
                    if staged is None:
                        write_all(fd, payload)
                    if staged is not None or want & (UMASK | 0o7000):
                        os.fchmod(fd, want)  # the umask took bits off (or setuid & co.)
                    st = os.fstat(fd)
                finally:
                    os.close(fd)
                os.rename(tmp, path)
            except BaseException:
                unlink_quiet(tmp)
                raise
            staged = None
            return ["ok", st.st_size, st.st_mtime_ns]
        finally:
            if staged is not None:
                staged.discard()

    @staticmethod
    def link_temp(path, target):
        for tmp in temp_names(path):
            try:
                os.symlink(target, tmp)
            except FileExistsError:
                continue
            return tmp

    def prune_dirs(self, root, d):
        while d != root and d.startswith(root + "/"):
            try:
                os.rmdir(d)
            except OSError:
                return
            d = os.path.dirname(d)

    def m_state(self, root, rels, hashes=True):
        """[kind, size, mtime_ns, hash] (hash None unless hashes) or None for each path:
        only files and symlinks count."""
        root = expand_root(root)
        out = []
        known_dirs = {}
        for rel in rels:
            try:
                path = resolve(root, rel, known_dirs=known_dirs)
                state = entry_state(path)
                if state is None or state[0] not in ("f", "l"):
                    out.append(None)
                else:
                    out.append(state + [content_hash(path, state) if hashes else None])
            except (AgentError, OSError):
                out.append(None)
        return out

    def m_list(self, root, folders, known):
        """Files and symlinks under the given folders (relative to root), never following
        symlinks: {rel: [kind, size, mtime_ns, hash_or_None, mode, link_target]}.  The hash is
        left out (None) where ``known`` already has the same kind/size/mtime."""
        root = expand_root(root)
        result = {}
        for folder in folders:
            folder = folder.strip("/")
            try:
                base = resolve(root, folder) if folder else root
            except AgentError:
                continue
            st = entry_state(base)
            if st is None:
                continue
            if st[0] != "d":
                self.list_one(root, folder, base, known, result)
                continue
            for dirpath, dirnames, filenames in os.walk(base):
                for name in filenames + [d for d in dirnames if os.path.islink(os.path.join(dirpath, d))]:
                    if TMP_MARK in name:
                        continue
                    full = os.path.join(dirpath, name)
                    rel = os.path.relpath(full, root).replace(os.sep, "/")
                    self.list_one(root, rel, full, known, result)
        return result

    def list_one(self, root, rel, full, known, result):
        try:
            st = os.lstat(full)
        except OSError:
            return
        if stat.S_ISLNK(st.st_mode):
            kind, target = "l", os.readlink(full)
        elif stat.S_ISREG(st.st_mode):
            kind, target = "f", None
        else:
            return
        prev = known.get(rel)
        digest = None
        if not (prev and prev[0] == kind and prev[1] == st.st_size and prev[2] == st.st_mtime_ns):
            try:
                digest = link_hash(target) if kind == "l" else file_hash(full)
            except OSError:
                return
        result[rel] = [kind, st.st_size, st.st_mtime_ns, digest, st.st_mode & 0o7777, target]

    def m_read(self, root, rel, offset, size):
        """Bytes of a regular file under root (a final symlink is refused, not followed)."""
        root = expand_root(root)
        path = resolve(root, rel)
        try:
            fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
        except OSError as e:
            if e.errno == errno.ELOOP:
                raise AgentError("path", "refused %r: a symlink" % rel)
            raise
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise AgentError("path", "refused %r: not a regular file" % rel)
            os.lseek(fd, offset, os.SEEK_SET)
            chunks = []
            while size > 0:
                block = os.read(fd, min(size, 1 << 22))
                if not block:
                    break
                chunks.append(block)
                size -= len(block)
            return b"".join(chunks)
        finally:
            os.close(fd)

    # -- runs
    def runs_dir(self):
        return os.path.join(cache_dir(), "runs")

    def m_run_start(self, spec):
        """Start a detached run.  spec: {id, root, argv | cmd, env, meta}."""
        run_id = spec["id"]
        if "/" in run_id or run_id.startswith("."):
            raise AgentError("run", "bad run id %r" % run_id)
        d = os.path.join(self.runs_dir(), run_id)
        os.makedirs(d)
        spec = dict(spec)
        spec["root"] = expand_root(spec["root"])
        spec["created"] = time.time()
        write_json(os.path.join(d, "spec.json"), spec)
        open(os.path.join(d, "output.log"), "wb").close()
        if spec.get("slurm") is not None:
            return submit_slurm(d, spec)
        start_supervisor(d)
        try:
            deadline = time.time() + 10
            delay = POLL_FIRST
            while time.time() < deadline:
                info = run_info(d)
                if info["state"] != "starting":
                    return info
                time.sleep(delay)
                delay = min(delay * 1.5, POLL_MAX_YOUNG)
            return run_info(d)
        finally:
            spare_later()

    def m_run_info(self, run_id):
        d = os.path.join(self.runs_dir(), run_id)
        if not os.path.isdir(d):
            raise AgentError("run", "no run %r on this host" % run_id)
        return run_info(d)

    def m_run_list(self, root):
        root = expand_root(root) if root else None
        out = []
        try:
            names = os.listdir(self.runs_dir())
        except FileNotFoundError:
            return out
        for name in sorted(names):
            d = os.path.join(self.runs_dir(), name)
            try:
                info = run_info(d)
            except (OSError, ValueError):
                continue
            if root is None or info.get("root") == root:
                out.append(info)
        return out

    def m_run_read(self, run_id, offset, max_bytes, wait, min_bytes=1):
        """Output of a run from a byte offset.  With wait > 0 this is a long poll: it
        returns as soon as there is output (at least min_bytes of it, or max_bytes if
        less), the run ends, or wait seconds pass.
        Returns {data, offset (after data), size, state, info when ended}."""
        d = os.path.join(self.runs_dir(), run_id)
        log = os.path.join(d, "output.log")
        deadline = time.time() + (wait or 0)
        need = offset + max(1, min(min_bytes or 1, max_bytes))
        delay = POLL_FIRST
        while True:
            info = run_info(d)
            size = os.path.getsize(log)
            now = time.time()
            if size >= need or info["state"] not in LIVE_STATES or now >= deadline:
                break
            time.sleep(min(delay, deadline - now))
            # a young run is polled tightly (its first output shows at once), then less
            young = now - (info.get("created") or 0) < POLL_YOUNG_FOR
            delay = min(delay * 1.5, POLL_MAX_YOUNG if young else POLL_MAX)
        data = b""
        if size > offset:
            with open(log, "rb") as f:
                f.seek(offset)
                data = f.read(min(max_bytes, size - offset))
        # newlines counted here, off the client's (single) thread: it decides from them which
        # lines of fast output it shows
        return {"data": data, "offset": offset + len(data), "size": size, "info": info,
                "newlines": data.count(b"\n")}

    def m_run_stop(self, run_id, grace):
        d = os.path.join(self.runs_dir(), run_id)
        if not os.path.isdir(d):
            raise AgentError("run", "no run %r on this host" % run_id)
        info = run_info(d)
        if info["state"] not in LIVE_STATES:
            return info
        write_json(os.path.join(d, "stop.json"), {"time": time.time()})
        spec = read_json(os.path.join(d, "spec.json"))
        for argv in spec.get("stop_commands") or []:
            try:
                subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, timeout=60)
            except (OSError, subprocess.TimeoutExpired):
                pass
        if info.get("job"):
            subprocess.run(["scancel", str(info["job"])], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL, env=run_env(spec), timeout=60)
            SLURM_CACHE.pop(str(info["job"]), None)
        sup = info.get("supervisor")
        kill_run_processes(run_id, sup, grace)
        deadline = time.time() + 10
        while run_info(d)["state"] in LIVE_STATES and time.time() < deadline:
            time.sleep(0.02)
        return run_info(d)

    def m_run_listening(self, run_id, port, timeout, own_netns_only=False):
        """Wait until a process of the run listens on TCP port (seen from its own network
        namespace, so a container counts), without connecting to it.  With own_netns_only,
        only processes in another network namespace than the agent's count (a container
        with a published port: the engine holds the host side of the port itself)."""
        d = os.path.join(self.runs_dir(), run_id)
        deadline = time.time() + timeout
        want = ":%04X" % port
        try:
            my_netns = os.readlink("/proc/self/ns/net")
        except OSError:
            my_netns = None
        while time.time() < deadline:
            info = run_info(d)
            for pid in run_processes(run_id, info.get("supervisor")):
                if own_netns_only:
                    try:
                        if os.readlink("/proc/%d/ns/net" % pid) == my_netns:
                            continue
                    except OSError:
                        continue
                for table in ("tcp", "tcp6"):
                    try:
                        with open("/proc/%d/net/%s" % (pid, table)) as f:
                            next(f)
                            for line in f:
                                fields = line.split()
                                if fields[1].endswith(want) and fields[3] == "0A":
                                    return True
                    except (OSError, StopIteration):
                        continue
            if info["state"] not in LIVE_STATES:
                return False
            time.sleep(0.05)
        return False

    def m_run_file(self, run_id, name, timeout):
        """A JSON file a run writes into its folder (Slurm debug address), once it exists;
        None when the run ends first or timeout passes."""
        d = os.path.join(self.runs_dir(), run_id)
        path = os.path.join(d, os.path.basename(name))
        deadline = time.time() + timeout
        while True:
            try:
                return read_json(path)
            except (OSError, ValueError):
                pass
            if time.time() >= deadline or run_info(d)["state"] not in LIVE_STATES:
                return None
            time.sleep(0.1)


METHODS = {}
for _name in dir(Agent):
    if _name.startswith("m_"):
        METHODS[_name[2:]] = (getattr(Agent, _name), _name in ("m_run_read", "m_run_stop", "m_exec", "m_run_start", "m_run_listening",
                                                                      "m_run_file"))


# --------------------------------------------------------------------------- run records


def write_json(path, obj):
    tmp = path + ".tmp%d" % os.getpid()
    with open(tmp, "w") as f:
        json.dump(obj, f)
    os.rename(tmp, path)


def read_json(path):
    with open(path) as f:
        return json.load(f)


def pid_alive(pid, start_time=None):
    if not pid:
        return False
    try:
        with open("/proc/%d/stat" % pid) as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return False
    if fields[0] == "Z":
        return False
    if start_time is not None and fields[19] != str(start_time):
        return False  # pid reused
    return True


def run_info(d):
    spec = read_json(os.path.join(d, "spec.json"))
    info = {
        "id": spec["id"], "root": spec["root"], "cmd": spec.get("cmd") or " ".join(spec.get("argv") or []),
        "created": spec.get("created"), "meta": spec.get("meta") or {},
        "log": os.path.join(d, "output.log"),
    }
    try:
        info["size"] = os.path.getsize(os.path.join(d, "output.log"))
    except OSError:
        info["size"] = 0
    info["stopped"] = os.path.exists(os.path.join(d, "stop.json"))
    try:
        ex = read_json(os.path.join(d, "exit.json"))
    except (OSError, ValueError):
        ex = None
    try:
        started = read_json(os.path.join(d, "started.json"))
    except (OSError, ValueError):
        started = None
    if started:
        info["supervisor"] = started.get("supervisor")
        info["pid"] = started.get("pid")
        info["started"] = started["time"]
        info["job"] = started.get("job")
    if ex is None and started and started.get("job"):
        slurm_state(info, spec, d)
    elif ex is not None:
        info.update(state="exited", code=ex["code"], ended=ex["time"], error=ex.get("error"))
        if started and started.get("job"):
            info["detail"] = "CANCELLED" if info["stopped"] else ("COMPLETED" if ex["code"] == 0 else "FAILED")
    elif started is None:
        info["state"] = "starting" if time.time() - spec.get("created", 0) < 10 else "lost"
    elif pid_alive(started.get("supervisor"), started.get("start_time")):
        info["state"] = "running"
    else:
        info["state"] = "lost"
    if info["state"] == "exited" and info["stopped"]:
        info["state"] = "stopped"
    return info


# --------------------------------------------------------------------------- slurm

SLURM_CACHE = {}      # job id -> (time, fields): one squeue/scontrol per job per second
SLURM_POLL = 1.0
SLURM_LIVE = {"PENDING": "pending", "CONFIGURING": "running", "RUNNING": "running", "COMPLETING": "running",
              "SUSPENDED": "running", "REQUEUED": "pending", "RESIZING": "running", "STAGE_OUT": "running"}


def run_env(spec):
    env = dict(os.environ)
    env.update(spec.get("env") or {})
    return env


def job_script(d, spec):
    lines = ["#!/bin/sh", "cd %s || exit 1" % shquote(spec["root"])]
    for key, value in sorted((spec.get("env") or {}).items()):
        lines.append("export %s=%s" % (key, shquote(value)))
    lines += [
        "export REMOTE_DEV_RUN_ID=%s PYTHONUNBUFFERED=${PYTHONUNBUFFERED:-1}" % shquote(spec["id"]),
        "/bin/sh -c %s" % shquote(spec["cmd"]),
        "code=$?",
        'printf \'{"code": %%d, "time": %%s}\' "$code" "$(date +%%s)" > %s.tmp && mv %s.tmp %s' % (
            shquote(os.path.join(d, "exit.json")), shquote(os.path.join(d, "exit.json")),
            shquote(os.path.join(d, "exit.json"))),
        "exit $code",
    ]
    path = os.path.join(d, "job.sh")
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
    os.chmod(path, 0o755)
    return path


def shquote(s):
    return "'" + str(s).replace("'", "'\\''") + "'"


def submit_slurm(d, spec):
    """sbatch the run: no process of ours stays on the login node; the job writes the
    output and its own exit status into the run folder (a shared file system)."""
    script = job_script(d, spec)
    log = os.path.join(d, "output.log")
    argv = ["sbatch", "--parsable", "--output=" + log, "--open-mode=append", "--job-name=rd-" + spec["id"],
            "--chdir=" + spec["root"]] + list(spec["slurm"].get("args") or []) + [script]
    try:
        p = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           env=run_env(spec), timeout=120)
        out, err, code = p.stdout.decode(errors="replace"), p.stderr.decode(errors="replace"), p.returncode
    except (OSError, subprocess.TimeoutExpired) as e:
        out, err, code = "", "sbatch: %s" % e, 127
    if code != 0 or not out.strip():
        with open(log, "ab") as f:
            f.write(("remote_dev: sbatch failed: %s\n" % err.strip()).encode())
        write_json(os.path.join(d, "started.json"), {"time": time.time(), "job": None})
        write_json(os.path.join(d, "exit.json"), {"code": code or 1, "time": time.time(), "error": err.strip()})
        return run_info(d)
    job = out.strip().split(";")[0]
    write_json(os.path.join(d, "started.json"), {"time": time.time(), "job": job})
    return run_info(d)


def slurm_fields(job, env, has_output=False):
    now = time.time()
    cached = SLURM_CACHE.get(job)
    stale = has_output and cached and cached[1].get("JobState") == "PENDING"  # output: it started
    if cached and now - cached[0] < SLURM_POLL and not stale:
        return cached[1]
    fields = {}
    try:
        p = subprocess.run(["squeue", "-h", "-j", job, "-o", "%T|%r|%N"], stdin=subprocess.DEVNULL,
                           stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env, timeout=30)
        line = p.stdout.decode(errors="replace").strip().splitlines()
        if p.returncode == 0 and line:
            state, reason, node = (line[0].split("|") + ["", "", ""])[:3]
            fields = {"JobState": state, "Reason": reason, "NodeList": node}
        else:
            p = subprocess.run(["scontrol", "show", "job", "-o", job], stdin=subprocess.DEVNULL,
                               stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env, timeout=30)
            if p.returncode == 0:
                for word in p.stdout.decode(errors="replace").split():
                    if "=" in word:
                        k, v = word.split("=", 1)
                        fields[k] = v
    except (OSError, subprocess.TimeoutExpired):
        return cached[1] if cached else {}
    SLURM_CACHE[job] = (now, fields)
    return fields


def slurm_state(info, spec, d):
    job = str(info["job"])
    f = slurm_fields(job, run_env(spec), info.get("size", 0) > 0)
    state = f.get("JobState", "")
    if state in SLURM_LIVE:
        info["state"] = SLURM_LIVE[state]
        if state == "PENDING":
            reason = f.get("Reason", "")
            info["detail"] = "PENDING (%s)" % reason if reason not in ("", "None", "(null)") else "PENDING"
        else:
            info["detail"] = "%s on %s" % (state, f.get("NodeList", "?"))
        return
    try:  # the job's own record of its exit, if the file system shows it already
        ex = read_json(os.path.join(d, "exit.json"))
    except (OSError, ValueError):
        ex = None
    info["detail"] = state or "gone from the queue"
    if ex is not None:
        info.update(state="exited", code=ex["code"], ended=ex["time"])
    elif state:
        code = f.get("ExitCode", "1:0").split(":")
        num = int(code[0]) if code[0].isdigit() else 1
        sig = int(code[1]) if len(code) > 1 and code[1].isdigit() else 0
        if state in ("CANCELLED", "TIMEOUT", "PREEMPTED", "NODE_FAIL", "OUT_OF_MEMORY", "DEADLINE") and num == 0:
            num = 128 + (sig or 15)
        info.update(state="exited", code=num if state != "COMPLETED" else 0, ended=time.time())
    else:
        info.update(state="lost", code=None)
    if info["stopped"] and info["state"] == "exited":
        info["state"] = "stopped"


def proc_table():
    """{pid: (ppid, starttime)} of every process visible in /proc."""
    table = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open("/proc/%s/stat" % name) as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if fields[0] == "Z":
            continue
        table[int(name)] = int(fields[1])
    return table


def run_processes(run_id, supervisor):
    """Every live process of a run except the supervisor: its descendants (orphans come
    back to it as the subreaper) and whatever carries REMOTE_DEV_RUN_ID=run_id."""
    table = proc_table()
    found = set()
    if supervisor:
        children = {}
        for pid, ppid in table.items():
            children.setdefault(ppid, []).append(pid)
        todo = list(children.get(supervisor, []))
        while todo:
            pid = todo.pop()
            if pid in found:
                continue
            found.add(pid)
            todo.extend(children.get(pid, []))
    marker = ("REMOTE_DEV_RUN_ID=%s" % run_id).encode()
    for pid in table:
        if pid in found or pid == supervisor or pid == os.getpid():
            continue
        try:
            with open("/proc/%d/environ" % pid, "rb") as f:
                env = f.read()
        except OSError:
            continue
        if marker in env.split(b"\0"):
            found.add(pid)
    return found


def kill_run_processes(run_id, supervisor, grace):
    """SIGINT, then SIGTERM, then SIGKILL, each after ``grace`` seconds, to every
    process of the run."""
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGKILL):
        pids = run_processes(run_id, supervisor)
        if not pids:
            return
        for pid in pids:
            try:
                os.kill(pid, sig)
            except OSError:
                pass
        deadline = time.time() + (grace if sig != signal.SIGKILL else 5)
        while time.time() < deadline:
            if not run_processes(run_id, supervisor):
                return
            time.sleep(0.05)


# --------------------------------------------------------------------------- supervisor

# Polling of m_run_read: from POLL_FIRST growing to POLL_MAX_YOUNG while the run is younger
# than POLL_YOUNG_FOR seconds, to POLL_MAX after.
POLL_FIRST = 0.0005
POLL_MAX_YOUNG = 0.005
POLL_YOUNG_FOR = 2.0
POLL_MAX = 0.05
SPARE_DELAY = 0.3     # seconds after a run start before the next spare supervisor starts
SPARE_LOCK = threading.Lock()
SPARES = []           # at most one idle supervisor (Popen) waiting on its stdin for a run folder


def supervisor_popen(args, stdin):
    """`python -S` importing this file as a module (its bytecode is cached next to it, as
    the bootstrap imports it the same way) rather than running it as a script, which
    would compile it on every start."""
    here = os.path.dirname(os.path.abspath(__file__))
    name = os.path.splitext(os.path.basename(__file__))[0]
    code = ("import sys; sys.path.insert(0, sys.argv[1]); import %s as agent; agent.main(sys.argv[2:])" % name)
    proc = subprocess.Popen(
        [sys.executable, "-S", "-c", code, here] + args,
        stdin=stdin, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        close_fds=True, start_new_session=True, cwd="/",
    )
    threading.Thread(target=proc.wait, daemon=True).start()  # reap when it exits
    return proc


def start_supervisor(d):
    """Start the supervisor of run folder d: hand d to the spare supervisor started
    ahead (its interpreter is up: the program starts at once), or start one."""
    with SPARE_LOCK:
        proc = SPARES.pop() if SPARES else None
    if proc is not None:
        try:
            proc.stdin.write(os.fsencode(d) + b"\n")
            proc.stdin.close()
            return
        except (OSError, ValueError):  # it is gone: start one the usual way
            pass
    supervisor_popen(["supervise", d], subprocess.DEVNULL)


def spare_later():
    """Start the next spare supervisor a moment after a run start (not competing with
    the program's own start for the CPU)."""
    t = threading.Timer(SPARE_DELAY, make_spare)
    t.daemon = True
    t.start()


def make_spare():
    with SPARE_LOCK:
        if SPARES:
            return
    try:
        proc = supervisor_popen(["supervise-spare"], subprocess.PIPE)
    except OSError:
        return
    with SPARE_LOCK:
        if not SPARES:
            SPARES.append(proc)
            return
    proc.stdin.close()  # another one won: this one reads EOF and exits


def supervise_spare():
    """An idle supervisor: ready (signals, subreaper) before it knows its run; reads one
    run folder from stdin and supervises it; exits at EOF (the agent went away)."""
    shield_signals()
    set_subreaper()
    line = sys.stdin.buffer.readline()
    if not line.endswith(b"\n"):
        return
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    supervise(os.fsdecode(line[:-1]), ready=True)


def _ignore(signum, frame):
    pass


def shield_signals():
    """The supervisor outlives SIGHUP and SIGINT.  A handler that does nothing rather than
    SIG_IGN: handlers fall back to the default at exec, so the program gets SIGINT and
    SIGHUP as usual without a preexec_fn (which would cost the fast spawn path)."""
    signal.signal(signal.SIGHUP, _ignore)
    signal.signal(signal.SIGINT, _ignore)


def set_subreaper():
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER
    except Exception:  # noqa: BLE001 - best effort; the env marker still finds orphans
        pass


def supervise(d, ready=False):
    """Run one command detached, output to d/output.log, exit status to d/exit.json.
    ready: signals and the subreaper are set already (a spare supervisor)."""
    if not ready:
        shield_signals()
        set_subreaper()
    spec = read_json(os.path.join(d, "spec.json"))
    env = dict(os.environ)
    env.update(spec.get("env") or {})
    env["REMOTE_DEV_RUN_ID"] = spec["id"]
    env.setdefault("PYTHONUNBUFFERED", "1")
    argv = spec.get("argv") or ["/bin/sh", "-c", spec["cmd"]]
    log = os.open(os.path.join(d, "output.log"), os.O_WRONLY | os.O_APPEND)
    try:
        child = subprocess.Popen(
            argv, cwd=spec["root"], env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
            close_fds=True, restore_signals=True,
        )
    except OSError as e:
        os.write(log, ("remote_dev: cannot start %s: %s\n" % (argv[0], e.strerror)).encode())
        write_json(os.path.join(d, "started.json"), {"supervisor": os.getpid(), "time": time.time()})
        write_json(os.path.join(d, "exit.json"), {"code": 127, "time": time.time(), "error": str(e)})
        return
    with open("/proc/self/stat") as f:
        start_time = f.read().rsplit(")", 1)[1].split()[19]
    write_json(os.path.join(d, "started.json"), {
        "supervisor": os.getpid(), "start_time": start_time, "pid": child.pid, "time": time.time(),
    })
    os.close(log)
    code = None
    while code is None:
        try:
            pid, status = os.wait()
        except ChildProcessError:
            break
        except InterruptedError:
            continue
        if pid == child.pid:
            code = os.waitstatus_to_exitcode(status) if hasattr(os, "waitstatus_to_exitcode") else (
                os.WEXITSTATUS(status) if os.WIFEXITED(status) else -os.WTERMSIG(status))
    if code is None:
        code = -1
    if code < 0:
        code = 128 - code  # killed by a signal: as a shell reports it
    # Leftovers (daemonised children) go with the run: no orphans on the GPU.
    leftovers = run_processes(spec["id"], os.getpid())
    if leftovers:
        for sig in (signal.SIGTERM, signal.SIGKILL):
            for pid in run_processes(spec["id"], os.getpid()):
                try:
                    os.kill(pid, sig)
                except OSError:
                    pass
            deadline = time.time() + 3
            while run_processes(spec["id"], os.getpid()) and time.time() < deadline:
                reap_all()
                time.sleep(0.05)
    reap_all()
    write_json(os.path.join(d, "exit.json"), {"code": code, "time": time.time()})


def reap_all():
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


# --------------------------------------------------------------------------- main


class _Input(object):
    """stdin for msgpack's streaming unpacker: read(n) answers with what has arrived (at
    least a byte, b"" at the end), so a request is parsed once, however it was split."""

    def __init__(self, raw):
        self.raw = raw

    def read(self, n):
        return self.raw.read1(max(n, 1 << 16))


# File operations run in order on a thread of their own, so that parsing the next request
# (pure-Python msgpack) overlaps with the file system work of this one.
FILE_METHODS = frozenset(("push", "stage", "append", "unstage", "state", "list", "read"))


def file_worker(agent, jobs):
    while True:
        msg = jobs.get()
        if msg is None:
            return
        agent.handle(msg)


def serve():
    import queue

    inp = sys.stdin.buffer
    out = sys.stdout.buffer
    # Anything printed by mistake must not corrupt the protocol stream.
    sys.stdout = sys.stderr
    agent = Agent(out)
    unpacker = msgpack.Unpacker(_Input(inp), raw=False, max_buffer_size=256 << 20, read_size=1 << 16)
    signal.signal(signal.SIGHUP, lambda *_: (agent.cleanup(), os._exit(0)))
    signal.signal(signal.SIGTERM, lambda *_: (agent.cleanup(), os._exit(0)))
    jobs = queue.Queue(maxsize=4)
    worker = threading.Thread(target=file_worker, args=(agent, jobs))
    worker.daemon = True
    worker.start()
    try:
        for msg in unpacker:
            if isinstance(msg, list) and len(msg) == 4 and msg[2] in FILE_METHODS:
                jobs.put(msg)
            else:
                agent.handle(msg)
    except (OSError, ValueError):
        pass
    finally:
        jobs.put(None)  # what arrived whole is still applied, then the temporaries go
        worker.join()
        agent.cleanup()

def debug_launch(argv):
    """`python agent.py debug-launch READY -- script args | -m module args`: debugpy
    listening on this node's address (a Slurm compute node), the address written to READY
    (in the run folder, on the shared file system), then the program once a client came."""
    import runpy

    import debugpy

    ready, rest = argv[0], argv[2:] if argv[1:2] == ["--"] else argv[1:]
    addr = os.environ.get("REMOTE_DEV_DEBUG_ADDR")
    if not addr:
        try:
            addr = socket.gethostbyname(socket.gethostname())
        except OSError:
            addr = "127.0.0.1"
    host, port = debugpy.listen((addr, 0))
    write_json(ready, {"host": host, "port": port, "node": socket.gethostname()})
    debugpy.wait_for_client()
    if rest[0] == "-m":
        sys.argv = rest[1:]
        runpy.run_module(rest[1], run_name="__main__", alter_sys=True)
    else:
        sys.argv = rest
        sys.path[0] = os.path.dirname(os.path.abspath(rest[0]))
        runpy.run_path(rest[0], run_name="__main__")


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "supervise":
        supervise(argv[1])
        return
    if argv and argv[0] == "supervise-spare":
        supervise_spare()
        return
    if argv and argv[0] == "debug-launch":
        debug_launch(argv[1:])
        return
    serve()


if __name__ == "__main__":
    main()
