"""The content index's files (agent/remote/reuse.py): a journal per root, read and written
a line at a time, never held as a dict of the whole index.

A file is a header, ``remote-dev content index 1\\t<base>\\t<root>``, then one line per
change, ``<hash, - (none yet) or x (removed)>\\t<size>\\t<mtime_ns>\\t<path>`` (the path's
backslashes and newlines escaped); a path's last line is what the index holds of it.  A
merge appends its changes (what a save costs: its own lines, whatever the index holds);
when the lines after the header reach twice ``base`` (their bytes at the last compaction)
and more, the file is compacted: each path's last line kept, the oldest beyond a bound
left out, written anew.  A reader reads the file once and then only what was appended
(the file grows, its inode stays; a compaction is a new inode, read whole).

The JSON files before were parsed and written whole at each flush, without letting go of
the GIL: at 100,000 entries an agent's answers waited 0.1-0.24 s, and it kept ~80 MB.

PackedIndex is one file's entries as an agent holds them between lookups: hashed entries
in a few arrays, found through a table of their digests' first 8 bytes; the few without a
hash yet (the writer fills them in when its agent is idle) as lists by size, each the list
a lookup may fill the hash of (ContentIndex.note_hash).  A path's earlier hashed lines stay
until the next compaction: a lookup uses an entry only when the file's stat is still its
own, and checks what it copied (reuse.copy_found), so a stale one costs a stat, never
content.
"""

import array
import binascii
import io
import re

from .. import protocol as P

EXT = ".index"
MAGIC = b"remote-dev content index 1\t"
WIDTH = P.HASH_HEX // 2     # bytes of a digest
NO_HASH = b"-"
GONE = b"x"                 # the path is no longer indexed (deleted, or a symlink now)
REMOVED = object()          # parse's digest of a GONE line
LIMIT = 1 << 63             # sizes and mtimes are held as signed 64-bit
ESCAPED = re.compile(rb"\\(.)", re.S)


def quote(text):
    """text (any str: surrogates pass) as a line's last field."""
    raw = text.encode("utf-8", "surrogatepass")
    if b"\\" in raw or b"\n" in raw:
        raw = raw.replace(b"\\", b"\\\\").replace(b"\n", b"\\n")
    return raw


def unquote(raw):
    if b"\\" in raw:
        raw = ESCAPED.sub(lambda m: b"\n" if m.group(1) == b"n" else m.group(1), raw)
    return raw.decode("utf-8", "surrogatepass")


def read_whole(path):
    """The index file at path, read in one go, to read a line at a time (OSError when it
    cannot be read).  A file read a buffer at a time gives the GIL back and takes it again
    at each read, and another thread waiting for it (the agent's event loop) may wait for
    the whole file (measured: gaps of 56-220 ms in a 100,000-entry file's reading, 6-9 ms
    from memory)."""
    with open(path, "rb") as f:
        return io.BytesIO(f.read())


def header(root, base=0):
    return MAGIC + b"%d\t" % base + quote(root) + b"\n"


def read_header(f):
    """(base, root) of an index file's header line, read from f; None: not one."""
    line = f.readline()
    if not (line.startswith(MAGIC) and line.endswith(b"\n")):
        return None
    base, _, root = line[len(MAGIC):-1].partition(b"\t")
    try:
        return int(base), unquote(root)
    except ValueError:
        return None


def read_root(f):
    """The root an index file names in its header, read from f, or None: not one."""
    head = read_header(f)
    return None if head is None else head[1]


def entry_line(key, entry):
    """The line of entry [size, mtime_ns, hash or None] (None: no longer indexed) for the
    path key (quoted)."""
    if entry is None:
        return b"%s\t0\t0\t%s\n" % (GONE, key)
    size, mtime, digest = entry
    return b"%s\t%d\t%d\t%s\n" % (digest_field(digest), size, mtime, key)


def digest_field(digest):
    """A line's hash field: the digest in hex, or NO_HASH when there is none (a push op's
    hash that is not one is taken as none: it never breaks a line)."""
    if digest is None:   # (most of a push's writes: no exception to catch per line)
        return NO_HASH
    try:
        raw = bytes.fromhex(digest)
    except (TypeError, ValueError):
        return NO_HASH
    return binascii.hexlify(raw) if len(raw) == WIDTH else NO_HASH


def parse(line):
    """(key, size, mtime_ns, digest bytes, None or REMOVED) of an entry line; ValueError
    when it is malformed (a damaged file: the line is left out)."""
    if not line.endswith(b"\n"):
        raise ValueError("a line cut short")
    digest, size, mtime, key = line[:-1].split(b"\t", 3)
    size, mtime = int(size), int(mtime)
    raw = None if digest == NO_HASH else REMOVED if digest == GONE else binascii.unhexlify(digest)
    if not (0 <= size < LIMIT and -LIMIT <= mtime < LIMIT) or type(raw) is bytes and len(raw) != WIDTH:
        raise ValueError("an entry out of range")
    return key, size, mtime, raw


