"""The content index's files (agent/remote/reuse.py), read and written a line at a time:
a header naming the root, then one line per entry, ``<hash or ->\\t<size>\\t<mtime_ns>\\t<path>``
(the path's backslashes and newlines escaped).  A merge streams the file through with
its changes, and a lookup's load packs it as it reads: neither holds the index as a dict
of lists, so an agent neither stalls (the JSON files before were parsed and written whole
without letting go of the GIL: 0.4 s at 100,000 entries) nor keeps tens of MB after.

PackedIndex is one file's entries as the agent holds them between lookups: hashed entries
in a few arrays, found by their digests (a table of their first 8 bytes), the few without a hash
yet (the writer fills them in when its agent is idle) as lists by size, each the list a
lookup may fill the hash of (ContentIndex.note_hash).
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
    the whole file (measured: gaps of 56-162 ms in a 100,000-entry file's reading, 6-9 ms
    from memory)."""
    with open(path, "rb") as f:
        return io.BytesIO(f.read())


def header(root):
    return MAGIC + quote(root) + b"\n"


def read_root(f):
    """The root an open index file (binary) names in its header, or None: not one."""
    line = f.readline()
    return unquote(line[len(MAGIC):-1]) if line.startswith(MAGIC) and line.endswith(b"\n") else None


def entry_line(key, entry):
    """The line of entry [size, mtime_ns, hash or None] for the path key (quoted)."""
    size, mtime, digest = entry
    return b"%s\t%d\t%d\t%s\n" % (NO_HASH if digest is None else digest.encode("ascii"), size, mtime, key)


def parse(line):
    """(key, size, mtime_ns, digest bytes or None) of an entry line; ValueError when it is
    malformed (a damaged file: the line is left out)."""
    if not line.endswith(b"\n"):
        raise ValueError("a line cut short")
    digest, size, mtime, key = line[:-1].split(b"\t", 3)
    size, mtime = int(size), int(mtime)
    raw = None if digest == NO_HASH else binascii.unhexlify(digest)
    if not (0 <= size < LIMIT and -LIMIT <= mtime < LIMIT) or raw is not None and len(raw) != WIDTH:
        raise ValueError("an entry out of range")
    return key, size, mtime, raw


def entries(f):
    """(key, line) of an index file's entries (f: read_whole's, after read_root)."""
    for line in f:
        try:
            yield parse(line)[0], line
        except ValueError:
            continue


def read_index(path, root):
    """{rel: entry} of an index file (empty when it is missing, damaged or another root's):
    for tests and tools; the agent streams them (reuse.merged, PackedIndex)."""
    try:
        f = read_whole(path)
    except OSError:
        return {}
    out = {}
    if read_root(f) == root:
        for line in f:
            try:
                key, size, mtime, raw = parse(line)
            except ValueError:
                continue
            out[unquote(key)] = [size, mtime, None if raw is None else raw.hex()]
    return out


class PackedIndex(object):
    """The entries of one root's index file, read from f (read_whole's, after read_root).
    Hashed entries are found through an open-addressing table of their digests' first 8
    bytes, one slot per content, the files of one content chained (built in a Python
    loop: a sort would hold the GIL)."""

    __slots__ = ("root", "keys", "ends", "sizes", "mtimes", "prefixes", "digests", "table", "chain", "unhashed")

    def __init__(self, root, f):
        self.root, self.unhashed = root, {}
        keys, ends, digests = bytearray(), array.array("q"), bytearray()
        sizes, mtimes, prefixes = array.array("q"), array.array("q"), array.array("Q")
        for line in f:
            try:
                key, size, mtime, raw = parse(line)
            except ValueError:
                continue
            if raw is None:
                self.unhashed.setdefault(size, []).append((unquote(key), [size, mtime, None]))
                continue
            keys += key
            ends.append(len(keys))
            sizes.append(size)
            mtimes.append(mtime)
            prefixes.append(int.from_bytes(raw[:8], "big"))
            digests += raw
        self.keys, self.ends, self.sizes, self.mtimes = bytes(keys), ends, sizes, mtimes
        self.prefixes, self.digests = prefixes, bytes(digests)
        mask = (1 << (2 * len(prefixes) + 1).bit_length()) - 1   # at most half full
        table, chain = array.array("l", [-1]) * (mask + 1), array.array("l", [-1]) * len(prefixes)
        for k, prefix in enumerate(prefixes):
            i = prefix & mask
            while table[i] >= 0 and prefixes[table[i]] != prefix:
                i = (i + 1) & mask
            chain[k] = table[i]   # same content, same slot: the files of one content form a chain
            table[i] = k
        self.table, self.chain = table, chain

    def by_digest(self, digest):
        """[(rel, entry)] of the entries whose hash is digest (each entry a new list)."""
        try:
            raw = bytes.fromhex(digest)
        except (TypeError, ValueError):
            return []
        prefix = int.from_bytes(raw[:8], "big")
        mask = len(self.table) - 1
        i = prefix & mask
        while self.table[i] >= 0 and self.prefixes[self.table[i]] != prefix:
            i = (i + 1) & mask
        found = []
        k = self.table[i]
        while k >= 0:
            if self.digests[k * WIDTH:(k + 1) * WIDTH] == raw:
                rel = unquote(self.keys[self.ends[k - 1] if k else 0:self.ends[k]])
                found.append((rel, [self.sizes[k], self.mtimes[k], digest]))
            k = self.chain[k]
        return found

    def by_size(self, size):
        """[(rel, entry)] of the entries without a hash of size bytes."""
        return self.unhashed.get(size, [])
