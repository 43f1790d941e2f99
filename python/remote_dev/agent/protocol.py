"""What the local side and the remote agent agree on, written once.

Shipped inside the agent's zip (the remote imports it as ``remote_dev_agent.protocol``)
and imported locally as ``remote_dev.agent.protocol``: stdlib only, Python >= 3.8 (the
tests check that with vermin), no state.

- run (and service) states, and which of them are live;
- the markers processes carry in their environment, and the cache layout both sides name;
- the content hash: sha256 truncated to 128 bits, of a file's bytes or of ``link:`` and a
  symlink's target;
- the shapes on the wire: push ops, their answers, entry states, listing entries;
- the conflict rule: when what is at a path may be replaced by new content;
- how the target's ``python`` setting becomes words of a shell command line.
"""

import hashlib
import importlib
import json
import os
import posixpath
import shlex
import struct

# --------------------------------------------------------------------------- runs

STARTING = "starting"    # run folder made, supervisor not yet reported
RUNNING = "running"
PENDING = "pending"      # a Slurm job waiting in the queue
EXITED = "exited"
STOPPED = "stopped"      # exited after a stop request
LOST = "lost"            # its supervisor vanished without recording an exit

LIVE_STATES = (STARTING, RUNNING, PENDING)
ENDED_STATES = (EXITED, STOPPED, LOST)


def is_live(state):
    """True while a run (or a shell, kernel, notebook server, allocation) may still produce
    output or change state.  Payloads to the front-ends carry it as ``live``: Lua keeps no
    copy of these states."""
    return state in LIVE_STATES


# --------------------------------------------------------------------------- markers

# In the environment of every process of a run, shell or service: its id or remote name
# (the agent finds and kills a run's processes by it, also inside containers).
RUN_ID_ENV = "REMOTE_DEV_RUN_ID"
# In the environment of a held allocation's steps: "<allocation name>:<job id>".
ALLOC_ENV = "REMOTE_DEV_ALLOC"
# A debug run's processes (read by agent/remote/debug_boot.py, which is uploaded on its own
# and keeps its copies of these names; tests/test_protocol_facts.py holds them equal).
DEBUG_ENV = "REMOTE_DEV_DEBUG"                    # the run's endpoints folder: a process is debugged
DEBUG_HOST_ENV = "REMOTE_DEV_DEBUG_HOST"          # the agent's host name
DEBUGPY_ENV = "REMOTE_DEV_DEBUGPY"                # the folder of the uploaded debugpy ("" : the program's own)
DEBUG_STOP_ENV = "REMOTE_DEV_DEBUG_STOP"          # "", "all" or ranks that stop on entry
DEBUG_WAIT_MAX_ENV = "REMOTE_DEV_DEBUG_WAIT_MAX"  # seconds a process waits for its debugger
DEBUG_TOKEN_ENV = "REMOTE_DEV_DEBUG_TOKEN"        # the run's secret (debugpy's listeners take it from another host)
DEBUG_GUARD_ENV = "REMOTE_DEV_DEBUG_GUARD"        # a container's `python -m debugpy`: only the guard


# --------------------------------------------------------------------------- the cache layout

# Below the agent's cache folder (~/.cache/remote-dev, the hello's cache_dir):
RUNS_DIR = "runs"              # runs/<id>/: a run's folder
SERVICES_DIR = "services"      # services/<remote name>/: a kernel's or notebook server's folder
ALLOCS_DIR = "allocs"          # allocs/<name>/: a held allocation's record
STEP_FILE = "step.json"        # in a run's folder: the job step it became in a held allocation
ENDPOINTS_DIR = "debug"        # in a run's folder: the endpoints its debugged processes write
KERNEL_FILE = "kernel.json"    # in the kernel's service folder: its connection file


def run_dir(cache, run_id):
    return posixpath.join(cache, RUNS_DIR, run_id)


def service_dir(cache, name):
    return posixpath.join(cache, SERVICES_DIR, name)


# --------------------------------------------------------------------------- the target's python

def python_words(python):
    """The target's python setting as words: a path (``/opt/env/bin/python``,
    ``~/venv/bin/python``) or a command with arguments (``conda run -n X python``); a path
    with spaces is quoted in the setting (``"'/opt/my env/bin/python'"``)."""
    return shlex.split(python)


