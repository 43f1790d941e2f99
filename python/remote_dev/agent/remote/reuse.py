"""Content the remote already has: an index of the files this user's agents wrote (a file
per project root, in the cache's ``index`` folder, 0700/0600, written atomically, bounded,
read and written a line at a time: indexfile.py), and copies from it, so a push into a
new root (a git worktree, an experiment's copy) copies what another root holds instead of
receiving it: rsync's ``--copy-dest``, found by content.

An entry is [size, mtime_ns, hash or None] per path; the hash is filled in when the agent
is idle after a push (or when a lookup needs it), read from the file and kept only if its
stat did not change meanwhile.  An entry is used only when the file's stat is still the
entry's (size and mtime): a file changed or gone since is never copied.  A copy is a
reflink where the file system has them (FICLONE), else a real copy (copy_file_range,
sendfile, read/write) to a temporary name renamed into place: never a hard link, so an
edit of one copy never changes another.  The copy is read back and hashed before it is
renamed into place (copy_found): an entry whose file was edited keeping its size and
mtime never puts wrong content anywhere.
"""

import errno
import hashlib
import io
import os
import stat
import threading
import time

from .. import protocol as P
from .common import AgentError, cache_dir, private_dir, unlink_quiet, write_all
from .indexfile import EXT, PackedIndex, compacted, entry_line, quote, read_header, read_root, read_whole
from .paths import resolve

INDEX_DIR = "index"
OLD_FORMAT = (".json", ".root")   # the index files before indexfile's (removed when seen)
MAX_ROOTS = 64              # index files kept (the least recently written go)
MAX_ENTRIES = 400000        # entries per root (kept at a compaction: the most recently written)
COMPACT_MIN = 1 << 16       # bytes a file grows beyond twice its compacted lines before it is compacted
IDLE_FLUSH = 0.1            # seconds after the last write before the index is written
RECHECK = 0.5               # seconds a lookup trusts its copy of the index files
FICLONE = 0x40049409        # linux/fs.h: _IOW(0x94, 9, int)
SIZE, MTIME, HASH = range(3)


def index_dir():
    return os.path.join(cache_dir(), INDEX_DIR)


def index_name(root):
    return hashlib.sha256(os.fsencode(root)).hexdigest()[:24]


def has_index():
    """Whether the index knows of a root that still exists (the hello says so, and a push
    asks when the hello said no: a push then offers hashes; the index is then read again
    in the background, ready for its offers); the index files of roots gone (a removed
    worktree) go, and those of the JSON format before (OLD_FORMAT)."""
    folder = index_dir()
    try:
        names = os.listdir(folder)
    except OSError:
        return False
    alive = False
    for name in names:
        if name.endswith(OLD_FORMAT):
            unlink_quiet(os.path.join(folder, name))
        if not name.endswith(EXT):
            continue
        base = os.path.join(folder, name[:-len(EXT)])
        try:
            with open(base + EXT, "rb") as f:
                root = read_root(f)
        except OSError:
            continue   # (gone meanwhile)
        if root is not None and os.path.isdir(root):
            alive = True
            continue
        for ext in (EXT, ".lock"):
            unlink_quiet(base + ext)
    if alive:
        INDEX.files.look_again()
        t = threading.Thread(target=INDEX.files.tables)
        t.daemon = True
        t.start()
    return alive


def write_private(path, data):
    """data at path (0600, never through a symlink), atomically."""
    tmp = path + ".tmp%d" % os.getpid()
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | P.O_NOFOLLOW, 0o600)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.rename(tmp, path)
    except BaseException:
        unlink_quiet(tmp)
        raise


