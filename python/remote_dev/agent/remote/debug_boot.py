"""remote_dev's debug bootstrap, uploaded as ``sitecustomize.py`` into a folder of its own
that a debug run puts first on PYTHONPATH: every Python process the run starts (the
program, the ranks of srun / torchrun / mpirun, a launcher's children) imports it at start.

In a process that carries the run's marker (REMOTE_DEV_DEBUG, the folder to write to) it
starts debugpy listening at a free port -- on 127.0.0.1 when the process runs on the host
the agent runs on, else on its node's address (REMOTE_DEV_DEBUG_ADDR chooses another) --,
writes {rank, host, addr, port, pid, ...} as ``<host>-<pid>.json`` into that folder (the
engine watches it and attaches one nvim-dap session to each), waits for the client, and
with REMOTE_DEV_DEBUG_STOP naming the process's rank (or "all") stops at the program's
first line.  Left alone: processes debugpy attaches itself (its own adapter, the
subprocesses of a debugged process: pool workers, DataLoader workers) and the launchers
whose children are the ranks (torchrun, ...).  Then the next ``sitecustomize`` on the path
(the interpreter's own) runs as if this one were not there.

Every listener debugpy opens in a debugged process and in its adapter takes only the run
owner's connections (see "Only the run's owner gets in" below); a process that cannot start
its debugger writes ``<host>-<pid>.failed`` beside the endpoints, which the engine reports
at once.  With REMOTE_DEV_DEBUG_GUARD alone (a container's ``python -m debugpy --listen``)
only the guard is installed.

Stdlib only, Python >= 3.8; nothing of the agent is imported."""

import os
import sys

# Python launchers: not debugged themselves, their children (the ranks) are.  Tools that
# shell setups run (conda activate) are left alone too.  REMOTE_DEV_DEBUG_SKIP adds names.
SKIP = ("torchrun", "torch.distributed.run", "torch.distributed.launch", "deepspeed", "accelerate",
        "horovodrun", "conda", "mamba", "pip", "pip3")