def shell_word(python):
    """The target's python as it starts in a shell command line (sh): each word quoted,
    a leading ``~/`` from ``$HOME`` (quoted, a tilde would stay a tilde).  The one way every
    feature (agent, runs, debug, shells, kernels, notebooks) writes it."""
    out = []
    for word in python_words(python) or [python]:
        if not out and word.startswith("~/"):
            out.append('"$HOME"/' + shlex.quote(word[2:]))
        else:
            out.append(shlex.quote(word))
    return " ".join(out)


# --------------------------------------------------------------------------- content hash

HASH_HEX = 32            # hex digits kept: 128 bits
HASH_BLOCK = 1 << 20     # read size when hashing a file
LINK_PREFIX = b"link:"   # a symlink hashes as LINK_PREFIX + its target's bytes
O_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)


def new_hasher():
    """An incremental hasher; finish it with hasher_digest."""
    return hashlib.sha256()


def hasher_digest(h):
    return h.hexdigest()[:HASH_HEX]


def digest(data):
    """Content hash of bytes (a whole file's content)."""
    return hashlib.sha256(data).hexdigest()[:HASH_HEX]


def link_hash(target):
    """Content hash of a symlink: its target (str or bytes), never what it points to."""
    if not isinstance(target, bytes):
        target = os.fsencode(target)
    return digest(LINK_PREFIX + target)


def file_hash(path):
    """Content hash of the file at path, read in blocks; a final symlink is refused
    (OSError ELOOP), never followed."""
    h = hashlib.sha256()
    fd = os.open(path, os.O_RDONLY | O_NOFOLLOW)
    with os.fdopen(fd, "rb") as f:
        while True:
            block = f.read(HASH_BLOCK)
            if not block:
                break
            h.update(block)
    return h.hexdigest()[:HASH_HEX]


# --------------------------------------------------------------------------- wire shapes

# Entry kinds, in states, expectations, records and listings.
FILE = "f"
LINK = "l"
DIR = "d"
OTHER = "o"

# A state (``state`` answers, ``expect`` of an op): [kind, size, mtime_ns, hash].
# A listing entry (``list`` answers): [kind, size, mtime_ns, hash, mode, link_target].
S_KIND, S_SIZE, S_MTIME, S_HASH, S_MODE, S_TARGET = range(6)

# Push ops (``push`` requests), lists:
#   [OP_WRITE,  path, expect, force, hash, mode, data]     a file, whole
#   [OP_STAGED, path, expect, force, hash, mode, token]    a file sent in chunks (stage/append)
#   [OP_LINK,   path, expect, force, hash, None, target]   a symlink (never followed)
#   [OP_DELETE, path, expect, force]                       delete a file or symlink
#   [OP_COPY,   path, expect, force, hash, mode, [size, source]]
#       a file whose content (hash, size) the remote may hold: copied from source (a path
#       of the same root written before in the same request; its content is checked) or,
#       source None, from a file the agent's content index knows; answered [NEED] when
#       none holds it: the content must be sent.
# expect: None (nothing synced there yet) or the state the last sync left.
OP_WRITE = "w"
OP_STAGED = "s"
OP_LINK = "l"
OP_DELETE = "d"
OP_COPY = "c"
OP_KINDS = (OP_WRITE, OP_STAGED, OP_LINK, OP_DELETE, OP_COPY)
OP_KIND, OP_PATH, OP_EXPECT, OP_FORCE, OP_HASH, OP_MODE, OP_PAYLOAD = range(7)


def write_op(path, expect, force, hash_, mode, data):
    return [OP_WRITE, path, expect, force, hash_, mode, data]


def staged_op(path, expect, force, hash_, mode, token):
    return [OP_STAGED, path, expect, force, hash_, mode, token]


def link_op(path, expect, force, hash_, target):
    return [OP_LINK, path, expect, force, hash_, None, target]


def delete_op(path, expect, force):
    return [OP_DELETE, path, expect, force]


def copy_op(path, expect, force, hash_, mode, size, source=None):
    return [OP_COPY, path, expect, force, hash_, mode, [size, source]]