def appended(path, root, lines):
    """lines appended to root's index file at path; False when it must be compacted
    instead (see merge)."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_APPEND | P.O_NOFOLLOW)
    except OSError:
        return False
    try:
        size = os.fstat(fd).st_size
        first = os.pread(fd, 1 << 16, 0)
        head = read_header(io.BytesIO(first))
        if head is None or head[1] != root:
            return False
        base, start = head[0], first.index(b"\n") + 1
        if size - start + len(lines) > 2 * base + COMPACT_MIN:
            return False
        if os.pread(fd, 1, size - 1) != b"\n":
            lines = b"\n" + lines   # a line cut short (a disk full, a crash) stays alone, dropped by readers
        write_all(fd, lines)
        return True
    finally:
        os.close(fd)


def stat_matches(st, entry):
    return stat.S_ISREG(st.st_mode) and st.st_size == entry[SIZE] and st.st_mtime_ns == entry[MTIME]


def hash_fd(fd):
    h = P.new_hasher()
    offset = 0
    while True:
        block = os.pread(fd, P.HASH_BLOCK, offset)
        if not block:
            return P.hasher_digest(h)
        h.update(block)
        offset += len(block)


def hash_of(root, rel, entry):
    """The hash of root's file rel when its stat is entry's, before and after (or None)."""
    try:
        fd = os.open(resolve(root, rel), os.O_RDONLY | P.O_NOFOLLOW)
    except (OSError, AgentError):
        return None
    try:
        if not stat_matches(os.fstat(fd), entry):
            return None
        digest = hash_fd(fd)
        return digest if stat_matches(os.fstat(fd), entry) else None
    finally:
        os.close(fd)


def to_hash(todo, written):
    """The entries of written ({root: {rel: entry or None}}) without a hash, into todo
    ({root: {rel: entry}}); a path written anew with a hash, or not indexed, leaves it."""
    for root, files in written.items():
        mine = todo.setdefault(root, {})
        for rel, entry in files.items():
            if entry is not None and entry[HASH] is None:
                mine[rel] = entry
            else:
                mine.pop(rel, None)
        if not mine:
            del todo[root]


NO_REFLINK = set()          # devices where FICLONE failed


def clone_into(src_fd, dst_fd, size, dev=None):
    """The content of src_fd into the empty dst_fd: a reflink where the file system can,
    else copied in the kernel, else read and written.  Returns how: "reflink" or "copy".
    dev: the source's device (no reflink is tried again where one failed)."""
    if dev not in NO_REFLINK:
        try:
            import fcntl
            fcntl.ioctl(dst_fd, FICLONE, src_fd)
            return "reflink"
        except (ImportError, OSError):
            NO_REFLINK.add(dev)
    done = 0
    copy_range = getattr(os, "copy_file_range", None)
    try:
        while done < size:
            if copy_range is not None:
                n = copy_range(src_fd, dst_fd, size - done, done, done)
            else:
                n = os.sendfile(dst_fd, src_fd, done, size - done)
            if n <= 0:
                break
            done += n
    except OSError as e:
        if e.errno not in (errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP, errno.EBADF):
            raise
        os.ftruncate(dst_fd, 0)
        os.lseek(dst_fd, 0, os.SEEK_SET)
        done = 0
        while True:
            block = os.pread(src_fd, 1 << 20, done)
            if not block:
                break
            view = memoryview(block)
            while view:
                view = view[os.write(dst_fd, view):]
            done += len(block)
    if done != size:
        raise OSError(errno.EIO, "short copy (%d of %d bytes)" % (done, size))
    return "copy"


