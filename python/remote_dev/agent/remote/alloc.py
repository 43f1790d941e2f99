"""Allocations held for a project's target (:RemoteAlloc): a holder batch job whose
resources runs, shells and kernels use as job steps (``srun --jobid=JOB --overlap``).

The holder is submitted with sbatch (its batch step only sleeps), not made with
``salloc --no-shell``: sbatch answers with the job id at once and nothing of ours waits on
the login node while the job is queued (salloc has to stay alive until the grant, and
killing it then withdraws the request), and the queue state comes from squeue like any
job's.  The allocation ends with the holder, at ``alloc_stop`` (scancel) or at its own time
limit; Slurm then ends every step on the nodes, and the srun clients of the steps on this
node exit with them.  Every process remote_dev starts for a step carries
REMOTE_DEV_ALLOC=<name>:<job>, so a stop also finds what did not go by itself.

Its folder, <cache>/allocs/<name>/, is a run folder (runs.py) whose job is the holder, plus
node.json (nodes, tasks, the first node's address): a new agent (a new Neovim) finds the
allocation there.
"""

import os
import signal
import socket
import subprocess
import time

from .. import protocol as P
from . import procs, runs, services, slurm
from .common import AgentError, cache_dir, expand_root, private_file, read_json, renew_dir, write_json

# The holder's batch step: one process, gone with the job (a shell loop around sleep could
# outlive the job's end by a sleep whose parent died first).  ~68 years: its time limit ends it.
HOLD = "exec sleep 2147483647"
MARKER = P.ALLOC_ENV
NODE_EVERY = 60.0     # seconds a node record is trusted (a changed time limit shows after)
STEPS_GO = 15.0       # seconds the srun clients get to exit after the scancel
QUEUE_GO = 30.0       # seconds to wait for the job to leave the queue


def allocs_dir():
    return os.path.join(cache_dir(), P.ALLOCS_DIR)


def alloc_dir(name):
    if not name or "/" in name or name.startswith("."):
        raise AgentError("alloc", "bad allocation name %r" % (name,))
    return os.path.join(allocs_dir(), name)


def _info(d, fresh=False):
    """The run info of allocation folder d (None when there is none); fresh: ask Slurm
    now rather than take what another request saw within slurm.POLL seconds."""
    if fresh:
        try:
            slurm.CACHE.pop(str(read_json(os.path.join(d, "started.json")).get("job")), None)
        except (OSError, ValueError):
            pass
    try:
        return runs.run_info(d)
    except (OSError, ValueError, KeyError):
        return None


def alloc_start(spec):
    """Hold an allocation unless one is held: spec {name, root, args, env, meta}.  Its
    info (alloc_info), found = True when it was held already; with ``error`` (sbatch's
    message) and an ended state when sbatch refused the request."""
    name = spec["name"]
    d = alloc_dir(name)
    info = _info(d, fresh=True)
    if info is not None and P.is_live(info["state"]):
        info = alloc_info(name)
        info["found"] = True
        return info
    if not renew_dir(d):  # another client holds it this instant
        info = alloc_info(name) or {"state": P.PENDING, "name": name}
        info["found"] = True
        return info
    root = expand_root(spec["root"])
    os.makedirs(root, exist_ok=True)
    record = {"id": name, "root": root, "cmd": HOLD, "env": spec.get("env") or {},
              "meta": spec.get("meta") or {}, "created": time.time(),
              "slurm": {"args": list(spec.get("args") or []), "job_name": name}}
    write_json(os.path.join(d, "spec.json"), record)
    private_file(os.path.join(d, "output.log"))
    slurm.submit(d, record, runs.run_info)
    info = alloc_info(name)
    info["found"] = False
    return info


def alloc_info(name, fresh=False):
    """The allocation's run info (state, detail, job, error...) plus name, args,
    job_state (Slurm's), reason, time_left (squeue's, while it runs) and, once it runs,
    nodes, ntasks, nnodes and addr (the first node's address); None when there is none.
    fresh: ask Slurm now (a command of the user's), not within slurm.POLL seconds."""
    d = alloc_dir(name)
    info = _info(d, fresh)
    if info is None:
        return None
    spec = read_json(os.path.join(d, "spec.json"))
    info["name"] = name
    info["args"] = spec["slurm"].get("args") or []
    job = info.get("job")
    if job and info["state"] in (P.PENDING, P.RUNNING):
        f = slurm.fields(str(job), slurm.run_env(spec))
        info.update(job_state=f.get("JobState", ""), reason=f.get("Reason", ""), time_left=f.get("TimeLeft", ""))
        if f.get("JobState") == "RUNNING":
            info.update(node_record(d, str(job), spec))
    return info


