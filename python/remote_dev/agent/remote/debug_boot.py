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


def write_endpoint(folder, info):
    import json

    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, "%s-%d.json" % (info["host"], info["pid"]))
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(info, f)
    os.rename(tmp, path)


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
    host, port = debugpy.listen((listen_address(), 0))
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
    if not folder or left_alone(command_line()):
        return
    try:
        debug_this_process(folder)
    except Exception as e:  # the program runs on, without a debugger
        sys.stderr.write("remote_dev: debugging this process (pid %d) failed: %s: %s\n"
                         % (os.getpid(), type(e).__name__, e))


boot()