def last_lines(f):
    """{key: line} of each path's last line in f (after its header), the least recently
    written first, the paths removed left out."""
    out = {}
    for line in f:
        try:
            key, _size, _mtime, raw = parse(line)
        except ValueError:
            continue
        out.pop(key, None)
        if raw is not REMOVED:
            out[key] = line
    return out


def compacted(f, root, most):
    """The content of a compacted index file of root from the lines of f: each path's
    last line, at most `most`, the most recently written kept."""
    lines = last_lines(f)
    body = b"".join(list(lines.values())[max(0, len(lines) - most):])
    return header(root, len(body)) + body


def read_index(path, root):
    """{rel: entry} of an index file, the least recently written first (empty when it is
    missing, damaged or another root's): for tests and tools."""
    try:
        f = read_whole(path)
    except OSError:
        return {}
    if read_root(f) != root:
        return {}
    out = {}
    for key, line in last_lines(f).items():
        _key, size, mtime, raw = parse(line)
        out[unquote(key)] = [size, mtime, None if raw is None else raw.hex()]
    return out


class PackedIndex(object):
    """The entries of one root's index file, from its lines (add, as they are read).
    Hashed entries are found through an open-addressing table of their digests' first 8
    bytes, one slot per content, the files of one content chained (made in Python loops:
    a sort would hold the GIL).  Lines are added under IndexFiles' lock while lookups of
    other threads read: an entry is in the table only once all its fields are."""

    __slots__ = ("root", "keys", "ends", "sizes", "mtimes", "prefixes", "digests", "table", "chain", "unhashed",
                 "unhashed_size")

    def __init__(self, root):
        self.root = root
        self.keys, self.ends, self.digests = bytearray(), array.array("q"), bytearray()
        self.sizes, self.mtimes, self.prefixes = array.array("q"), array.array("q"), array.array("Q")
        self.table, self.chain = array.array("l", [-1]) * 16, array.array("l")
        self.unhashed = {}        # size -> {key: (rel, entry)} of the entries without a hash
        self.unhashed_size = {}   # key -> its size there

    def add(self, f):
        """The lines of f (complete ones: a line cut short is left for the next read)."""
        for line in f:
            try:
                key, size, mtime, raw = parse(line)
            except ValueError:
                continue
            if key in self.unhashed_size:   # a later line of a path without a hash replaces it
                del self.unhashed[self.unhashed_size.pop(key)][key]
            if raw is REMOVED:
                continue
            if raw is None:
                self.unhashed.setdefault(size, {})[key] = (unquote(key), [size, mtime, None])
                self.unhashed_size[key] = size
                continue
            self.keys += key
            self.ends.append(len(self.keys))
            self.sizes.append(size)
            self.mtimes.append(mtime)
            self.prefixes.append(int.from_bytes(raw[:8], "big"))
            self.digests += raw
            if 2 * len(self.prefixes) > len(self.table):
                self.grow()
            k = len(self.prefixes) - 1
            i = self.slot(self.table, k)
            self.chain.append(self.table[i])   # the files of one content form a chain
            self.table[i] = k

    def slot(self, table, k):
        """The slot of entry k's prefix in table: its own, or the first free one."""
        mask, prefixes = len(table) - 1, self.prefixes
        i = prefixes[k] & mask
        while table[i] >= 0 and prefixes[table[i]] != prefixes[k]:
            i = (i + 1) & mask
        return i

    def grow(self):
        """A table at least four times the entries, each chain's head placed again; the
        chains stay, and the new table replaces the old in one step (a lookup of another
        thread meanwhile reads one or the other, whole)."""
        table = array.array("l", [-1]) * (1 << (4 * len(self.prefixes) - 1).bit_length())
        for k in self.table:
            if k >= 0:
                table[self.slot(table, k)] = k
        self.table = table

    def by_digest(self, digest):
        """[(rel, entry)] of the entries whose hash is digest (each entry a new list)."""
        try:
            raw = bytes.fromhex(digest)
        except (TypeError, ValueError):
            return []
        prefix = int.from_bytes(raw[:8], "big")
        table = self.table   # (once: another thread may grow it meanwhile)
        mask = len(table) - 1
        i = prefix & mask
        while table[i] >= 0 and self.prefixes[table[i]] != prefix:
            i = (i + 1) & mask
        found = []
        k = table[i]
        while k >= 0:
            if self.digests[k * WIDTH:(k + 1) * WIDTH] == raw:
                rel = unquote(self.keys[self.ends[k - 1] if k else 0:self.ends[k]])
                found.append((rel, [self.sizes[k], self.mtimes[k], digest]))
            k = self.chain[k]
        return found

    def by_size(self, size):
        """[(rel, entry)] of the entries without a hash of size bytes."""
        return list(self.unhashed.get(size, {}).values())
