"""File operations under a project root: push (write, stage/append, link, delete; also
packed: a batch of ops compressed as one stream), state, list, read (also in compressed
blocks, for pulls), and the remote check of a push (verify.py).

Paths are relative to a root; anything that would land outside it is refused: absolute
paths, ``..`` components and symlinks on the way (paths.py).  Every write goes to a temporary file
in the destination folder and is renamed into place.  Temporary files of large files
still arriving when the channel closes are removed; those an agent killed mid-write left
behind are swept by the next agent writing into the same folder (temps.py).
"""

import os
import stat
import threading
import time

from .. import protocol as P
from .blocks import Blocks, open_regular, pread_all
from .common import AgentError, cache_dir, expand_root, os_message, private_dir, unlink_quiet, write_all
from . import reuse, temps, zstdlib
from .paths import content_hash, entry_state, resolve
from .temps import link_temp, make_temp
from .verify import Checks

# --------------------------------------------------------------------------- conflicts


def conflict_at(path, expect, new_hash, state):
    """The protocol's conflict rule for what is at path (state: entry_state(path)); the
    content is hashed only when the stat does not settle it."""
    return P.conflict_reason(state, expect, new_hash, lambda: content_hash(path, state))


# --------------------------------------------------------------------------- writing


def current_umask():
    old = os.umask(0o022)
    os.umask(old)
    return old


UMASK = current_umask()


class Staged(object):
    """A large file arriving in chunks: a temporary file beside its destination, hashed
    as it is written."""

    def __init__(self, tmp, fd, final):
        self.tmp = tmp
        self.fd = fd
        self.final = final
        self.hash = P.new_hasher()
        self.size = 0
        self.error = None

    def discard(self):
        if self.fd is not None:
            try:
                os.close(self.fd)
            except OSError:
                pass
            self.fd = None
        unlink_quiet(self.tmp)


def prune_dirs(root, d):
    """Remove d and its parents up to root while they are empty."""
    while d != root and d.startswith(root + "/"):
        try:
            os.rmdir(d)
        except OSError:
            return
        d = os.path.dirname(d)


# --------------------------------------------------------------------------- operations