def node_record(d, job, spec):
    """{nodes, ntasks, nnodes, addr} of a running job, kept in d/node.json."""
    path = os.path.join(d, "node.json")
    try:
        rec = read_json(path)
        if rec.get("job") == job and time.time() - rec.get("time", 0) < NODE_EVERY:
            return rec
    except (OSError, ValueError):
        pass
    env = slurm.run_env(spec)
    fields = scontrol(["show", "job", "-o", job], env)
    nodelist = fields.get("NodeList", "")
    nodes = _lines(["scontrol", "show", "hostnames", nodelist], env) if nodelist else []
    node = scontrol(["show", "node", "-o", nodes[0]], env) if nodes else {}
    rec = {"job": job, "time": time.time(), "nodes": nodes, "ntasks": _int(fields.get("NumTasks"), 1),
           "nnodes": _int(fields.get("NumNodes"), len(nodes) or 1), "addr": _address(node.get("NodeAddr") or
                                                                                      (nodes[0] if nodes else ""))}
    write_json(path, rec)
    return rec


def _int(text, default):
    try:
        return int(str(text).split("-")[0])
    except (TypeError, ValueError):
        return default


def _address(name):
    """The node's address as this host reaches it (what a kernel on it binds, and where
    the forwards go): NodeAddr, resolved here when it is a name."""
    if not name:
        return None
    try:
        return socket.gethostbyname(name)
    except OSError:
        return name


def _lines(argv, env):
    try:
        p = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                           env=env, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return []
    return [ln.strip() for ln in p.stdout.decode(errors="replace").splitlines() if ln.strip()]


def scontrol(args, env):
    """``scontrol ARGS`` (one -o record) as {Key: Value}."""
    out = {}
    for line in _lines(["scontrol"] + list(args), env)[:1]:
        for word in line.split():
            if "=" in word:
                k, v = word.split("=", 1)
                out.setdefault(k, v)
    return out


def alloc_stop(name, grace):
    """End the allocation: scancel the holder (Slurm ends every step on the nodes), wait
    for the srun clients of its steps here to exit (then signal what is left), and for
    the job to leave the queue.  Its info after, None when there was none."""
    d = alloc_dir(name)
    info = _info(d, fresh=True)
    if info is None:
        return None
    spec = read_json(os.path.join(d, "spec.json"))
    job = info.get("job")
    if P.is_live(info["state"]):
        write_json(os.path.join(d, "stop.json"), {"time": time.time()})
        if job:
            slurm.cancel(job, spec)
    if job:
        end_step_clients(name, str(job), grace)
        wait_left_queue(str(job), slurm.run_env(spec))
    slurm.CACHE.pop(str(job), None)
    return alloc_info(name)


def end_step_clients(name, job, grace):
    """Wait for the processes of the allocation's steps on this host to exit (they do as
    Slurm ends the steps), then SIGTERM and SIGKILL what is left."""
    marker = "%s=%s:%s" % (MARKER, name, job)
    deadline = time.time() + STEPS_GO
    while procs.marked_processes(marker) and time.time() < deadline:
        time.sleep(0.1)
    procs.kill_run_processes(None, None, grace, signals=(signal.SIGTERM, signal.SIGKILL),
                             find=lambda: procs.marked_processes(marker))


def wait_left_queue(job, env):
    deadline = time.time() + QUEUE_GO
    while time.time() < deadline:
        try:
            p = subprocess.run(["squeue", "-h", "-j", job, "-o", "%T"], stdin=subprocess.DEVNULL,
                               stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env, timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            return
        if p.returncode != 0 or not p.stdout.strip():
            return
        time.sleep(0.2)


def step_listening(name, host, port, timeout):
    """Wait until service ``name``, a job step (its processes are on a compute node, not
    here), accepts connections at host:port; False when it ends first or timeout passes."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        info = services.service_info(name)
        if info is None or not P.is_live(info["state"]):
            return False
        try:
            socket.create_connection((host, int(port)), timeout=1).close()
            return True
        except OSError:
            time.sleep(0.1)
    return False
