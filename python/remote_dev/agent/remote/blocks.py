"""Reading files under a project root for a pull: a regular file's bytes (never through a
symlink), in blocks compressed for the link -- with the stdlib's codecs, or zstd written
by the remote's own `zstd` program for a caller that reads it.
"""

import errno
import os
import stat
import threading
import time

from .. import protocol as P
from .common import AgentError, expand_root
from .paths import resolve
from . import zstdlib


class Blocks(object):
    """The pull blocks of one agent: its codecs, and how many compress at once."""

    def __init__(self):
        self.formats = zstdlib.formats()
        self.cores = min(os.cpu_count() or 1, 4)
        self.slots = threading.BoundedSemaphore(self.cores)  # compressions at once (reads run in threads)
        # how the `zstd` program is kept to one thread (P.ZSTD_THREAD_FLAGS); None: it
        # failed with each, so pulls take the stdlib's codecs (with libzstd: not used)
        self.zstd_flags = P.ZSTD_THREAD_FLAGS[0] if P.ZSTD in self.formats else None

    def read_block(self, root, rel, offset, size, link=None, prefix=None, accept=None):
        """[format, data, busy]: size bytes at offset of a regular file, compressed for a
        link of link wire bytes per second (protocol.choose_codec; raw when they do not
        compress or link is None); busy: the seconds this took, not counting the wait for a
        compression slot (the caller's measure of the link: answers that come at the pace
        of the agent's compression do not measure the link).  prefix [n, hash]: the file's
        first n bytes must hash to hash (it only grew since the last pull), else AgentError
        "changed".  accept: the formats the caller decodes; None (a caller that does not
        say) takes zlib and bz2 only, zstd needs saying.  Runs in a thread of its own."""
        t0 = time.perf_counter()
        waited = 0.0
        fd = open_regular(expand_root(root), rel)
        try:
            if prefix is not None and prefix_hash(fd, prefix[0]) != prefix[1]:
                raise AgentError("changed", "%s: its first %d bytes changed" % (rel, prefix[0]))
            data = pread_all(fd, offset, size)
        finally:
            os.close(fd)
        if link is not None and data:
            ratio = P.sample_ratio(data)
            formats = [f for f in self.formats if (f in accept if accept is not None else f != P.ZSTD)
                       and (f != P.ZSTD or self.zstd_flags)]
            fmt, level = P.choose_codec(link, self.cores, ratio, formats, codecs=self.codecs(formats))
            if fmt:
                t1 = time.perf_counter()
                with self.slots:
                    waited = time.perf_counter() - t1
                    blob = self.compress(fmt, level, data)
                    if blob is None:   # the zstd program failed: the stdlib's best instead
                        formats.remove(P.ZSTD)
                        fmt, level = P.choose_codec(link, self.cores, ratio, formats)
                        blob = P.compress(fmt, level, data) if fmt else data
                if len(blob) < len(data):
                    return [fmt, blob, time.perf_counter() - t0 - waited]
        return [P.RAW, data, time.perf_counter() - t0 - waited]

    @staticmethod
    def codecs(formats):
        """The codec table of read_block's choice: the stdlib's, and zstd's (libzstd's here,
        or the program's) when it may write zstd."""
        if P.ZSTD not in formats:
            return P.CODECS
        return P.CODECS + (zstdlib.CODECS if zstdlib.lib() is not None else P.ZSTD_PROGRAM_CODECS)

    def compress(self, fmt, level, data):
        """data in fmt at level; None when the zstd program failed with every way of keeping
        it to one thread (it is not asked again by this agent)."""
        if fmt != P.ZSTD:
            return P.compress(fmt, level, data)
        blob = zstdlib.compress(level, data)
        if blob is not None:
            return blob
        while self.zstd_flags is not None:
            flags = self.zstd_flags
            try:
                return P.zstd_compress(level, data, flags)
            except ValueError:
                later = P.ZSTD_THREAD_FLAGS[P.ZSTD_THREAD_FLAGS.index(flags) + 1:]
                if self.zstd_flags == flags:   # (another thread may have moved on already)
                    self.zstd_flags = later[0] if later else None
        return None


def open_regular(root, rel):
    path = resolve(root, rel)
    try:
        fd = os.open(path, os.O_RDONLY | P.O_NOFOLLOW)
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise AgentError("path", "refused %r: a symlink" % rel)
        raise
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise AgentError("path", "refused %r: not a regular file" % rel)
    return fd


def pread_all(fd, offset, size):
    chunks = []
    while size > 0:
        block = os.pread(fd, min(size, 1 << 22), offset)
        if not block:
            break
        chunks.append(block)
        size -= len(block)
        offset += len(block)
    return b"".join(chunks)


def prefix_hash(fd, size):
    h = P.new_hasher()
    offset = 0
    while offset < size:
        block = os.pread(fd, min(size - offset, P.HASH_BLOCK), offset)
        if not block:
            return None
        h.update(block)
        offset += len(block)
    return P.hasher_digest(h)