class FileOps(object):
    """The file methods of one agent: its staged files and the folders it swept."""

    def __init__(self):
        self.staged = {}  # token -> Staged
        self.staged_lock = threading.Lock()
        self.next_token = 0
        self.swept = set()  # folders swept of dead agents' temporaries
        self.checks = Checks()
        self.blocks = Blocks()

    def cleanup(self):
        """Remove the temporary files of large files still arriving (channel closed)."""
        self.checks.close()
        with self.staged_lock:
            staged = list(self.staged.values())
            self.staged.clear()
        for entry in staged:
            entry.discard()

    def sweep_once(self, folder, known_dirs=None):
        """Sweep dead agents' temporaries from folder, once per agent and folder (not in
        folders this request made: nothing is in them)."""
        if folder in self.swept or (known_dirs is not None and known_dirs.get(folder)):
            return
        self.swept.add(folder)
        temps.sweep(folder)

    # -- large files, in chunks
    def stage(self, root, rel):
        """Open a temporary file beside root/rel for a large file sent in chunks
        (append), then written by a push op [OP_STAGED, ...] carrying the token."""
        root = expand_root(root)
        os.makedirs(root, exist_ok=True)
        final = resolve(root, rel, create_parents=True)
        self.sweep_once(os.path.dirname(final))
        tmp, fd = make_temp(final)
        with self.staged_lock:
            self.next_token += 1
            token = self.next_token
            self.staged[token] = Staged(tmp, fd, final)
        return token

    def append(self, token, data, fmt=P.RAW):
        """The next chunk of a staged file (compressed in format fmt)."""
        if fmt:
            data = zstdlib.decode(fmt, data)
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

    def drop_staged(self, token):
        with self.staged_lock:
            entry = self.staged.pop(token, None)
        if entry is not None:
            entry.discard()

    # -- push
    def push(self, root, ops):
        """Apply push ops (lists, see protocol) in order; one answer per op:
        [OK, size, mtime_ns] | [CONFLICT, reason] | [ERROR, message] | [GONE].
        What is at a path that is no longer what ``expect`` says is a conflict unless
        force (protocol.conflict_reason)."""
        root = expand_root(root)
        if not os.path.isdir(root):
            os.makedirs(root, exist_ok=True)
        known_dirs = {}
        results = []
        # a copy from the index in this request lists it anew (another agent may have
        # written it just before), whatever the request's shape
        reuse.INDEX.files.look_again()
        with root_lock(root):
            (copy_offered if offered_copies(ops) else FileOps.push_ops)(self, root, ops, known_dirs, results)
        return results

    def push_ops(self, root, ops, known_dirs, results):
        done = []   # (op, answer) not yet in the content index (reuse.noted): in one go
        try:
            for op in ops:
                if not isinstance(op, list) or len(op) < 4 or op[0] not in P.OP_KINDS \
                        or (op[0] != P.OP_DELETE and len(op) < 7) \
                        or (op[0] == P.OP_WRITE and not isinstance(op[P.OP_PAYLOAD], (bytes, memoryview))):
                    results.append([P.ERROR, "bad push op %.80r: ops are lists (see protocol.py)" % (op,)])
                    continue
                if op[0] == P.OP_COPY and done:
                    reuse.noted(root, done)   # (a copy looks in the index)
                    done = []
                try:
                    answer = self.apply(root, op, known_dirs)
                except AgentError as e:
                    answer = [P.ERROR, e.message]
                    if op[0] == P.OP_STAGED:
                        self.drop_staged(op[P.OP_PAYLOAD])
                except OSError as e:
                    answer = [P.ERROR, os_message(OSError(e.errno, e.strerror), op[1])]
                    if op[0] == P.OP_STAGED:
                        self.drop_staged(op[P.OP_PAYLOAD])
                results.append(answer)
                done.append((op, answer))
        finally:
            reuse.noted(root, done)

    def push_packed(self, root, fmt, blob):
        """push(root, ops) for ops packed as one blob (protocol.pack_ops), compressed in
        format fmt or raw; the answers packed too (protocol.pack_answers), with the seconds
        this took (the sender's measure of the agent's pace)."""
        t0 = time.perf_counter()
        try:
            ops = P.unpack_ops(zstdlib.decode(fmt, blob))
        except Exception as e:  # noqa: BLE001 - any damage is the same answer
            raise AgentError("packed", "damaged packed push (%s): %s" % (fmt, e))
        answers = self.push(root, ops)
        return P.pack_answers(answers, time.perf_counter() - t0)

    def verify(self, root, uid, base, gen, blob):
        """The remote check of a push (verify.py)."""
        return self.checks.verify(root, uid, base, gen, blob)

    def apply(self, root, op, known_dirs=None):
        if op[0] == P.OP_DELETE:
            return self.apply_delete(root, op, known_dirs)
        kind, rel, expect, force, new_hash, mode, payload = op[:7]
        staged = None
        if kind == P.OP_STAGED:
            with self.staged_lock:
                staged = self.staged.pop(payload, None)
            if staged is None:
                raise AgentError("stage", "unknown staged file %r" % (payload,))
        try:
            path = resolve(root, rel, create_parents=True, known_dirs=known_dirs)
            if staged is not None and staged.final != path:
                raise AgentError("stage", "staged for another path")
            folder = path.rpartition("/")[0]
            if known_dirs is not None and known_dirs.get(folder):
                state = None  # in a folder this request made
            else:
                self.sweep_once(folder)
                state = entry_state(path)
            if state is not None and state[0] == P.DIR:
                return [P.ERROR, "%s: %s" % (rel, P.FOLDER_IN_THE_WAY)]
            if state is not None and not force:   # (nothing there: nothing to conflict with)
                if new_hash is None and kind == P.OP_WRITE:
                    new_hash = P.digest(payload)   # packed writes leave it to the agent
                reason = conflict_at(path, expect, new_hash, state)
                if reason:
                    return [P.CONFLICT, reason]
            if kind == P.OP_LINK:
                return replace_with_link(path, payload)
            if kind == P.OP_COPY:
                return copy_to(root, path, new_hash, mode, payload)
            if staged is not None:
                if staged.error is not None:
                    return [P.ERROR, staged.error]
                if new_hash is not None and P.hasher_digest(staged.hash) != new_hash:
                    return [P.ERROR, "%s: the staged content does not match (%d bytes arrived)" % (rel, staged.size)]
                tmp, fd = staged.tmp, staged.fd
                staged.fd = None
                staged = None
                return replace_with_file(path, tmp, fd, None, mode)
            tmp, fd = make_temp(path, mode=want_mode(mode) & 0o777)
            return replace_with_file(path, tmp, fd, payload, mode)
        finally:
            if staged is not None:
                staged.discard()

    def apply_delete(self, root, op, known_dirs):
        rel, expect, force = op[1], op[2], op[3]
        path = resolve(root, rel, known_dirs=known_dirs)
        state = entry_state(path)
        if state is None:
            return [P.GONE]
        if state[0] == P.DIR:
            return [P.ERROR, "%s is a folder" % rel]
        self.sweep_once(os.path.dirname(path), known_dirs)
        if not force:
            reason = conflict_at(path, expect, None, state)
            if reason:
                return [P.CONFLICT, reason]
        os.unlink(path)
        prune_dirs(root, os.path.dirname(path))
        return [P.OK, 0, 0]


