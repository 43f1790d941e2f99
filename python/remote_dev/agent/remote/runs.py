"""Runs: detached remote processes, one folder each under <cache>/runs/<id>:

    spec.json      what to run (id, root, argv | cmd, env, meta, slurm, stop_commands)
    output.log     the program's stdout and stderr
    started.json   the supervisor's pid and start time, the program's pid (or the Slurm job)
    stop.json      a stop was asked for
    exit.json      exit code and time, once it ended
    step.json      a job step in a held allocation: its job, step and node (alloc.py)

The folder is the record: any agent (a reconnect, another client) reads a run's state
from it; nothing about a run lives only in an agent's memory.
"""

import os
import shutil
import subprocess
import time

from .. import protocol as P
from . import procs, slurm, supervisor
from .common import AgentError, Later, cache_dir, expand_root, private_dir, private_file, read_json, write_json

# Polling of a run's folder (run_start, run_read): from POLL_FIRST growing to
# POLL_MAX_YOUNG while the run is younger than POLL_YOUNG_FOR seconds, to POLL_MAX after.
POLL_FIRST = 0.0005
POLL_MAX_YOUNG = 0.005
POLL_YOUNG_FOR = 2.0
POLL_MAX = 0.05
START_TIMEOUT = 10.0   # a run whose supervisor has not reported by then is lost


def runs_dir():
    return os.path.join(cache_dir(), P.RUNS_DIR)


def run_dir(run_id, must_exist=True):
    d = os.path.join(runs_dir(), run_id)
    if must_exist and not os.path.isdir(d):
        raise AgentError("run", "no run %r on this host" % run_id)
    return d


def _read_json_or_none(path):
    try:
        return read_json(path)
    except (OSError, ValueError):
        return None


def run_info(d):
    """What a client sees of the run in folder d: id, root, cmd, created, meta, log,
    size, stopped, state (protocol run states), and as known: supervisor, pid, started,
    job, code, ended, error, detail (Slurm)."""
    spec = read_json(os.path.join(d, "spec.json"))
    info = {
        "id": spec["id"], "root": spec["root"], "cmd": spec.get("cmd") or " ".join(spec.get("argv") or []),
        "created": spec.get("created"), "meta": spec.get("meta") or {},
        "log": os.path.join(d, "output.log"),
    }
    try:
        info["size"] = os.path.getsize(os.path.join(d, "output.log"))
    except OSError:
        info["size"] = 0
    info["stopped"] = os.path.exists(os.path.join(d, "stop.json"))
    ex = _read_json_or_none(os.path.join(d, "exit.json"))
    started = _read_json_or_none(os.path.join(d, "started.json"))
    if started:
        info["supervisor"] = started.get("supervisor")
        info["pid"] = started.get("pid")
        info["started"] = started["time"]
        info["job"] = started.get("job")
    step = _read_json_or_none(os.path.join(d, P.STEP_FILE))
    if step:  # a job step in a held allocation (srun --jobid): its ids and node
        info["step"] = step
    if ex is None and started and started.get("job"):
        slurm.update_state(info, spec, d)
    elif ex is not None:
        info.update(state=P.EXITED, code=ex["code"], ended=ex["time"], error=ex.get("error"))
        if started and started.get("job"):
            info["detail"] = ex.get("slurm") or ("CANCELLED" if info["stopped"] else
                                                 ("COMPLETED" if ex["code"] == 0 else "FAILED"))
    elif started is None:
        info["state"] = P.STARTING if time.time() - spec.get("created", 0) < START_TIMEOUT else P.LOST
    elif procs.pid_alive(started.get("supervisor"), started.get("start_time")):
        info["state"] = P.RUNNING
    else:
        info["state"] = P.LOST
    if info["state"] == P.EXITED and info["stopped"]:
        info["state"] = P.STOPPED
    if step and not info.get("detail"):
        info["detail"] = "step %s.%s on %s" % (step.get("job"), step.get("step"), step.get("node"))
    return info


def run_start(spec, first=None):
    """Start a detached run.  spec: {id, root, argv | cmd, env, meta, slurm,
    stop_commands}.  Returns its info once the program started (or failed to).  first:
    [max_bytes, wait]: after the answer, the run's first output (run_read from offset 0,
    a long poll of wait seconds) goes to the client unasked, as a RUN_OUTPUT notification."""
    info = start(spec)
    if not first:
        return info
    run_id = spec["id"]
    return Later(info, P.RUN_OUTPUT, run_id, lambda: run_read(run_id, 0, first[0], first[1]))


def start(spec):
    run_id = spec["id"]
    if "/" in run_id or run_id.startswith("."):
        raise AgentError("run", "bad run id %r" % run_id)
    d = run_dir(run_id, must_exist=False)
    if os.path.exists(d):
        raise AgentError("run", "run %s exists already" % run_id)
    private_dir(d)
    spec = dict(spec)
    spec["root"] = expand_root(spec["root"])
    spec["created"] = time.time()
    write_json(os.path.join(d, "spec.json"), spec)
    private_file(os.path.join(d, "output.log"))
    if spec.get("slurm") is not None:
        return slurm.submit(d, spec, run_info)
    supervisor.start_supervisor(d)
    try:
        deadline = time.time() + START_TIMEOUT
        delay = POLL_FIRST
        while time.time() < deadline:
            info = run_info(d)
            if info["state"] != P.STARTING:
                return info
            time.sleep(delay)
            delay = min(delay * 1.5, POLL_MAX_YOUNG)
        return run_info(d)
    finally:
        supervisor.spare_later()


def run_info_of(run_id):
    return run_info(run_dir(run_id))