# A packed push: a batch of push ops as ONE blob (compressed as one stream when that pays,
# so small files find matches in each other): a 4-byte length, a JSON header -- the ops,
# each write's payload replaced by its length -- then the payloads, in order.  JSON, not
# msgpack: the agent's msgpack is pure Python (nothing is installed on the remote) and
# decoding ~8 values per op that way cost ~20 us an op; the stdlib's json is C (the
# ~7,500-file bench tree: 0.15 s -> 0.01 s).  Names keep surrogateescape's lone surrogates
# (JSON escapes them and gives them back); payloads come back as memoryviews of the blob.
# A write's content hash is left out (None): the agent hashes the payload itself when
# something is already at the path (the conflict rule), and 16 random bytes a file were
# 0.8% of a compressed push of source files.
_HEAD = struct.Struct("<I")


def pack_ops(ops):
    """ops (lists, see above) -> bytes."""
    header = []
    payloads = []
    for op in ops:
        if op[OP_KIND] == OP_WRITE:
            payloads.append(op[OP_PAYLOAD])
            op = op[:OP_HASH] + [None, op[OP_MODE], len(op[OP_PAYLOAD])]
        header.append(op)
    head = json.dumps(header, separators=(",", ":")).encode("ascii")
    return b"".join([_HEAD.pack(len(head)), head] + payloads)


def unpack_ops(blob):
    """pack_ops' bytes -> ops; ValueError when they do not add up."""
    view = memoryview(blob)
    if len(view) < _HEAD.size:
        raise ValueError("too short")
    (n,) = _HEAD.unpack_from(view, 0)
    pos = _HEAD.size + n
    ops = json.loads(bytes(view[_HEAD.size:pos]).decode("ascii"))
    if not isinstance(ops, list):
        raise ValueError("not a list of ops")
    for op in ops:
        if isinstance(op, list) and len(op) > OP_PAYLOAD and op[OP_KIND] == OP_WRITE:
            size = op[OP_PAYLOAD]
            if not isinstance(size, int) or size < 0 or pos + size > len(view):
                raise ValueError("payload sizes exceed the blob")
            op[OP_PAYLOAD] = view[pos:pos + size]
            pos += size
    if pos != len(view):
        raise ValueError("%d bytes left over" % (len(view) - pos))
    return ops


def pack_answers(answers, busy=None):
    """A packed push's answers (lists, see below) as JSON bytes: the agent's pure-Python
    msgpack packed ~3 values an op (~8% of its CPU in a big push).  busy: the seconds the
    agent spent on the request (decoding and applying it), which tells the sender the
    agent's own pace (wire.LinkMeter.agent_pace)."""
    if busy is not None:
        answers = {"answers": answers, "busy": round(busy, 6)}
    return json.dumps(answers, separators=(",", ":")).encode("ascii")


def unpack_answers(blob):
    """(answers, busy seconds or None) of pack_answers' blob."""
    got = json.loads(bytes(blob).decode("ascii"))
    busy = None
    if isinstance(got, dict):
        got, busy = got.get("answers"), got.get("busy")
    if not isinstance(got, list):
        raise ValueError("not a list of answers")
    return got, busy if isinstance(busy, (int, float)) else None



def pack_files(header, parts):
    """Files in one blob (the :RemoteEnv mirror's reads): a JSON header of [rel, size,
    mtime_ns] (size -1: gone), then the bytes of each file present, in order."""
    head = json.dumps(header, separators=(",", ":")).encode("ascii")
    return b"".join([_HEAD.pack(len(head)), head] + list(parts))


def unpack_files(blob):
    """pack_files' bytes -> [(rel, size, mtime_ns, memoryview or None)]; ValueError when
    they do not add up."""
    view = memoryview(blob)
    (n,) = _HEAD.unpack_from(view, 0)
    pos = _HEAD.size + n
    out = []
    for rel, size, mtime in json.loads(bytes(view[_HEAD.size:pos]).decode("ascii")):
        if size < 0:
            out.append((rel, size, mtime, None))
            continue
        if pos + size > len(view):
            raise ValueError("file sizes exceed the blob")
        out.append((rel, size, mtime, view[pos:pos + size]))
        pos += size
    if pos != len(view):
        raise ValueError("%d bytes left over" % (len(view) - pos))
    return out

# Answers to push ops, one per op:
#   [OK, size, mtime_ns] | [CONFLICT, reason] | [ERROR, message] | [GONE] (delete: nothing there)
#   | [NEED] (a copy: the remote holds no such content, send it)
OK = "ok"
CONFLICT = "conflict"
ERROR = "error"
GONE = "gone"
NEED = "need"