# --------------------------------------------------------------------------- reading (no state)

def state(root, rels, hashes=True):
    """[kind, size, mtime_ns, hash] (hash None unless hashes) or None for each path:
    only files and symlinks count."""
    root = expand_root(root)
    out = []
    known_dirs = {}
    for rel in rels:
        try:
            path = resolve(root, rel, known_dirs=known_dirs)
            state = entry_state(path)
            if state is None or state[0] not in (P.FILE, P.LINK):
                out.append(None)
            else:
                out.append(state + [content_hash(path, state) if hashes else None])
        except (AgentError, OSError):
            out.append(None)
    return out

def list_under(root, folders, known, present=None):
    """Files and symlinks under the given folders (relative to root), never following
    symlinks: {rel: [kind, size, mtime_ns, hash_or_None, mode, link_target]}.  The hash is
    left out (None) where ``known`` already has the same kind/size/mtime, and, when the
    caller lists what it has at those paths (``present``), where it has nothing: a file
    only fetched needs no hash here (the caller hashes what arrives)."""
    present = None if present is None else set(present)
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
        if st[0] != P.DIR:
            list_one(root, folder, base, known, result, present)
            continue
        for dirpath, dirnames, filenames in os.walk(base):
            for name in filenames + [d for d in dirnames if os.path.islink(os.path.join(dirpath, d))]:
                if P.TMP_MARK in name:
                    continue
                full = os.path.join(dirpath, name)
                rel = os.path.relpath(full, root).replace(os.sep, "/")
                list_one(root, rel, full, known, result, present)
    return result

def read(root, rel, offset, size):
    """Bytes of a regular file under root (a final symlink is refused, not followed)."""
    fd = open_regular(expand_root(root), rel)
    try:
        return pread_all(fd, offset, size)
    finally:
        os.close(fd)


class root_lock(object):
    """An exclusive lock per remote_root (a file in the agent's cache) held while a push
    batch checks and replaces its files: two pushes to one root at once (two Neovims) then
    see each other's writes as conflicts instead of both passing the check before either
    renames.  Best effort: where the cache cannot lock (no flock), pushes go unlocked."""

    made = None   # the locks' folder, made private once (a chmod per batch dirtied its inode)

    def __init__(self, root):
        self.root = root
        self.fd = None

    def __enter__(self):
        try:
            import fcntl
            import hashlib

            folder = os.path.join(cache_dir(), "locks")
            path = os.path.join(folder, hashlib.sha256(os.fsencode(self.root)).hexdigest()[:24])
            if root_lock.made != folder:
                root_lock.made = private_dir(folder)
            try:
                self.fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
            except FileNotFoundError:   # the folder went meanwhile
                private_dir(folder)
                self.fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
            fcntl.flock(self.fd, fcntl.LOCK_EX)
        except (OSError, ImportError):
            if self.fd is not None:
                os.close(self.fd)
                self.fd = None
        return self

    def __exit__(self, *exc):
        if self.fd is not None:
            os.close(self.fd)   # releases the lock
            self.fd = None


def want_mode(mode):
    return (mode if mode is not None else 0o644) & 0o7777


def replace_with_file(path, tmp, fd, data, mode):
    """Finish temporary file tmp (open as fd: data written unless None, mode set) and
    rename it over path; on any failure tmp goes."""
    want = want_mode(mode)
    try:
        try:
            if data is not None:
                write_all(fd, data)
            if data is None or want & (UMASK | 0o7000):
                os.fchmod(fd, want)  # the umask took bits off (or setuid & co.)
            st = os.fstat(fd)
        finally:
            os.close(fd)
        os.rename(tmp, path)
    except BaseException:
        unlink_quiet(tmp)
        raise
    return [P.OK, st.st_size, st.st_mtime_ns]


COPY_THREADS = 4     # threads applying a request of offered copies whose system calls wait
COPY_SAMPLE = 128    # offered copies of a request made one by one first: how long they waited decides
COPY_WAITING = 0.5   # share of the sample's time blocked (not on a CPU, nor waiting for one) for threads


def offered_copies(ops):
    """A request of copy ops from the content index only (sync/reuse.py's offers)."""
    return len(ops) >= 4 * COPY_THREADS and all(
        isinstance(op, list) and len(op) > P.OP_PAYLOAD and op[0] == P.OP_COPY and isinstance(op[P.OP_PAYLOAD], list)
        and len(op[P.OP_PAYLOAD]) == 2 and op[P.OP_PAYLOAD][1] is None for op in ops)