class LoadedFile(object):
    """One index file as IndexFiles holds it: read whole once, then only what was appended
    (read_more: the same inode, header and more bytes; a compaction is a new file)."""

    __slots__ = ("inode", "head", "size", "table")

    @classmethod
    def read(cls, path, inode):
        """The index file at path, read whole (in one go: indexfile.read_whole); None when
        it cannot be read or is not one."""
        try:
            with open(path, "rb") as f:
                data = f.read()
        except OSError:
            return None
        f = io.BytesIO(data)
        root = read_root(f)
        if root is None:
            return None
        self = cls()
        self.inode, self.head, self.size = inode, data[:f.tell()], data.rfind(b"\n") + 1
        self.table = PackedIndex(root)
        self.table.add(f)
        return self

    def read_more(self, path):
        """What was appended since, into the table; False when the file is another."""
        try:
            fd = os.open(path, os.O_RDONLY | P.O_NOFOLLOW)
        except OSError:
            return False
        try:
            st = os.fstat(fd)
            if st.st_ino != self.inode or st.st_size < self.size or os.pread(fd, len(self.head), 0) != self.head:
                return False
            data = os.pread(fd, st.st_size - self.size, self.size)
        finally:
            os.close(fd)
        end = data.rfind(b"\n") + 1
        self.table.add(io.BytesIO(data[:end]))
        self.size += end
        return True


class IndexFiles(object):
    """The index files on disk, loaded once and again when another agent wrote them."""

    def __init__(self):
        self.loaded = {}     # index file name -> LoadedFile
        self.packed = []     # the loaded files' PackedIndex
        self.checked = -1.0  # when the files were last looked at
        self.folders = {}    # folders of sources checked since (resolve's known_dirs: no symlink)
        self.lock = threading.Lock()   # lookups come from several threads (files.copy_in_threads)

    def tables(self):
        with self.lock:
            return self.load()

    def look_again(self):
        """The next lookup lists the files again, however recent the last look (a push
        request's first copy from the index: another agent may have written it just
        before).  Costs nothing until a lookup comes."""
        self.checked = -1.0

    def load(self):
        """The index files, each a PackedIndex (looked at again at a push request's first
        lookup, look_again, and then at most every RECHECK seconds: a lookup per op)."""
        now = time.monotonic()
        if now - self.checked < RECHECK:
            return self.packed
        self.checked = now
        self.folders = {}
        folder = index_dir()
        try:
            names = [n for n in os.listdir(folder) if n.endswith(EXT)]
        except OSError:
            names = []
        changed = False
        for name in names:
            path = os.path.join(folder, name)
            try:
                st = os.lstat(path)
            except OSError:
                continue
            held = self.loaded.get(name)
            if held is not None and held.inode == st.st_ino and held.size == st.st_size:
                continue
            if held is None or not held.read_more(path):
                held = LoadedFile.read(path, st.st_ino)
                if held is None:
                    self.loaded.pop(name, None)
                    continue
                self.loaded[name] = held
            changed = True
        for name in set(self.loaded) - set(names):
            del self.loaded[name]
            changed = True
        if changed:
            self.packed = [held.table for held in self.loaded.values()]
        return self.packed


