"""zstd in the agent's own process, through libzstd (ctypes, stdlib) where the remote has it.

The remote's Python has no zstd before 3.14; the `zstd` program (protocol.zstd_run) costs a
process per payload: on the bench's 1 Gbit/s push, 48 packed batches of 2 MB, ~5 ms and
~7 ms of CPU each, against ~1.5 ms decoded here.  libzstd.so.1 is what that program and
much of a Linux system (systemd, rpm, libarchive) are built on, so it is there on most
remotes with or without the program; where it cannot be loaded (or is older than 1.4, or
REMOTE_DEV_ZSTD_LIB=0 is in the agent's environment), the program is used as before.

One frame per payload, its content size in its header (what zstandard and ZSTD_compress
write): decoded in one call into a buffer of that size.  A frame that does not say its
size, says more than MAX_CONTENT, or is followed by more frames goes to the program.
"""

import os

from .. import protocol as P

# Pulls' zstd written here, as protocol.CODECS' rows; measured as ZSTD_PROGRAM_CODECS were (4 MB
# blocks, CPU seconds, best of 7 interleaved rounds with zlib 1 in-process, a 24 MB training
# log and 24 MB of Python sources, speeds scaled to zlib 1's 110 MB/s; the program measured
# 164 / 123 in the same run, its rows' 166 / 123): level 1 303 / 352, level 3 202 / 251.  The
# same library writes the same bytes as the program: its ratios.
CODECS = (
    (P.ZSTD, 1, 328.0, 1.22),
    (P.ZSTD, 3, 227.0, 1.24),
)
MAX_CONTENT = 256 << 20          # larger frames are decoded by the program, streaming
MIN_VERSION = 10400              # ZSTD_getFrameContentSize and ZSTD_findFrameCompressedSize stable

_found = []                      # [the library or None], once looked for


def lib():
    """libzstd through ctypes, or None."""
    if not _found:
        _found.append(_load())
    return _found[0]


def _load():
    if os.environ.get("REMOTE_DEV_ZSTD_LIB") == "0":
        return None
    try:
        import ctypes
        import ctypes.util
    except ImportError:   # a Python built without ctypes (libffi missing)
        return None
    for name in ("libzstd.so.1", "libzstd.1.dylib", None):
        if name is None:
            name = ctypes.util.find_library("zstd")   # runs ldconfig or the like: only when those failed
            if name is None:
                return None
        try:
            found = ctypes.CDLL(name)
            found.ZSTD_versionNumber.restype = ctypes.c_uint
            if found.ZSTD_versionNumber() < MIN_VERSION:
                continue
            size_t, buf, src = ctypes.c_size_t, ctypes.c_void_p, ctypes.c_char_p
            for fn, restype, argtypes in (
                    ("ZSTD_getFrameContentSize", ctypes.c_ulonglong, (src, size_t)),
                    ("ZSTD_findFrameCompressedSize", size_t, (src, size_t)),
                    ("ZSTD_decompress", size_t, (buf, size_t, src, size_t)),
                    ("ZSTD_compressBound", size_t, (size_t,)),
                    ("ZSTD_compress", size_t, (buf, size_t, src, size_t, ctypes.c_int)),
                    ("ZSTD_isError", ctypes.c_uint, (size_t,)),
                    ("ZSTD_getErrorName", ctypes.c_char_p, (size_t,))):
                f = getattr(found, fn)
                f.restype, f.argtypes = restype, argtypes
        except (OSError, AttributeError):
            continue
        return found
    return None


def _check(z, n, what):
    if z.ZSTD_isError(n):
        raise ValueError("zstd %s: %s" % (what, z.ZSTD_getErrorName(n).decode("ascii", "replace")))
    return n


def decompress(data):
    """One zstd frame decoded here (a bytearray), or None: no library, or a frame for the
    program."""
    z = lib()
    if z is None:
        return None
    import ctypes
    data = bytes(data)
    size = z.ZSTD_getFrameContentSize(data, len(data))
    if size > MAX_CONTENT:   # also ZSTD_CONTENTSIZE_UNKNOWN and _ERROR, the largest values
        return None
    if _check(z, z.ZSTD_findFrameCompressedSize(data, len(data)), "frame") != len(data):
        return None   # more frames follow
    out = bytearray(size or 1)   # decoded into its place: no buffer to copy out of
    n = _check(z, z.ZSTD_decompress((ctypes.c_char * len(out)).from_buffer(out), size, data, len(data)), "-d")
    if n != size:
        raise ValueError("zstd -d: %d bytes, the frame says %d" % (n, size))
    return out if size else b""


def compress(level, data):
    """data as one zstd frame (its size in its header) at level, written here, or None
    without the library."""
    z = lib()
    if z is None:
        return None
    import ctypes
    data = bytes(data)
    bound = z.ZSTD_compressBound(len(data))
    out = ctypes.create_string_buffer(bound)
    n = _check(z, z.ZSTD_compress(out, bound, data, len(data), level), "-%d" % level)
    return ctypes.string_at(out, n)


def formats():
    """protocol.codec_formats, with zstd where the library is there (the program or not)."""
    out = P.codec_formats()
    if P.ZSTD not in out and lib() is not None:
        out.append(P.ZSTD)
    return out


def decode(fmt, data):
    """protocol.decompress, zstd decoded here when it can be."""
    if fmt == P.ZSTD:
        out = decompress(data)
        if out is not None:
            return out
    return P.decompress(fmt, data)


def encode(fmt, level, data):
    """protocol.compress, zstd written here when it can be."""
    if fmt == P.ZSTD:
        out = compress(level, data)
        if out is not None:
            return out
    return P.compress(fmt, level, data)