def run_list(root):
    """The info of every run on this host, of the project at root if given."""
    root = expand_root(root) if root else None
    out = []
    try:
        names = os.listdir(runs_dir())
    except FileNotFoundError:
        return out
    for name in sorted(names):
        try:
            info = run_info(os.path.join(runs_dir(), name))
        except (OSError, ValueError, KeyError):   # not a run folder (a damaged or foreign one)
            continue
        if root is None or info.get("root") == root:
            out.append(info)
    return out


def run_delete(run_id):
    """Delete an ended run's folder (its output with it); a live run is refused."""
    d = run_dir(run_id)
    info = run_info(d)
    if P.is_live(info["state"]):
        raise AgentError("run", "run %s is %s: stop it first (:RemoteStop %s)" % (run_id, info["state"], run_id))
    shutil.rmtree(d, ignore_errors=True)
    return run_id


def run_prune(root, target, keep):
    """Delete the folders of the ended runs of the project at root on target but the
    newest keep; live runs are never touched.  The ids deleted."""
    ended = [info for info in run_list(root)
             if (info.get("meta") or {}).get("target") == target and not P.is_live(info["state"])]
    ended.sort(key=lambda info: (info.get("created") or 0, info["id"]))
    gone = []
    for info in ended[:max(len(ended) - int(keep), 0)]:
        shutil.rmtree(run_dir(info["id"], must_exist=False), ignore_errors=True)
        gone.append(info["id"])
    return gone


def run_read(run_id, offset, max_bytes, wait, min_bytes=1):
    """Output of a run from a byte offset.  With wait > 0 this is a long poll: it
    returns as soon as there is output (at least min_bytes of it, or max_bytes if
    less), the run ends, or wait seconds pass.
    Returns {data, offset (after data), size, info, newlines}."""
    d = run_dir(run_id, must_exist=False)
    log = os.path.join(d, "output.log")
    deadline = time.time() + (wait or 0)
    need = offset + max(1, min(min_bytes or 1, max_bytes))
    delay = POLL_FIRST
    while True:
        info = run_info(d)
        size = os.path.getsize(log)
        now = time.time()
        if size >= need or not P.is_live(info["state"]) or now >= deadline:
            break
        time.sleep(min(delay, deadline - now))
        # a young run is polled tightly (its first output shows at once), then less
        young = now - (info.get("created") or 0) < POLL_YOUNG_FOR
        delay = min(delay * 1.5, POLL_MAX_YOUNG if young else POLL_MAX)
    data = b""
    if size > offset:
        with open(log, "rb") as f:
            f.seek(offset)
            data = f.read(min(max_bytes, size - offset))
    # newlines counted here, off the client's (single) thread: it decides from them which
    # lines of fast output it shows
    return {"data": data, "offset": offset + len(data), "size": size, "info": info,
            "newlines": data.count(b"\n")}


def run_stop(run_id, grace):
    """Stop a run: its stop_commands (a container's `stop`), scancel for a Slurm job, SIGINT
    to the tasks of its job steps, then SIGINT, SIGTERM, SIGKILL (``grace`` seconds apart)
    to every process of it."""
    return stop_in(run_dir(run_id), grace)


def stop_in(d, grace):
    """Stop the run (or service) whose folder is d; its info once it ended (with
    already_ended when it had ended before)."""
    info = run_info(d)
    if not P.is_live(info["state"]):
        return dict(info, already_ended=True)
    write_json(os.path.join(d, "stop.json"), {"time": time.time()})
    spec = read_json(os.path.join(d, "spec.json"))
    for argv in spec.get("stop_commands") or []:
        try:
            subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL, timeout=60)
        except (OSError, subprocess.TimeoutExpired):
            pass
    if info.get("job"):
        slurm.cancel(info["job"], spec)
    procs.interrupt_steps(spec["id"], info.get("supervisor"))
    procs.kill_run_processes(spec["id"], info.get("supervisor"), grace)
    deadline = time.time() + 10
    while P.is_live(run_info(d)["state"]) and time.time() < deadline:
        time.sleep(0.02)
    return run_info(d)


def run_listening(run_id, port, timeout, own_netns_only=False):
    """Wait until a process of the run listens on TCP port (seen from its own network
    namespace, so a container counts), without connecting to it.  With own_netns_only,
    only processes in another network namespace than the agent's count (a container
    with a published port: the engine holds the host side of the port itself)."""
    d = run_dir(run_id, must_exist=False)
    deadline = time.time() + timeout
    my_netns = procs.net_namespace()
    while time.time() < deadline:
        info = run_info(d)
        for pid in procs.run_processes(run_id, info.get("supervisor")):
            if own_netns_only:
                netns = procs.net_namespace(pid)
                if netns is None or netns == my_netns:
                    continue
            if procs.listens_on(pid, port):
                return True
        if not P.is_live(info["state"]):
            return False
        time.sleep(0.05)
    return False


def run_endpoints(run_id, known, timeout):
    """The debug endpoints the run's processes wrote into its folder (debug/<host>-<pid>.json,
    see debug_boot.py; <host>-<pid>.failed for a process that could not start its debugger)
    that are not in known (their names): a long poll answering as soon as there is one, the
    run ends, or timeout passes.  {"found": [[name, endpoint], ...], "live"}"""
    d = run_dir(run_id, must_exist=False)
    folder = os.path.join(d, P.ENDPOINTS_DIR)
    known = set(known or ())
    deadline = time.time() + timeout
    while True:
        try:
            names = sorted(n for n in os.listdir(folder) if n.endswith((".json", ".failed")) and n not in known)
        except OSError:
            names = []
        found = []
        for name in names:
            endpoint = _read_json_or_none(os.path.join(folder, name))
            if endpoint is not None:
                found.append([name, endpoint])
        live = P.is_live(run_info(d)["state"])
        if found or not live or time.time() >= deadline:
            return {"found": found, "live": live}
        time.sleep(0.05)