# Temporary files of atomic writes carry this in their name; listings skip them.
TMP_MARK = ".rdtmp-"

# The agent on the remote: <cache>/agent/<bundle digest>/AGENT_ZIP, the sources (what the
# bootstrap uploads; any python3 >= 3.8 runs it), and beside it COMPILED_ZIP % cache tag, the
# same with bytecode for one interpreter, which the agent writes for itself.
AGENT_ZIP = "agent.pyz"
COMPILED_ZIP = "agent.%s.pyz"


# --------------------------------------------------------------------------- conflicts

REMOTE = "remote"   # the agent replacing a remote file (push), or a preview of that
LOCAL = "local"     # the local side replacing a local file (pull)

FOLDER_IN_THE_WAY = "a folder is in the way"
OTHER_IN_THE_WAY = "something other than a file is in the way"
REASONS = {
    REMOTE: ("changed on the remote since the last sync",
             "exists on the remote and differs (never pushed by remote_dev)"),
    LOCAL: ("changed locally since the last sync",
            "exists locally and differs"),
}


def conflict_reason(current, expect, new_hash, current_hash=None, side=REMOTE):
    """The conflict rule, once for both sides: None when what is at a path may be
    replaced by new content, else a short reason.

    It may be replaced when nothing is there; when it is what the last sync left, by
    stat (kind, size and mtime as ``expect``) or by content (its hash is expect's); or
    when its content is the new content already.  A folder, or anything other than a file
    or a symlink, is always in the way.

    current: None, or [kind, size, mtime_ns] or [kind, size, mtime_ns, hash] of what is
        at the path now.
    expect: None (nothing synced there yet) or [kind, size, mtime_ns, hash] as the last
        sync left it.
    new_hash: content hash of the replacement, None for a delete.
    current_hash: the current content's hash, or a function computing it (called at most
        once, only when the stat does not settle it); by default current[3].
    side: REMOTE or LOCAL, the wording of the reasons."""
    if current is None:
        return None
    kind = current[S_KIND]
    if kind == DIR:
        return FOLDER_IN_THE_WAY
    if kind not in (FILE, LINK):
        return OTHER_IN_THE_WAY
    if expect is not None and kind == expect[S_KIND] and current[S_SIZE] == expect[S_SIZE] \
            and current[S_MTIME] == expect[S_MTIME]:
        return None
    if current_hash is None:
        current_hash = current[S_HASH] if len(current) > S_HASH else None
    elif callable(current_hash):
        current_hash = current_hash()
    if current_hash is not None:
        if new_hash is not None and current_hash == new_hash:
            return None
        if expect is not None and current_hash == expect[S_HASH]:
            return None
    changed, unknown = REASONS[side]
    return unknown if expect is None else changed


# --------------------------------------------------------------------------- compression

# Payloads may travel compressed with a codec of the stdlib (or zstd, below): a format
# (what the receiver needs to decode) and a level (the sender's business).  The sender
# picks one per batch of a push, per chunk of a large file and per block of a pull, as the
# one that moves the most raw bytes per second: min(compression speed x cores, link rate x
# ratio).
RAW = ""
ZLIB = "zlib"
BZ2 = "bz2"
# zstd: the remote's own `zstd` program, when one is on the agent's PATH (nothing is
# installed on the remote; without one the remote does not list the format and zlib is
# used), decodes pushes the local side's zstandard (a host dependency) wrote, and writes
# pulls for a local side that says it reads the format (read_block's ``accept``).  Not in
# CODECS (the stdlib's codecs): ZSTD_PROGRAM_CODECS.
ZSTD = "zstd"

