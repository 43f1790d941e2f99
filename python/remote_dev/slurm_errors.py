"""Slurm refusing a request, in one line that names the argument at fault.

sbatch (and srun) answer bad input with messages such as ``sbatch: error: invalid
partition specified: gpux`` / ``Batch job submission failed: Invalid partition name
specified``; :RemoteAlloc and a failed :RemoteRun on the Slurm runner turn them into
``gpubox: sbatch: unknown partition 'gpux' (--partition=gpux); sinfo lists the partitions``.
"""

from __future__ import annotations

import re

# option -> its spellings (short, long) on the sbatch/salloc command line
OPTIONS = {
    "partition": ("-p", "--partition"),
    "time": ("-t", "--time"),
    "gres": ("--gres", "--gpus", "-G", "--gpus-per-node", "--gpus-per-task"),
    "account": ("-A", "--account"),
    "qos": ("-q", "--qos"),
    "mem": ("--mem", "--mem-per-cpu", "--mem-per-gpu"),
    "constraint": ("-C", "--constraint"),
    "reservation": ("--reservation",),
}

# (pattern of sbatch's error output, option it is about, the problem; {value}: the text the
# pattern captured, {arg}: the argument as given)
RULES: list[tuple[re.Pattern[str], str | None, str]] = [
    (re.compile(r"invalid partition specified: ?(?P<value>\S*)|Invalid partition name specified", re.I),
     "partition", "unknown partition {value} ({arg}); `sinfo -s` lists the partitions"),
    (re.compile(r"Invalid --time specification|Invalid time limit specification", re.I),
     "time", "invalid time limit ({arg}); use minutes, MM:SS, HH:MM:SS or D-HH:MM:SS"),
    (re.compile(r"Requested time limit is invalid|time limit exceeds", re.I),
     "time", "time limit over the partition's limit ({arg}); `sinfo -o '%P %l'` shows the limits"),
    (re.compile(r"Invalid generic resource \(gres\) specification|Invalid GRES", re.I),
     "gres", "no such generic resource on the cluster ({arg}); `sinfo -o '%P %G'` shows them"),
    (re.compile(r"Invalid account", re.I),
     "account", "invalid account or account/partition combination ({arg}); `sacctmgr show assoc user=$USER`"),
    (re.compile(r"Invalid qos", re.I), "qos", "invalid QOS ({arg})"),
    (re.compile(r"Memory specification can not be satisfied", re.I),
     "mem", "no node has that much memory ({arg})"),
    (re.compile(r"Invalid feature specification", re.I), "constraint", "no node has these features ({arg})"),
    (re.compile(r"Requested reservation is invalid", re.I), "reservation", "invalid reservation ({arg})"),
    (re.compile(r"Requested node configuration is not available", re.I),
     None, "no node matches the request ({args})"),
    (re.compile(r"(?:unrecognized|invalid|unknown) option (?:'|--)?(?P<value>-[^'\s]*)'?", re.I),
     None, "unknown option {value} (in {args})"),
]

NO_SLURM = re.compile(r"No such file or directory: '(?P<tool>sbatch|srun|squeue)'|(?P<tool2>sbatch|srun): "
                      r"(?:command )?not found")


def find_arg(args: list[str] | tuple[str, ...], option: str) -> str:
    """The argument that sets ``option`` as given (``--partition=gpu``, ``-p gpu``,
    ``-pgpu``); the last one wins, as with sbatch.  "" when none does."""
    spellings = OPTIONS.get(option, ())
    found = ""
    args = list(args)
    for i, a in enumerate(args):
        for s in spellings:
            if a == s:
                found = f"{a} {args[i + 1]}" if i + 1 < len(args) else a
            elif s.startswith("--") and a.startswith(s + "="):
                found = a
            elif not s.startswith("--") and a.startswith(s) and len(a) > len(s) and not a.startswith("--"):
                found = a
    return found


def explain(error: str, args: list[str] | tuple[str, ...], host: str, what: str = "sbatch") -> str:
    """One line for Slurm's refusal ``error`` of a request made with ``args``."""
    text = " ".join(error.split())
    m = NO_SLURM.search(text)
    if m:
        tool = m.group("tool") or m.group("tool2")
        return (f"{host}: {what}: no Slurm here: {tool} is not on the PATH (runner = \"slurm\" needs the Slurm "
                f"client on the login node; set PATH in the target's env if it is elsewhere)")
    for pattern, option, problem in RULES:
        m = pattern.search(text)
        if not m:
            continue
        arg = find_arg(args, option) if option else ""
        value = (m.groupdict().get("value") or "").strip()
        if option and not value and arg:
            value = arg.split("=", 1)[-1].split(" ", 1)[-1]
        shown_args = " ".join(args) or "no arguments"
        if option:
            value = repr(value) if value else "(the default)"
        return f"{host}: {what}: " + problem.format(value=value,
                                                    arg=arg or f"the cluster's default {option}",
                                                    args=shown_args)
    first = next((ln.strip() for ln in error.splitlines() if "error" in ln.lower()), error.strip().splitlines()[0]
                 if error.strip() else "no message")
    return f"{host}: {what} failed: {first[:300]}"


SBATCH_FAILED = re.compile(r"^remote_dev: sbatch failed: ", re.M)
ALLOC_GONE = re.compile(r"Unable to confirm allocation for job (?P<job>\d+)|Invalid job id specified|"
                        r"Job/step already completing or completed", re.I)


def diagnose(text: str, args: list[str] | tuple[str, ...], host: str) -> str | None:
    """The one line for a run that Slurm refused (its output: the agent's "sbatch failed"
    line), or whose step found its allocation gone."""
    m = SBATCH_FAILED.search(text)
    if m:
        return explain(text[m.end():], args, host)
    m = ALLOC_GONE.search(text)
    if m and "srun" in text:
        job = m.group("job")
        return (f"{host}: the allocation{f' (job {job})' if job else ''} has ended: the run could not start in it; "
                f":RemoteAlloc holds a new one (runs go to the queue as batch jobs without one)")
    return None