class ContentIndex(object):
    """One agent's view of the index: what is on disk (reloaded when another agent wrote
    it) and its own changes not yet written (merged under a lock per root when written)."""

    def __init__(self):
        self.lock = threading.RLock()
        self.files = IndexFiles()
        self.pending = {}    # root -> {rel: entry or None}
        self.own = {}        # hash (size: none yet) -> {(root, rel): entry} of pending's entries (own_entries)
        self.unsized = []    # [(root, [rel])] put in pending since own was brought up to date
        self.timer = None
        self.last_note = 0.0

    # -- changes
    def note_all(self, root, rels, entries):
        """Files of root written (entry [size, mtime_ns, hash or None]) or replaced by
        what is not indexed (entry None): rels[i] is entries[i]; under one lock."""
        with self.lock:
            self.put_all(root, rels, entries)
            self.later()

    def put_all(self, root, rels, entries):
        self.pending.setdefault(root, {}).update(zip(rels, entries))
        self.unsized.append((root, rels))

    def own_entries(self):
        """own with what was put since the last lookup (under the lock; most pushes have
        none), by hash (by size while none): a lookup by size went through every file of
        one size (3,600 copied at 0.3 ms a file, bench/agent_copy_cpu.py).  An entry
        replaced since stays: a lookup takes only those pending still holds."""
        for root, rels in self.unsized:
            mine = self.pending[root]
            for rel in rels:
                entry = mine[rel]
                if entry is not None:
                    self.own.setdefault(entry[HASH] or entry[SIZE], {})[(root, rel)] = entry
        self.unsized = []
        return self.own

    def later(self, bump=True):
        if bump:
            self.last_note = time.monotonic()
        if self.timer is None:
            self.timer = threading.Thread(target=self.idle_flush)
            self.timer.daemon = True
            self.timer.start()

    def idle_flush(self):
        """The writer thread: when no write came for IDLE_FLUSH, the changes are written,
        then what has no hash yet is hashed and written again.  What a new write stopped
        it from hashing stays to hash (todo) at the next idle moment, with what came."""
        todo = {}
        while True:
            wait = self.last_note + IDLE_FLUSH - time.monotonic()
            if wait > 0:
                time.sleep(wait)
                continue
            try:
                to_hash(todo, self.flush())
                self.fill_hashes(todo)
                to_hash(todo, self.flush())   # the hashes, and what a write brought meanwhile
            except Exception:  # noqa: BLE001 - the index is a cache: a failure loses only reuse
                todo = {}
            with self.lock:
                if self.last_note + IDLE_FLUSH <= time.monotonic() and not self.pending and not todo:
                    self.timer = None
                    return

    def fill_hashes(self, todo):
        """Hash what this agent wrote without a hash (todo: {root: {rel: entry}}, taken out
        as it goes; read back, kept when its stat held meanwhile), until more writes come."""
        while todo:
            root = next(iter(todo))
            files = todo[root]
            while files:
                if self.last_note + IDLE_FLUSH > time.monotonic():
                    return
                rel, entry = files.popitem()
                if entry[HASH] is None:   # (a lookup may have hashed it meanwhile)
                    digest = hash_of(root, rel, entry)
                    if digest is not None:
                        self.note_hash(root, rel, entry, digest)
            del todo[root]

    def flush(self):
        """This agent's changes into the index files: per root, under its lock, appended
        or compacted (merge); at most MAX_ROOTS files (bound)."""
        with self.lock:
            pending, self.pending, self.own, self.unsized = self.pending, {}, {}, []
        if not pending:
            return pending
        folder = private_dir(index_dir())
        for root, changes in pending.items():
            self.merge(folder, root, changes)
        self.bound(folder)
        return pending

    @staticmethod
    def merge(folder, root, changes):
        """changes into root's index file, under its lock: appended, and the file
        compacted (written anew, renamed into place) when it grew beyond twice its base
        and COMPACT_MIN, or is missing, damaged or another root's."""
        name = index_name(root)
        path = os.path.join(folder, name + EXT)
        lines = b"".join([entry_line(quote(rel), entry) for rel, entry in changes.items()])
        lock_fd = os.open(os.path.join(folder, name + ".lock"), os.O_RDWR | os.O_CREAT | P.O_NOFOLLOW, 0o600)
        try:
            try:
                import fcntl
                fcntl.flock(lock_fd, fcntl.LOCK_EX)
            except ImportError:
                pass
            if not appended(path, root, lines):
                try:
                    f = read_whole(path)
                    held = f.read() if read_root(f) == root else b""
                except FileNotFoundError:
                    held = b""
                if held and not held.endswith(b"\n"):
                    held += b"\n"
                write_private(path, compacted(io.BytesIO(held + lines), root, MAX_ENTRIES))
        finally:
            os.close(lock_fd)

    @staticmethod
    def bound(folder):
        """At most MAX_ROOTS index files: the least recently written go (another agent may
        be removing some meanwhile: a name gone before its stat is one less to remove)."""
        names = [n for n in os.listdir(folder) if n.endswith(EXT)]
        if len(names) <= MAX_ROOTS:
            return
        aged = []
        for n in names:
            try:
                aged.append((os.lstat(os.path.join(folder, n)).st_mtime_ns, n))
            except FileNotFoundError:
                pass
        aged.sort()
        for _, n in aged[:len(aged) - MAX_ROOTS]:
            for ext in (EXT, ".lock"):
                unlink_quiet(os.path.join(folder, n[:-len(EXT)] + ext))

    # -- lookups
    def candidates(self, digest, size):
        """(root, rel, entry) of the files known that may hold digest (size bytes), own
        changes first."""
        known = self.files.tables()
        with self.lock:
            pending = self.pending
            mine = self.own_entries()
            own = [(root, rel, e) for key in (digest, size) for (root, rel), e in mine.get(key, {}).items()
                   if e[HASH] in (digest, None) and pending[root].get(rel) is e]
            found = [(t.root, rel, e) for t in known for rel, e in t.by_digest(digest)]
            found += [(t.root, rel, e) for t in known for rel, e in t.by_size(size)]
            return own + [c for c in found if c[1] not in pending.get(c[0], ())]

    def open_source(self, digest, size, dest):
        """An open fd of a file holding content digest (size bytes) whose stat is still
        its entry's, or None; entries without a hash are hashed now (and kept)."""
        for root, rel, entry in self.candidates(digest, size):
            known = entry[HASH]   # read once: other threads fill hashes in meanwhile
            if known is not None and known != digest:
                continue
            try:
                path = resolve(root, rel, known_dirs=self.files.folders)
                if path == dest:
                    continue
                fd = os.open(path, os.O_RDONLY | P.O_NOFOLLOW)
            except (OSError, AgentError):
                continue
            try:
                st = os.fstat(fd)
                if stat_matches(st, entry):
                    if known is None:
                        h = hash_fd(fd)
                        if stat_matches(os.fstat(fd), entry):
                            self.note_hash(root, rel, entry, h)
                        if h != digest:
                            os.close(fd)
                            continue
                    return fd, entry, st.st_dev
            except OSError:
                pass
            os.close(fd)
        return None

    def note_hash(self, root, rel, entry, digest):
        with self.lock:
            mine = self.pending.setdefault(root, {})
            if rel not in mine:
                self.put_all(root, [rel], [[entry[SIZE], entry[MTIME], digest]])
            elif mine[rel] is not None and mine[rel][SIZE] == entry[SIZE] and mine[rel][MTIME] == entry[MTIME]:
                if mine[rel][HASH] is None:   # own has it by size: by its hash from now on
                    self.own.get(entry[SIZE], {}).pop((root, rel), None)
                    self.unsized.append((root, [rel]))
                mine[rel][HASH] = digest
            entry[HASH] = digest
            self.later(bump=False)


