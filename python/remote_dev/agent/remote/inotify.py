"""What may have changed in a set of folders since the last look: Linux inotify, through
ctypes (stdlib only).  Used by the remote check (verify.py) so that a push on an
unchanged tree stats only what the kernel saw change, not every file.

Only on local file systems: a change made by another machine to a network file system
(NFS, Lustre, GPFS, CIFS, FUSE) never reaches this kernel's inotify, so there every look
stats everything.  Anything the watch cannot vouch for -- a watched folder deleted or
moved, a needed folder made anew, the event queue overflowing -- makes it broken, and the
caller looks at everything again.
"""

import ctypes
import errno
import os
import struct

IN_MODIFY = 0x2
IN_ATTRIB = 0x4
IN_CLOSE_WRITE = 0x8
IN_MOVED_FROM = 0x40
IN_MOVED_TO = 0x80
IN_CREATE = 0x100
IN_DELETE = 0x200
IN_DELETE_SELF = 0x400
IN_MOVE_SELF = 0x800
IN_UNMOUNT = 0x2000
IN_Q_OVERFLOW = 0x4000
IN_IGNORED = 0x8000
IN_ONLYDIR = 0x01000000
IN_DONT_FOLLOW = 0x02000000
IN_ISDIR = 0x40000000
IN_NONBLOCK = os.O_NONBLOCK
IN_CLOEXEC = getattr(os, "O_CLOEXEC", 0o2000000)

MASK = (IN_MODIFY | IN_ATTRIB | IN_CLOSE_WRITE | IN_MOVED_FROM | IN_MOVED_TO | IN_CREATE | IN_DELETE
        | IN_DELETE_SELF | IN_MOVE_SELF | IN_ONLYDIR | IN_DONT_FOLLOW)
BROKEN = IN_DELETE_SELF | IN_MOVE_SELF | IN_UNMOUNT | IN_Q_OVERFLOW | IN_IGNORED
EVENT = struct.Struct("iIII")

# File systems whose every change passes through this kernel.
LOCAL_FS = frozenset(("ext2", "ext3", "ext4", "xfs", "btrfs", "tmpfs", "ramfs", "f2fs", "zfs", "overlay",
                      "jfs", "reiserfs", "bcachefs"))

_libc = []


def libc():
    if not _libc:
        try:
            lib = ctypes.CDLL(None, use_errno=True)
            lib.inotify_init1.argtypes = [ctypes.c_int]
            lib.inotify_add_watch.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32]
            _libc.append(lib)
        except (OSError, AttributeError):
            _libc.append(None)
    return _libc[0]


def _unescape(field):
    return field.replace("\\040", " ").replace("\\011", "\t").replace("\\012", "\n").replace("\\134", "\\")


def fs_type(path):
    """The type of the file system holding path (from /proc/self/mountinfo), or None."""
    try:
        with open("/proc/self/mountinfo") as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    path = os.path.realpath(path)
    best, kind = -1, None
    for line in lines:
        left, sep, right = line.partition(" - ")
        fields = left.split()
        if not sep or len(fields) < 5 or not right:
            continue
        mount = _unescape(fields[4])
        inside = path == mount or path.startswith(mount.rstrip("/") + "/")
        if inside and len(mount) > best:
            best, kind = len(mount), right.split()[0]
    return kind


class Watch(object):
    """inotify watches on folders under root (paths relative to it, "" the root)."""

    def __init__(self, root):
        self.root = root
        self.fd = -1
        self.dirs = {}      # wd -> folder (relative)
        self.needed = set()  # folders watched
        self.broken = False
        lib = libc()
        if lib is None or fs_type(root) not in LOCAL_FS:
            self.broken = True
            return
        fd = lib.inotify_init1(IN_NONBLOCK | IN_CLOEXEC)
        if fd < 0:
            self.broken = True
            return
        self.fd = fd
        try:
            self.dev = os.stat(root).st_dev
        except OSError:
            self.close()

    def add(self, folder):
        """Watch root/folder.  False when it cannot be: missing, not a folder, a symlink or
        on another file system (the caller looks at what lies there every time); out of
        watches breaks the watch."""
        if self.broken:
            return False
        if folder in self.needed:
            return True
        path = os.path.join(self.root, folder) if folder else self.root
        try:
            if os.stat(path).st_dev != self.dev:  # another file system mounted inside the tree
                return False
        except OSError:
            return False
        wd = libc().inotify_add_watch(self.fd, os.fsencode(path), MASK)
        if wd < 0:
            if ctypes.get_errno() not in (errno.ENOENT, errno.ENOTDIR, errno.ELOOP, errno.EACCES):
                self.close()
            return False
        self.dirs[wd] = folder
        self.needed.add(folder)
        return True

    def changes(self):
        """The paths (relative to root) events named since the last call, or None when the
        watch is broken (everything must be looked at)."""
        if self.broken:
            return None
        out = set()
        while True:
            try:
                data = os.read(self.fd, 1 << 16)
            except OSError as e:
                if e.errno in (errno.EAGAIN, errno.EWOULDBLOCK):
                    return out
                self.close()
                return None
            if not data:
                return out
            if not self.parse(data, out):
                self.close()
                return None

    def parse(self, data, out):
        pos = 0
        while pos + EVENT.size <= len(data):
            wd, mask, _cookie, size = EVENT.unpack_from(data, pos)
            name = data[pos + EVENT.size:pos + EVENT.size + size].rstrip(b"\0")
            pos += EVENT.size + size
            if mask & BROKEN:
                return False
            folder = self.dirs.get(wd)
            if folder is None:
                continue
            rel = folder + "/" + os.fsdecode(name) if folder else os.fsdecode(name)
            if mask & IN_ISDIR:
                if rel in self.needed:   # a watched folder's place changed hands
                    return False
                continue
            out.add(rel)
        return True

    def close(self):
        self.broken = True
        if self.fd >= 0:
            try:
                os.close(self.fd)
            except OSError:
                pass
            self.fd = -1