def copy_offered(self_ops, root, ops, known_dirs, results):
    """push_ops for offered copies: the first COPY_SAMPLE one by one; the rest in
    COPY_THREADS threads when those were blocked more than COPY_WAITING of their time (a
    network file system: each create, copy and rename a round trip to its server), else one
    by one too (a local disk, a tmpfs: the system calls do not wait, and threads only hand
    the GIL back and forth -- bench/README, a second checkout: 3,556 copies 0.47-0.55 s one
    by one, 0.62-0.86 s in four threads).  Time spent waiting for a CPU (a busy machine)
    does not count as blocked where Linux tells it (runnable_seconds)."""
    w0, c0, r0 = time.perf_counter(), time.thread_time(), runnable_seconds()
    self_ops.push_ops(root, ops[:COPY_SAMPLE], known_dirs, results)
    wall, cpu, runnable = time.perf_counter() - w0, time.thread_time() - c0, runnable_seconds() - r0
    rest = ops[COPY_SAMPLE:]
    if rest and wall - cpu - runnable > COPY_WAITING * wall:
        copy_in_threads(self_ops, root, rest, known_dirs, results)
    elif rest:
        self_ops.push_ops(root, rest, known_dirs, results)


def runnable_seconds():
    """Seconds this thread has waited for a CPU (Linux: /proc/thread-self/schedstat's
    second figure); 0.0 where that is not known."""
    try:
        with open("/proc/thread-self/schedstat", "rb") as f:
            return int(f.read().split()[1]) / 1e9
    except (OSError, ValueError, IndexError):
        return 0.0


def copy_in_threads(self_ops, root, ops, known_dirs, results):
    """push_ops for offered copies, in COPY_THREADS threads of contiguous slices (no op
    depends on another; folders made meanwhile are shared in known_dirs)."""
    n = -(-len(ops) // COPY_THREADS)
    parts = [[] for _ in range(COPY_THREADS)]
    threads = [threading.Thread(target=self_ops.push_ops, args=(root, ops[k * n:(k + 1) * n], known_dirs, parts[k]))
               for k in range(COPY_THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    before = len(results)
    for part in parts:
        results.extend(part)
    if len(results) - before != len(ops):
        raise AgentError("internal", "%d answers to %d copies" % (len(results) - before, len(ops)))


def copy_to(root, path, digest, mode, payload):
    """A copy op: content digest (size bytes) copied to path from the source the op
    names (its content checked) or from a file of the content index; [NEED] when none."""
    if not (isinstance(payload, list) and len(payload) == 2 and isinstance(payload[0], int)):
        raise AgentError("op", "bad copy op: its payload is [size, source]")
    size, source = payload
    found = reuse.INDEX.open_source(digest, size, path) if source is None else None
    if source is None and found is None:
        return [P.NEED]   # nothing made: the miss of a push offering what the remote lacks is cheap
    try:
        tmp, fd = make_temp(path, os.O_RDWR, want_mode(mode) & 0o777)   # (read back: copy_found)
    except BaseException:
        if found is not None:
            os.close(found[0])
        raise
    try:
        ok = (copy_checked(root, source, digest, size, fd) if found is None
              else reuse.copy_found(found, size, digest, fd))
    except BaseException:
        os.close(fd)
        unlink_quiet(tmp)
        raise
    if not ok:
        os.close(fd)
        unlink_quiet(tmp)
        return [P.NEED]
    return replace_with_file(path, tmp, fd, b"", mode)   # (b"": its mode set when made)


def copy_checked(root, source, digest, size, fd):
    """Write into fd the content of root/source when it is digest (size bytes)."""
    try:
        src = open_regular(root, source)
    except (OSError, AgentError):
        return False
    try:
        data = pread_all(src, 0, size + 1)
    finally:
        os.close(src)
    if len(data) != size or P.digest(data) != digest:
        return False
    write_all(fd, data)
    return True


def replace_with_link(path, target):
    tmp = link_temp(path, target)
    try:
        os.rename(tmp, path)
    except BaseException:
        unlink_quiet(tmp)
        raise
    st = os.lstat(path)
    return [P.OK, st.st_size, st.st_mtime_ns]


def list_one(root, rel, full, known, result, present=None):
    try:
        st = os.lstat(full)
    except OSError:
        return
    if stat.S_ISLNK(st.st_mode):
        kind, target = P.LINK, os.readlink(full)
    elif stat.S_ISREG(st.st_mode):
        kind, target = P.FILE, None
    else:
        return
    prev = known.get(rel)
    digest = None
    if not (prev and prev[0] == kind and prev[1] == st.st_size and prev[2] == st.st_mtime_ns) \
            and (present is None or rel in present):
        try:
            digest = P.link_hash(target) if kind == P.LINK else P.file_hash(full)
        except OSError:
            return
    result[rel] = [kind, st.st_size, st.st_mtime_ns, digest, st.st_mode & 0o7777, target]