INDEX = ContentIndex()


def copy_found(found, size, digest, tmp_fd):
    """Fill tmp_fd (a new temporary, open for reading too) from found (open_source's: its
    fd, closed here, and entry); False when the source changed meanwhile or what was
    copied is not content digest: the copy is read back and hashed (after a reflink too),
    so an index entry that is wrong (an edit that kept size and mtime) never lands."""
    fd, entry, dev = found
    try:
        clone_into(fd, tmp_fd, size, dev)
        return stat_matches(os.fstat(fd), entry) and hash_fd(tmp_fd) == digest
    except OSError:
        return False
    finally:
        os.close(fd)


def noted(root, done):
    """What push ops wrote goes into the index, in one go: done is [(op, answer)] (only
    the answers OK count).  A push notes its ops' answers before any copy op and at its
    end (files.FileOps.push_ops): a lookup never misses what an earlier op wrote."""
    rels, entries = [], []
    for op, answer in done:
        if answer[0] == P.OK:
            rels.append(op[P.OP_PATH])
            entries.append(None if op[0] in (P.OP_DELETE, P.OP_LINK) else [answer[1], answer[2], op[P.OP_HASH]])
    if rels:
        INDEX.note_all(root, rels, entries)


def flush_quietly():
    try:
        INDEX.flush()
    except Exception:  # noqa: BLE001 - the index is a cache: a failure loses only reuse
        pass
