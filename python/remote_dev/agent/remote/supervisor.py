"""The supervisor of a run: ``python3 -S agent.pyz supervise DIR`` becomes a session
leader and child subreaper, starts the run's command with its output going straight to
DIR/output.log, and records the exit status in DIR/exit.json.  Processes the command left
behind go with the run.

After a run starts, the agent keeps one spare supervisor started ahead
(``supervise-spare``) for SPARE_IDLE seconds: its interpreter is up when the next run
starts soon after (a rerun, a debug restart), so that program starts at once; it reads its
run folder from stdin.  Unused, the agent closes its stdin and it exits: an idle session
keeps no process on the remote but the agent.  A supervisor imports this module, procs and common only (no msgpack, no
server): it starts fast."""

import os
import signal
import subprocess
import sys
import threading
import time

from .. import protocol as P
from . import procs
from .common import read_json, write_json

SPARE_DELAY = 0.3     # seconds after a run start before the next spare supervisor starts
SPARE_IDLE = 15.0     # seconds an unused spare supervisor is kept
SPARE_LOCK = threading.Lock()
SPARES = []           # at most one idle supervisor (Popen) waiting on its stdin for a run folder
LEFTOVER_GRACE = 3.0  # seconds leftovers get after SIGTERM


# --------------------------------------------------------------------------- agent side


def supervisor_popen(args, stdin):
    """``python -S <agent zip> args...``: -S (no site) and the zip with bytecode for this
    interpreter (compiled.py) make the fastest start."""
    from .compiled import launch_zip  # the agent's side only: a supervisor never needs it

    proc = subprocess.Popen(
        [sys.executable, "-S", launch_zip()] + args,
        stdin=stdin, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        close_fds=True, start_new_session=True, cwd="/",
    )
    threading.Thread(target=proc.wait, daemon=True).start()  # reap when it exits
    return proc


def start_supervisor(d):
    """Start the supervisor of run folder d: hand d to the spare supervisor started
    ahead (its interpreter is up: the program starts at once), or start one."""
    with SPARE_LOCK:
        proc = SPARES.pop() if SPARES else None
    if proc is not None:
        try:
            proc.stdin.write(os.fsencode(d) + b"\n")
            proc.stdin.close()
            return
        except (OSError, ValueError):  # it is gone: start one the usual way
            pass
    supervisor_popen(["supervise", d], subprocess.DEVNULL)


def spare_later():
    """Start the next spare supervisor a moment after a run start (not competing with
    the program's own start for the CPU)."""
    t = threading.Timer(SPARE_DELAY, make_spare)
    t.daemon = True
    t.start()


def make_spare():
    with SPARE_LOCK:
        if SPARES:
            return
    try:
        proc = supervisor_popen(["supervise-spare"], subprocess.PIPE)
    except OSError:
        return
    with SPARE_LOCK:
        if not SPARES:
            SPARES.append(proc)
            t = threading.Timer(SPARE_IDLE, retire_spare, (proc,))
            t.daemon = True
            t.start()
            return
    proc.stdin.close()  # another one won: this one reads EOF and exits


def retire_spare(proc):
    """The spare proc, still unused after SPARE_IDLE seconds, exits (EOF on its stdin).
    Under the lock: a spare is either handed a run folder or retired, never both."""
    with SPARE_LOCK:
        if proc not in SPARES:
            return
        SPARES.remove(proc)
    try:
        proc.stdin.close()
    except OSError:
        pass


# --------------------------------------------------------------------------- supervisor side


def _ignore(signum, frame):
    pass


def shield_signals():
    """The supervisor outlives SIGHUP and SIGINT.  A handler that does nothing rather than
    SIG_IGN: handlers fall back to the default at exec, so the program gets SIGINT and
    SIGHUP as usual without a preexec_fn (which would cost the fast spawn path)."""
    signal.signal(signal.SIGHUP, _ignore)
    signal.signal(signal.SIGINT, _ignore)


def set_subreaper():
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER
    except Exception:  # noqa: BLE001 - best effort; the env marker still finds orphans
        pass


def supervise_spare():
    """An idle supervisor: ready (signals, subreaper) before it knows its run; reads one
    run folder from stdin and supervises it; exits at EOF (the agent went away)."""
    shield_signals()
    set_subreaper()
    line = sys.stdin.buffer.readline()
    if not line.endswith(b"\n"):
        return
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    supervise(os.fsdecode(line[:-1]), ready=True)


def supervise(d, ready=False):
    """Run one command detached, output to d/output.log, exit status to d/exit.json.
    ready: signals and the subreaper are set already (a spare supervisor)."""
    if not ready:
        shield_signals()
        set_subreaper()
    spec = read_json(os.path.join(d, "spec.json"))
    child = spawn(d, spec)
    if child is None:
        return
    code = wait_for(child.pid)
    # Leftovers (daemonised children) go with the run: no orphans on the GPU.
    procs.kill_run_processes(spec["id"], os.getpid(), LEFTOVER_GRACE,
                             signals=(signal.SIGTERM, signal.SIGKILL), poll=reap_all)
    reap_all()
    write_json(os.path.join(d, "exit.json"), {"code": code, "time": time.time()})


def spawn(d, spec):
    """Start the run's command (output to d/output.log) and record it in d/started.json;
    None (exit recorded) when it cannot start."""
    env = dict(os.environ)
    env.update(spec.get("env") or {})
    env[P.RUN_ID_ENV] = spec["id"]
    env.setdefault("PYTHONUNBUFFERED", "1")
    argv = spec.get("argv") or ["/bin/sh", "-c", spec["cmd"]]
    log = os.open(os.path.join(d, "output.log"), os.O_WRONLY | os.O_APPEND)
    try:
        child = subprocess.Popen(
            argv, cwd=spec["root"], env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
            close_fds=True, restore_signals=True,
        )
    except OSError as e:
        os.write(log, ("remote_dev: cannot start %s: %s\n" % (argv[0], e.strerror)).encode())
        os.close(log)
        write_json(os.path.join(d, "started.json"), {"supervisor": os.getpid(), "time": time.time()})
        write_json(os.path.join(d, "exit.json"), {"code": 127, "time": time.time(), "error": str(e)})
        return None
    write_json(os.path.join(d, "started.json"), {
        "supervisor": os.getpid(), "start_time": procs.start_time(), "pid": child.pid, "time": time.time(),
    })
    os.close(log)
    return child


def wait_for(pid):
    """Wait for child pid (reaping any orphan that exits meanwhile); its exit code as a
    shell reports it (128 + signal when killed), -1 if it was never seen."""
    code = None
    while code is None:
        try:
            got, status = os.wait()
        except ChildProcessError:
            break
        except InterruptedError:
            continue
        if got == pid:
            code = os.waitstatus_to_exitcode(status) if hasattr(os, "waitstatus_to_exitcode") else (  # novermin
                os.WEXITSTATUS(status) if os.WIFEXITED(status) else -os.WTERMSIG(status))
    if code is None:
        code = -1
    if code < 0:
        code = 128 - code  # killed by a signal: as a shell reports it
    return code


def reap_all():
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