RANK_VARS = ("RANK", "OMPI_COMM_WORLD_RANK", "PMI_RANK", "PMIX_RANK", "SLURM_PROCID")
SIZE_VARS = ("WORLD_SIZE", "OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "SLURM_NTASKS")
LOCAL_VARS = ("LOCAL_RANK", "OMPI_COMM_WORLD_LOCAL_RANK", "MPI_LOCALRANKID", "SLURM_LOCALID")


def command_line():
    """The interpreter's whole command line (sys.argv is not complete yet in sitecustomize)."""
    argv = getattr(sys, "orig_argv", None)
    if argv:
        return list(argv)
    try:
        with open("/proc/self/cmdline", "rb") as f:
            return [a.decode("utf-8", "replace") for a in f.read().split(b"\0") if a]
    except OSError:
        return list(sys.argv)


def main_of(argv):
    """What the interpreter runs: ("-m", module), ("-c", code), ("file", path) or ("", "")."""
    i = 1
    while i < len(argv):
        a = argv[i]
        if a in ("-m", "-c"):
            return a, argv[i + 1] if i + 1 < len(argv) else ""
        if a.startswith("-m") or a.startswith("-c"):
            return a[:2], a[2:]
        if a in ("-W", "-X", "--check-hash-based-pycs"):
            i += 2
            continue
        if a.startswith("-") and a != "-":
            i += 1
            continue
        return "file", a
    return "", ""


def left_alone(argv):
    """A process debugpy attaches itself, or a launcher / tool named in SKIP."""
    kind, what = main_of(argv)
    if kind == "-m":
        name = what
    elif kind == "-c":
        return "pydevd" in what          # a subprocess debugpy started (python -c "...pydevd.settrace...")
    elif kind == "file":
        parts = what.replace("\\", "/").split("/")
        if "debugpy" in parts or parts[-1] == "pydevd.py":
            return True                  # debugpy's adapter, a subprocess debugpy started
        name = parts[-1]
        if name.endswith(".py"):
            name = name[:-3]
    else:
        return False
    skip = set(SKIP) | set(n for n in os.environ.get("REMOTE_DEV_DEBUG_SKIP", "").split(",") if n)
    return name.split(".")[0] == "debugpy" or name in skip


def first_of(names):
    for name in names:
        value = os.environ.get(name)
        if value not in (None, ""):
            try:
                return int(value)
            except ValueError:
                pass
    return None


def listen_address():
    import socket

    addr = os.environ.get("REMOTE_DEV_DEBUG_ADDR")
    if addr:
        return addr
    if socket.gethostname() == os.environ.get("REMOTE_DEV_DEBUG_HOST"):
        return "127.0.0.1"           # the agent's own host: reached through its 127.0.0.1
    try:
        return socket.gethostbyname(socket.gethostname())
    except OSError:
        return "127.0.0.1"


def write_endpoint(folder, info, suffix=".json"):
    """info as <host>-<pid><suffix> in folder (mode 0700, the file 0600), atomically."""
    import json

    try:
        os.mkdir(folder, 0o700)
    except FileExistsError:
        pass
    path = os.path.join(folder, "%s-%d%s" % (info["host"], info["pid"], suffix))
    tmp = path + ".tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(info, f)
    os.rename(tmp, path)


# -- Only the run's owner gets in ------------------------------------------------------
# debugpy listens on TCP without asking who connects (its adapter's client port, the port
# its debuggees connect to, the port listen() waits on for the adapter's endpoints), and
# on a shared machine any local user can connect to 127.0.0.1.  Every listener debugpy
# opens in a debugged process or in its adapter (both import this file) goes through
# create_server, which is wrapped here: a connection is handed to debugpy only when it comes
# from a socket of this host owned by this user (/proc/net/tcp names every socket's
# owner), or, from another host, when it opens with the run's secret
# (REMOTE_DEV_DEBUG_TOKEN, in the environment of the run's processes only).  Any other
# connection is closed before debugpy reads a byte of it.  A program of the same user that
# finds one of these ports (a ZMQ client reconnecting to a port it once knew, a scan) is
# closed when its first bytes are not what debugpy expects there (_check_first) instead of
# failing the debugger ("error retrieving adapter endpoints") or blocking the adapter.

TOKEN_WAIT = 10.0   # seconds a connection from another host has to send the secret
ENDPOINTS_WAIT = 30.0   # seconds the adapter has to start sending its endpoints (debugpy's own wait)
LISTENING = []          # while listen_quietly runs: the listener it opens takes the endpoints
FIRST_WAIT = 0.05       # seconds an owner's connection to the adapter may say nothing first
DAP_HEAD = b"Content-Length"


def _hex_address(host, port):
    """An address as /proc/net/tcp{,6} spell it (each 32-bit word in host byte order)."""
    import socket
    import struct

    if host.startswith("::ffff:") and "." in host:
        host = host[7:]
    if ":" in host:
        words = struct.unpack("=4I", socket.inet_pton(socket.AF_INET6, host))
        return "%08X%08X%08X%08X:%04X" % (words + (port,))
    return "%08X:%04X" % (struct.unpack("=I", socket.inet_aton(host))[0], port)


def socket_owner(peer, local):
    """The uid of the socket at peer connected to local when it is a socket of this host
    (this network namespace), else None."""
    try:
        want = (_hex_address(peer[0], peer[1]), _hex_address(local[0], local[1]))
    except (OSError, ValueError, IndexError):
        return None
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            f = open(table)
        except OSError:
            continue
        with f:
            next(f, None)
            for line in f:
                fields = line.split()
                if len(fields) > 7 and fields[1] == want[0] and fields[2] == want[1]:
                    return int(fields[7])
    return None


def _quiet_thread(target, args=()):
    import threading

    t = threading.Thread(target=target, args=args, name="remote_dev guard")
    t.daemon = True
    t.pydev_do_not_trace = True          # never shown nor traced by debugpy
    t.is_pydev_daemon_thread = True
    t.start()
    return t


class GuardedListener(object):
    """A listening socket whose accept() returns only connections of the run's owner (see
    above); everything else is the socket's own."""

    def __init__(self, sock, token, kind=""):
        import queue

        self._sock = sock
        self._token = token.encode() if token else b""
        self._kind = kind
        self._timeout = sock.gettimeout()
        self._ready = queue.Queue()
        self.refused = 0
        sock.settimeout(None)
        _quiet_thread(self._accepting)

    def _accepting(self):
        while True:
            try:
                conn, addr = self._sock.accept()
            except OSError:
                self._ready.put(None)
                return
            try:
                owner = socket_owner(conn.getpeername(), conn.getsockname())
            except OSError:
                owner = -1
            if owner == os.getuid() and self._kind:
                _quiet_thread(self._check_first, (conn, addr))
            elif owner == os.getuid():
                self._ready.put((conn, addr))
            elif owner is None and self._token:
                _quiet_thread(self._check_secret, (conn, addr))
            else:
                self._refuse(conn)

    def _refuse(self, conn):
        self.refused += 1
        try:
            conn.close()
        except OSError:
            pass

    def _check_secret(self, conn, addr):
        import hmac

        want = self._token + b"\n"
        got = b""
        try:
            conn.settimeout(TOKEN_WAIT)
            while len(got) < len(want):
                chunk = conn.recv(len(want) - len(got))
                if not chunk:
                    break
                got += chunk
            conn.settimeout(None)
        except OSError:
            got = b""
        if hmac.compare_digest(got, want):
            self._ready.put((conn, addr))
        else:
            self._refuse(conn)

    def _check_first(self, conn, addr):
        """An owner's connection on listen()'s endpoints port, or to the adapter, must open
        as the peer debugpy expects there does ({"client": ...}; DAP, or the run's secret,
        which debugpy skips as a header line), else it is closed before debugpy waits on
        it.  In the adapter a silent one (pydevd waits to be asked) gets in after FIRST_WAIT."""
        import select
        import socket

        endpoints = self._kind == "endpoints"
        openings = (b"{",) if endpoints else (DAP_HEAD, self._token + b"\n") if self._token else (DAP_HEAD,)
        try:
            if select.select([conn], [], [], ENDPOINTS_WAIT if endpoints else FIRST_WAIT)[0]:
                head = conn.recv(len(DAP_HEAD), socket.MSG_PEEK)
                if not any(head and head[:len(p)] == p[:len(head)] for p in openings):
                    raise ValueError("not what debugpy expects here")
            elif endpoints:
                raise ValueError("the adapter said nothing")
        except (OSError, ValueError):
            self._refuse(conn)
            return
        self._ready.put((conn, addr))

    def accept(self):
        import queue
        import socket

        try:
            item = self._ready.get(timeout=self._timeout)
        except queue.Empty:
            raise socket.timeout("timed out")
        if item is None:
            self._ready.put(None)
            raise OSError("the listener is closed")
        return item

    def settimeout(self, timeout):
        self._timeout = timeout

    def gettimeout(self):
        return self._timeout

    def close(self):
        import socket

        try:
            self._sock.shutdown(socket.SHUT_RDWR)   # wakes the thread in accept()
        except OSError:
            pass
        self._sock.close()

    def __getattr__(self, name):
        return getattr(self._sock, name)


def guard_listeners(token, adapter=False):
    """Every listener debugpy opens from now on in this process only accepts the run's owner."""
    from debugpy.common import sockets

    create = sockets.create_server
    if getattr(create, "remote_dev_guard", False):
        return

    def create_server(*args, **kwargs):
        kind = "endpoints" if LISTENING else "adapter" if adapter else ""
        return GuardedListener(create(*args, **kwargs), token, kind)
    create_server.remote_dev_guard = True
    sockets.create_server = create_server


def adapter_package(argv):
    """The debugpy folder when this process is debugpy's adapter (as debugpy.listen starts
    it: `python .../debugpy/adapter ...`, or `-m debugpy.adapter`), else None."""
    kind, what = main_of(argv)
    if kind == "file":
        parts = what.replace("\\", "/").rstrip("/").split("/")
        if len(parts) >= 2 and parts[-1] in ("adapter", "__main__.py") and "debugpy" in parts:
            i = len(parts) - 1 - parts[::-1].index("debugpy")
            return "/".join(parts[:i + 1]) or "/"
    if kind == "-m" and what == "debugpy.adapter":
        return ""
    return None


def guard_adapter(argv):
    """In debugpy's adapter of a debugged process: its listeners guarded like the debuggee's."""
    package = adapter_package(argv)
    if package is None:
        return
    if package:
        sys.path.insert(0, os.path.dirname(package))   # the adapter's own debugpy, as it imports it
    try:
        guard_listeners(os.environ.get("REMOTE_DEV_DEBUG_TOKEN", ""), adapter=True)
    finally:
        if package:
            del sys.path[0]


def guard_cli(argv):
    """`python -m debugpy --listen ...` (a container's debug run): its listeners guarded, its
    adapter started without a secret on its command line."""
    if main_of(argv) != ("-m", "debugpy"):
        return
    import debugpy

    guard_listeners(os.environ.get("REMOTE_DEV_DEBUG_TOKEN", ""))
    listen = debugpy.listen

    def quiet_listen(address, **kwargs):
        return listen_quietly(lambda a: listen(a, **kwargs), address)
    debugpy.listen = quiet_listen


def listen_quietly(listen, address):
    """debugpy.listen(address) without the secret it shares with its adapter (and, through
    pydevd, with every subprocess it debugs): debugpy puts it on their command lines, which
    `ps` shows to everyone.  Who may connect is decided by the guard above (the owner's
    sockets, or the run's secret from another host), so the adapter and pydevd go without."""
    import subprocess

    try:
        from debugpy.server import api
        settrace = api._settrace
    except (ImportError, AttributeError):   # another debugpy: its own way, guarded all the same
        return listen(address)
    real = subprocess.Popen

    class Popen(real):
        def __init__(self, args, *rest, **kwargs):
            args = list(args)
            if "--server-access-token" in args:
                i = args.index("--server-access-token")
                del args[i:i + 2]
            real.__init__(self, args, *rest, **kwargs)

    def quiet_settrace(*args, **kwargs):
        kwargs.pop("access_token", None)
        return settrace(*args, **kwargs)
    subprocess.Popen, api._settrace = Popen, quiet_settrace
    LISTENING.append(address)
    try:
        return listen(address)
    finally:
        LISTENING.pop()
        subprocess.Popen, api._settrace = real, settrace


def import_debugpy():
    try:
        import debugpy
    except ImportError:
        supplied = os.environ.get("REMOTE_DEV_DEBUGPY")
        if not supplied:
            raise
        sys.path.append(supplied)    # after the program's own paths: never shadows them
        import debugpy
    return debugpy


def stops_on_entry(rank):
    wanted = [w.strip() for w in os.environ.get("REMOTE_DEV_DEBUG_STOP", "").split(",") if w.strip()]
    return "all" in wanted or (str(rank if rank is not None else 0) in wanted)


def hide_this_file():
    """This file is the debugger's, not the program's: never traced, never shown (pydevd's
    internals: a debugpy without them debugs all the same)."""
    try:
        import debugpy._vendored.force_pydevd  # noqa: F401 - pydevd on the path, as debugpy.listen does
        from _pydevd_bundle import pydevd_dont_trace_files

        pydevd_dont_trace_files.DONT_TRACE[os.path.basename(__file__)] = pydevd_dont_trace_files.PYDEV_FILE
    except Exception:
        pass


def stop_at_first_line():
    """Stop at the next line of the user's code the main thread runs (what debugpy does for
    stopOnEntry of a launch): the program's first line."""
    try:
        from _pydevd_bundle.pydevd_api import PyDevdAPI

        PyDevdAPI().stop_on_entry()
    except Exception as e:
        sys.stderr.write("remote_dev: stop on entry is not possible with this debugpy: %s\n" % e)


def keep_listening(debugpy, address):
    """The program's own debugpy.listen() (many call it for each rank by hand) answers with
    the address already listening instead of failing: its wait_for_client() returns at once."""
    def listen(*args, **kwargs):
        return address
    debugpy.listen = listen


def stop_on_uncaught(debugpy):
    """The program's uncaught exception stops where it was raised, as under `python -m
    debugpy` (debugpy sees the main thread's top frame only when it runs the program itself):
    the exception goes to debugpy's uncaught-exception filters before Python prints it."""
    trigger = getattr(debugpy, "trigger_exception_handler", None)
    if trigger is None:       # an older debugpy (the program's own)
        return
    previous = sys.excepthook

    def excepthook(kind, value, tb):
        if not issubclass(kind, KeyboardInterrupt):   # a stop asked for: no stop in the debugger
            try:
                trigger((kind, value, tb))
            except Exception:
                pass
        previous(kind, value, tb)
    sys.excepthook = excepthook


def bound_the_wait(debugpy, rank):
    """A debugger that never comes (its Neovim gone, the user away) must not keep the process
    waiting forever, holding its node or GPU: after REMOTE_DEV_DEBUG_WAIT_MAX seconds
    (run.debug_wait) without a client it ends with one line saying so (exit code 124, as
    timeout(1)).  A client that attached once ends the bound."""
    import threading
    import time

    try:
        bound = float(os.environ.get("REMOTE_DEV_DEBUG_WAIT_MAX") or 0)
    except ValueError:
        return
    connected = getattr(debugpy, "is_client_connected", None)
    if bound <= 0 or connected is None:
        return

    def watch():
        deadline = time.monotonic() + bound
        while time.monotonic() < deadline:
            if connected():
                return
            time.sleep(0.2)
        if connected():
            return
        who = "rank %s, " % rank if rank is not None else ""
        os.write(2, ("remote_dev: no debugger attached to this process (%spid %d on %s) within run.debug_wait = %g s:"
                     " it ends (debug again with :RemoteDebug, or raise run.debug_wait in .remote-dev.toml)\n"
                     % (who, os.getpid(), os.environ.get("REMOTE_DEV_DEBUG_HOST") or "the remote", bound)).encode())
        os._exit(124)
    t = threading.Thread(target=watch, name="remote_dev debug_wait")
    t.daemon = True
    t.start()


def debug_this_process(folder):
    import socket

    debugpy = import_debugpy()
    rank = first_of(RANK_VARS)
    hide_this_file()
    try:
        guard_listeners(os.environ.get("REMOTE_DEV_DEBUG_TOKEN", ""))
    except Exception as e:   # a debugpy without the listeners we know: not debugged, never exposed
        raise RuntimeError("cannot restrict this debugpy's listeners to their owner (%s: %s)"
                           % (type(e).__name__, e))
    host, port = listen_quietly(debugpy.listen, (listen_address(), 0))
    keep_listening(debugpy, (host, port))
    write_endpoint(folder, {
        "host": socket.gethostname(), "addr": host, "port": port, "pid": os.getpid(), "ppid": os.getppid(),
        "rank": rank, "local_rank": first_of(LOCAL_VARS), "world_size": first_of(SIZE_VARS),
        "argv": command_line()[1:6],
    })
    stop_on_uncaught(debugpy)
    if os.environ.get("REMOTE_DEV_DEBUG_WAIT", "1") != "0":
        bound_the_wait(debugpy, rank)
        debugpy.wait_for_client()
        if stops_on_entry(rank):
            stop_at_first_line()


def chain():
    """Run the next sitecustomize on sys.path (the one this file hides), as site would
    (importlib.util is not imported for it: that alone would cost every process 3 ms)."""
    import importlib.machinery

    here = os.path.dirname(os.path.abspath(__file__))
    path = [p for p in sys.path if os.path.abspath(p or os.curdir) != here]
    spec = importlib.machinery.PathFinder.find_spec("sitecustomize", path)
    if spec is None or spec.loader is None:
        return
    module = type(sys)(spec.name)
    module.__spec__, module.__loader__, module.__file__ = spec, spec.loader, spec.origin
    sys.modules["sitecustomize"] = module
    spec.loader.exec_module(module)


def boot():
    try:
        chain()
    except Exception:
        import traceback

        sys.stderr.write("Error in sitecustomize; set PYTHONVERBOSE for traceback:\n")
        traceback.print_exc()
    folder = os.environ.get("REMOTE_DEV_DEBUG")
    guard_only = os.environ.get("REMOTE_DEV_DEBUG_GUARD")   # a container's `python -m debugpy --listen`
    if not folder and not guard_only:
        return
    argv = command_line()
    if left_alone(argv):
        try:
            guard_adapter(argv)
            if guard_only:
                guard_cli(argv)
        except Exception as e:   # a debugpy nobody may reach but its owner, or none
            sys.stderr.write("remote_dev: debugpy (pid %d) cannot be restricted to its owner: %s: %s\n"
                             % (os.getpid(), type(e).__name__, e))
            os._exit(1)
        return
    if not folder:
        return
    try:
        debug_this_process(folder)
    except Exception as e:  # the program runs on, without a debugger: said at once
        sys.stderr.write("remote_dev: debugging this process (pid %d) failed: %s: %s\n"
                         % (os.getpid(), type(e).__name__, e))
        report_failure(folder, "%s: %s" % (type(e).__name__, e))


def report_failure(folder, error):
    """Tell the engine at once that this process runs without its debugger (a file beside
    the endpoints, <host>-<pid>.failed)."""
    import socket

    try:
        write_endpoint(folder, {"host": socket.gethostname(), "pid": os.getpid(), "rank": first_of(RANK_VARS),
                                "error": error, "argv": command_line()[1:6]}, ".failed")
    except Exception:
        pass


boot()
