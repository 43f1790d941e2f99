"""The agent's transport: msgpack-RPC on stdin/stdout, one client per process.

    request       [0, msgid, method, params]
    response      [1, msgid, error, result]      error = None or {"kind", "message"}
    notification  [2, method, params]            sent unasked, after a response (common.Later)

Requests are handled in arrival order on the reader thread, except file operations,
which run in order on a worker thread of their own (parsing the next request, in
pure-Python msgpack, overlaps with the file system work of this one), and the ones marked
slow (long polls, stopping runs, commands), which get a thread each, so a long poll never
holds up a push.  ``if_unchanged`` (protocol.py) is verify and one more request in one
message: made on the file worker, in order with pushes, the second request only when
verify finds nothing differing, on a thread of its own when it is slow.
"""

import os
import queue
import signal
import sys
import threading

from .. import protocol as P
from . import alloc, envscan, files as files_mod, host, reuse, runs, services, temps
from .common import AgentError, Later, os_message
from .files import FileOps

try:
    import msgpack
except ImportError:  # pragma: no cover - the agent's zip always carries it
    msgpack = None

FILE_METHODS = frozenset(("push", "push_packed", "stage", "append", "unstage", "state", "list", "read", "verify",
                          P.IF_UNCHANGED))


def method_table(files):
    """{method: (function, slow)}: every method a client may call."""
    return {
        "hello": (host.hello, False),
        "ping": (host.ping, False),
        "stat_root": (host.stat_root, False),
        "which": (host.which, False),
        "has_index": (reuse.has_index, False),
        "exec": (host.exec_, True),
        "free_port": (host.free_port, False),
        "stage": (files.stage, False),
        "append": (files.append, False),
        "unstage": (files.drop_staged, False),
        "push": (files.push, False),
        "push_packed": (files.push_packed, False),
        "verify": (files.verify, False),
        "read_block": (files.blocks.read_block, True),
        "state": (files_mod.state, False),
        "list": (files_mod.list_under, False),
        "read": (files_mod.read, False),
        "run_start": (runs.run_start, True),
        "run_info": (runs.run_info_of, False),
        "run_list": (runs.run_list, False),
        "run_read": (runs.run_read, True),
        "run_stop": (runs.run_stop, True),
        "run_delete": (runs.run_delete, True),
        "run_prune": (runs.run_prune, True),
        "run_listening": (runs.run_listening, True),
        "run_endpoints": (runs.run_endpoints, True),
        "service_start": (services.service_start, True),
        "service_info": (services.service_info, False),
        "service_list": (services.service_list, True),
        "service_stop": (services.service_stop, True),
        "service_signal": (services.service_signal, False),
        "service_file": (services.service_file, True),
        "service_listening": (services.service_listening, True),
        "service_log": (services.service_log, False),
        "shell_ensure": (services.shell_ensure, True),
        "shell_capture": (services.shell_capture, True),
        "shell_kill": (services.shell_kill, True),
        "alloc_start": (alloc.alloc_start, True),
        "alloc_info": (alloc.alloc_info, True),
        "alloc_stop": (alloc.alloc_stop, True),
        "step_listening": (alloc.step_listening, True),
        "env_probe": (envscan.env_probe, True),
        "env_list": (envscan.env_list, True),
        "env_read": (envscan.env_read, True),
    }


def outcome(func, params):
    """(error, result) of func(*params); error: {kind, message} or None."""
    try:
        return None, func(*params)
    except AgentError as e:
        return {"kind": e.kind, "message": e.message}, None
    except OSError as e:
        return {"kind": "os", "message": os_message(e)}, None
    except Exception as e:  # noqa: BLE001 - report, keep serving
        return {"kind": "internal", "message": "%s: %s" % (type(e).__name__, e)}, None