# (format, level, raw MB/s per core, ratio relative to zlib level 1), measured on ~108 MB
# of source files in 2 MB batches sorted by suffix (zlib 1: 110 MB/s, ratio 3.9), listed
# from the fastest.  lzma is left out: at preset 1 it compresses like bz2 at a similar
# speed on such text (ratio 5.7 vs 5.8) and much worse on logs (7.3 vs 9.1).
CODECS = (
    (ZLIB, 1, 110.0, 1.00),
    (ZLIB, 3, 85.0, 1.08),
    (ZLIB, 5, 56.0, 1.21),
    (ZLIB, 6, 38.0, 1.23),
    (BZ2, 9, 13.5, 1.50),
)
# The agent's zstd, the `zstd` program spawned per block (zstd_compress), as CODECS' rows.
# Measured on 4 MB blocks (a pull's READ_SIZE) through the program as the agent runs it
# (stdin from a thread, stdout read whole), CPU seconds of both processes, best of 7
# interleaved rounds with zlib 1 in-process, on a 24 MB training log (lines of step, loss,
# lr, grad_norm, tok/s) and on 24 MB of Python sources; speeds scaled to zlib 1's 110 MB/s:
#     training log:  zlib 1 202 MB/s ratio 4.78; zstd 1 287 MB/s x1.32; zstd 3 209 MB/s x1.25
#     sources:       zlib 1 142 MB/s ratio 3.62; zstd 1 227 MB/s x1.12; zstd 3 170 MB/s x1.24
# The rows are the means of the two.  The program's start and its pipes cost it: in-process
# (zstandard) level 1 ran ~620 MB/s on the same blocks.  --single-thread is ~25% faster
# than -T1 (whose worker thread copies every block once more); levels 6 and up are slower
# than bz2 for less ratio on slow links: left out.
ZSTD_PROGRAM_CODECS = (
    (ZSTD, 1, 166.0, 1.22),
    (ZSTD, 3, 123.0, 1.24),
)
ZSTD_THREAD_FLAGS = (("--single-thread",), ("-T1",))   # in order; an old zstd may not know the first
INCOMPRESSIBLE = 1.1      # a zlib-1 ratio below this: send raw
SAMPLE = 16 << 10         # bytes per piece of a compressibility sample
MB = 1e6


def codec_formats():
    """The formats this interpreter can decode (bz2 can be missing from a Python build;
    zstd needs a `zstd` program on PATH)."""
    out = [ZLIB]
    try:
        importlib.import_module("bz2")
        out.append(BZ2)
    except ImportError:
        pass
    if zstd_program():
        out.append(ZSTD)
    return out


def zstd_program():
    """The `zstd` program on PATH (its absolute path), or None."""
    import shutil
    return shutil.which("zstd")


def zstd_decompress(data):
    """zstd's frame(s) decoded by the `zstd` program (stdin to stdout, no file touched)."""
    return zstd_run(["-d", "-c", "-q"], data)


def zstd_compress(level, data, flags=ZSTD_THREAD_FLAGS[0]):
    """data as one zstd frame written by the `zstd` program at level; flags: how it is
    kept to one thread (ZSTD_THREAD_FLAGS).  ValueError when the program failed."""
    return zstd_run(["-q", "-c", "-%d" % level] + list(flags), data)


def zstd_run(args, data, program=None):
    """The `zstd` program's stdout for data on its stdin; ValueError when it is missing
    or fails.  Its stdin is written whole by a thread (subprocess.run's communicate
    writes 4 KB per poll: ~1,000 rounds a 4 MB block)."""
    import subprocess
    import threading
    program = program or zstd_program()
    if program is None:
        raise ValueError("no zstd program on PATH")
    try:
        proc = subprocess.Popen([program] + args, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE)
    except OSError as e:
        raise ValueError("zstd: %s" % e)

    def feed():
        try:
            proc.stdin.write(data)
        except OSError:
            pass   # it ended early: its exit status and stderr tell why
        finally:
            try:
                proc.stdin.close()
            except OSError:
                pass
    writer = threading.Thread(target=feed, daemon=True)
    writer.start()
    try:
        out = proc.stdout.read()
        err = proc.stderr.read()
    finally:
        writer.join()
        proc.stdout.close()
        proc.stderr.close()
        code = proc.wait()
    if code != 0:
        raise ValueError("zstd %s: %s" % (" ".join(args), err.decode("utf-8", "replace").strip() or "exit %d" % code))
    return out


def compress(fmt, level, data):
    if fmt == ZLIB:
        import zlib
        return zlib.compress(data, level)
    if fmt == BZ2:
        import bz2
        return bz2.compress(data, level)
    if fmt == ZSTD:
        return zstd_compress(level, data)
    if fmt == RAW:
        return data
    raise ValueError("unknown compression format %r" % (fmt,))


