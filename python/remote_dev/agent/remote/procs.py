"""Processes, read from /proc (Linux; stdlib only, so no psutil): the one parser of
/proc/PID/stat, the processes of a run, stopping them, listening sockets."""

import os
import signal
import time

from .. import protocol as P

# fields of /proc/PID/stat after the command name, counted from the state (field 3)
STATE, PPID, STARTTIME = 0, 1, 19


def stat_fields(pid="self"):
    """The fields of /proc/PID/stat after ``(comm)`` (comm may hold spaces and parens),
    or None when there is no such process."""
    try:
        with open("/proc/%s/stat" % pid) as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return fields if len(fields) > STARTTIME else None


def start_time(pid="self"):
    """The process's start time (clock ticks since boot, as text): with the pid, it names
    one process even after the pid is reused."""
    fields = stat_fields(pid)
    return fields[STARTTIME] if fields else None


def pid_alive(pid, start=None):
    """pid is a live (not zombie) process, the one that started at ``start`` if given."""
    if not pid:
        return False
    fields = stat_fields(pid)
    if fields is None or fields[STATE] == "Z":
        return False
    return start is None or fields[STARTTIME] == str(start)


def proc_table():
    """{pid: ppid} of every live (not zombie) process visible in /proc."""
    table = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        fields = stat_fields(name)
        if fields is None or fields[STATE] == "Z":
            continue
        table[int(name)] = int(fields[PPID])
    return table


def run_processes(run_id, supervisor):
    """Every live process of a run except the supervisor: its descendants (orphans come
    back to it as the subreaper) and whatever carries REMOTE_DEV_RUN_ID=run_id."""
    table = proc_table()
    found = set()
    if supervisor:
        children = {}
        for pid, ppid in table.items():
            children.setdefault(ppid, []).append(pid)
        todo = list(children.get(supervisor, []))
        while todo:
            pid = todo.pop()
            if pid in found:
                continue
            found.add(pid)
            todo.extend(children.get(pid, []))
    skip = found | {supervisor}
    return found | marked_processes("%s=%s" % (P.RUN_ID_ENV, run_id), table, skip)


def marked_processes(marker, table=None, skip=()):
    """Live processes (but ours and those in skip) whose environment holds the variable
    assignment ``marker`` (e.g. ``REMOTE_DEV_RUN_ID=<id>``)."""
    want = marker.encode()
    found = set()
    for pid in table if table is not None else proc_table():
        if pid in skip or pid == os.getpid():
            continue
        try:
            with open("/proc/%d/environ" % pid, "rb") as f:
                env = f.read()
        except OSError:
            continue
        if want in env.split(b"\0"):
            found.add(pid)
    return found


def comm(pid):
    """The process's command name (/proc/PID/comm), "" when it is gone."""
    try:
        with open("/proc/%d/comm" % pid) as f:
            return f.read().strip()
    except OSError:
        return ""


STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGKILL)
KILL_WAIT = 5.0   # seconds to wait for SIGKILLed processes to go


def kill_run_processes(run_id, supervisor, grace, signals=STOP_SIGNALS, poll=None, find=None):
    """Send each of ``signals`` in turn to every process of the run, waiting up to
    ``grace`` seconds after each (KILL_WAIT after SIGKILL) for them to go.  poll: called
    while waiting (the supervisor reaps its children there); find: the processes, when
    they are more than run_processes finds (a shell's panes)."""
    find = find or (lambda: run_processes(run_id, supervisor))
    for sig in signals:
        pids = find()
        if not pids:
            return
        for pid in pids:
            try:
                os.kill(pid, sig)
            except OSError:
                pass
        deadline = time.time() + (grace if sig != signal.SIGKILL else KILL_WAIT)
        while time.time() < deadline:
            if poll is not None:
                poll()
            if not find():
                return
            time.sleep(0.05)


def net_namespace(pid="self"):
    try:
        return os.readlink("/proc/%s/ns/net" % pid)
    except OSError:
        return None


def listens_on(pid, port):
    """A socket listening on TCP port in pid's network namespace (a container's own
    namespace counts), read from /proc/PID/net/tcp{,6}."""
    want = ":%04X" % port
    for table in ("tcp", "tcp6"):
        try:
            with open("/proc/%d/net/%s" % (pid, table)) as f:
                next(f)
                for line in f:
                    fields = line.split()
                    if fields[1].endswith(want) and fields[3] == "0A":  # 0A: LISTEN
                        return True
        except (OSError, StopIteration):
            continue
    return False


def interrupt_steps(run_id, supervisor):
    """SIGINT to the tasks of a run's job steps: srun forwards SIGINT to its tasks only
    when it gets two within a second (one alone makes it print the tasks' state).
    True when the run has srun clients."""
    pids = [p for p in run_processes(run_id, supervisor) if comm(p) == "srun"]
    for attempt in (0, 1):
        for pid in pids:
            try:
                os.kill(pid, signal.SIGINT)
            except OSError:
                pass
        if pids and attempt == 0:
            time.sleep(0.1)
    return bool(pids)