class Agent(object):
    """Answers the requests of one client, writing responses to ``out``."""

    def __init__(self, out):
        self.out = out
        self.out_lock = threading.Lock()
        self.files = FileOps()
        self.methods = method_table(self.files)

    def send(self, obj):
        data = msgpack.packb(obj, use_bin_type=True, unicode_errors="surrogateescape")
        with self.out_lock:
            self.out.write(data)
            self.out.flush()

    def respond(self, msgid, error, result):
        try:
            self.send([1, msgid, error, result])
        except (BrokenPipeError, OSError):
            pass

    def notify(self, method, params):
        try:
            self.send([2, method, params])
        except (BrokenPipeError, OSError):
            pass

    def handle(self, msg):
        if not isinstance(msg, list) or len(msg) != 4 or msg[0] != 0:
            return
        _, msgid, method, params = msg
        if method == P.IF_UNCHANGED:
            if isinstance(params, list) and len(params) == 3:
                self.if_unchanged(msgid, *params)
            else:
                self.respond(msgid, {"kind": "method", "message": "%s takes 3 parameters" % method}, None)
            return
        entry = self.methods.get(method)
        if entry is None:
            self.respond(msgid, {"kind": "method", "message": "unknown method %r" % (method,)}, None)
            return
        func, slow = entry
        if slow:
            t = threading.Thread(target=self.call, args=(msgid, func, params))
            t.daemon = True
            t.start()
        else:
            self.call(msgid, func, params)

    def call(self, msgid, func, params, wrap=None):
        """Answer msgid with func(*params) (wrap: the answer made of its outcome); what
        a Later has to send after the answer follows it."""
        error, result = outcome(func, params)
        later = result if isinstance(result, Later) else None
        if later is not None:
            result = later.value
        if wrap is not None:
            error, result = None, wrap([error, result])
        self.respond(msgid, error, result)
        if later is not None:
            error, value = outcome(later.make, ())
            self.notify(later.method, [later.key, value if error is None else None])

    def if_unchanged(self, msgid, check, method, params):
        """verify(*check), then method(*params) if verify found every path as expected:
        [verify's answer, [error, result] or None]."""
        error, answer = outcome(self.files.verify, check)
        entry = self.methods.get(method)
        if error is None and entry is None:
            error = {"kind": "method", "message": "unknown method %r" % (method,)}
        if error is not None or answer[0] == P.NEED_ALL or answer[1]:
            self.respond(msgid, error, None if error is not None else [answer, None])
            return
        func, slow = entry
        args = (msgid, func, params, lambda done: [answer, done])
        if slow:
            t = threading.Thread(target=self.call, args=args)
            t.daemon = True
            t.start()
        else:
            self.call(*args)

    def cleanup(self):
        self.files.cleanup()
        temps.forget_journal()
        reuse.flush_quietly()   # what is not hashed yet is hashed when a lookup needs it


PIPE_SIZE = 1 << 20    # stdin's pipe from sshd (Linux: 64 KB unless asked; 1 MB is what any user may ask)
F_SETPIPE_SZ = 1031


class _Input(object):
    """stdin for msgpack's streaming unpacker: read(n) answers with what has arrived (at
    least a byte, b"" at the end), so a request is parsed once, however it was split.
    Read straight from the file descriptor (nothing else reads stdin), up to PIPE_SIZE at
    a time, from a pipe made that large where the system lets it: a 2 MB push arrives in
    a few reads instead of 32 (the bench tree's 108 MB over loopback: sshd's CPU 0.20 s ->
    0.15 s)."""

    def __init__(self, raw):
        self.fd = raw.fileno()
        try:
            import fcntl
            fcntl.fcntl(self.fd, F_SETPIPE_SZ, PIPE_SIZE)
        except (ImportError, OSError):
            pass   # not a pipe, not Linux, or over the system's limit: as it is

    def read(self, n):
        return os.read(self.fd, min(max(n, 1 << 16), PIPE_SIZE))


def file_worker(agent, jobs):
    while True:
        msg = jobs.get()
        if msg is None:
            return
        if msg == ["sweep"]:
            temps.sweep_dead_agents()
            continue
        agent.handle(msg)


def serve():
    """Answer requests on stdin/stdout until stdin closes; then apply what arrived whole
    and remove the temporaries of files still arriving."""
    inp = sys.stdin.buffer
    out = sys.stdout.buffer
    # Anything printed by mistake must not corrupt the protocol stream.
    sys.stdout = sys.stderr
    agent = Agent(out)
    unpacker = msgpack.Unpacker(_Input(inp), raw=False, unicode_errors="surrogateescape", max_buffer_size=256 << 20, read_size=1 << 16)
    signal.signal(signal.SIGHUP, lambda *_: (agent.cleanup(), os._exit(0)))
    signal.signal(signal.SIGTERM, lambda *_: (agent.cleanup(), os._exit(0)))
    jobs = queue.Queue(maxsize=4)
    jobs.put(["sweep"])   # first on the file worker: what killed agents left
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