def decompress(fmt, data):
    if fmt == ZLIB:
        import zlib
        return zlib.decompress(data)
    if fmt == BZ2:
        import bz2
        return bz2.decompress(data)
    if fmt == ZSTD:
        return zstd_decompress(data)
    if fmt == RAW:
        return data
    raise ValueError("unknown compression format %r" % (fmt,))


def sample_ratio(data):
    """zlib-1 ratio of a sample (up to three pieces of SAMPLE bytes, from the start, the
    middle and the end): cheap, enough to tell compressible from random or compressed."""
    n = len(data)
    if n <= 3 * SAMPLE:
        piece = bytes(data)
    else:
        mid = n // 2
        piece = b"".join((bytes(data[:SAMPLE]), bytes(data[mid:mid + SAMPLE]), bytes(data[n - SAMPLE:])))
    if not piece:
        return 1.0
    import zlib
    return len(piece) / float(len(zlib.compress(piece, 1)))


def choose_codec(link, cores, ratio1, formats=None, speed=1.0, codecs=CODECS, ceiling=None):
    """(format, level) moving the most raw bytes per second: RAW moves the link rate, a
    codec min(cores x its speed, link x its ratio).  link: wire bytes per second (None:
    a fast link: nothing is compressed); ratio1: zlib-1 ratio of the data (a
    sample's, or measured); speed: this machine's speed relative to CODECS' figures;
    ceiling: raw bytes per second the receiver takes at most (its pace, as measured), which
    bounds every choice alike.  Of the choices within 2% of the best, the fastest codec
    (RAW before any) is taken: a slower one only for 2% more.  codecs: the sender's table
    (its compressors)."""
    if link is None or ratio1 < INCOMPRESSIBLE:
        return RAW, 0
    cap = float("inf") if ceiling is None else float(ceiling)
    options = [(min(float(link), cap), float("inf"), (RAW, 0))]
    for fmt, level, mbs, rel in codecs:
        if formats is not None and fmt not in formats:
            continue
        options.append((min(cores * mbs * MB * speed, link * ratio1 * rel, cap), mbs, (fmt, level)))
    best_rate = max(rate for rate, _, _ in options)
    return max((o for o in options if o[0] * 1.02 >= best_rate), key=lambda o: o[1])[2]


# --------------------------------------------------------------------------- the remote check

# ``verify`` takes what the local side expects at paths as one blob (pack_states): per path
# its kind (FILE, LINK, or FORGET: no longer expected), size and mtime_ns.  Its answer
# lists only the paths whose remote state differs: [[path, state or None], ...], state
# being [kind, size, mtime_ns, hash].
FORGET = "-"
NEED_ALL = "need-all"     # verify's answer when it lost the expectations a delta builds on

# ``if_unchanged`` is verify and one more request in one message: the agent makes the
# request only when verify finds every path as expected (a run's start behind the push
# that had nothing to send).  Its answer: [verify's answer, [error, result] or None (not
# made)].
IF_UNCHANGED = "if_unchanged"

# Notifications the agent sends unasked: [2, method, [key, value]].  RUN_OUTPUT: a run
# started with ``first`` gets its first output (a run_read from offset 0) this way, the
# read made without waiting for a request.
RUN_OUTPUT = "run_output"


def pack_states(entries):
    """entries: [(path, kind, size, mtime_ns)] -> one zlib-compressed blob."""
    import struct
    import zlib
    paths = b"\0".join(os.fsencode(e[0]) for e in entries)
    kinds = "".join(e[1] for e in entries).encode()
    nums = []
    for e in entries:
        nums.append(e[2])
        nums.append(e[3])
    head = struct.pack("<I", len(entries))
    return zlib.compress(head + kinds + struct.pack("<%dq" % len(nums), *nums) + paths, 1)


def unpack_states(blob):
    """The entries of pack_states, as a list of (path, kind, size, mtime_ns)."""
    import struct
    import zlib
    data = zlib.decompress(blob)
    (n,) = struct.unpack_from("<I", data)
    kinds = data[4:4 + n].decode()
    nums = struct.unpack_from("<%dq" % (2 * n), data, 4 + n)
    rest = data[4 + n + 16 * n:]
    paths = rest.split(b"\0") if n else []
    if len(paths) != n:
        raise ValueError("damaged states: %d paths for %d entries" % (len(paths), n))
    return [(os.fsdecode(paths[i]), kinds[i], nums[2 * i], nums[2 * i + 1]) for i in range(n)]
