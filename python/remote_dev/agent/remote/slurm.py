"""Slurm runs: submitted with sbatch, so no process of ours stays on the login node; the
job writes its output and its own exit status into the run folder (a shared file
system); its state comes from squeue, or scontrol once it left the queue."""

import os
import subprocess
import time

from .. import protocol as P
from .common import read_json, write_json

CACHE = {}      # job id -> (time, fields): one squeue/scontrol per job per POLL seconds
POLL = 1.0
LIVE = {"PENDING": P.PENDING, "CONFIGURING": P.RUNNING, "RUNNING": P.RUNNING, "COMPLETING": P.RUNNING,
        "SUSPENDED": P.RUNNING, "REQUEUED": P.PENDING, "RESIZING": P.RUNNING, "STAGE_OUT": P.RUNNING}
KILLED = ("CANCELLED", "TIMEOUT", "PREEMPTED", "NODE_FAIL", "OUT_OF_MEMORY", "DEADLINE")


def run_env(spec):
    env = dict(os.environ)
    env.update(spec.get("env") or {})
    return env


def shquote(s):
    return "'" + str(s).replace("'", "'\\''") + "'"


def job_script(d, spec):
    """d/job.sh: the run's command in its root and environment, recording its exit code
    in d/exit.json itself."""
    exit_json = shquote(os.path.join(d, "exit.json"))
    lines = ["#!/bin/sh", "cd %s || exit 1" % shquote(spec["root"])]
    for key, value in sorted((spec.get("env") or {}).items()):
        lines.append("export %s=%s" % (key, shquote(value)))
    lines += [
        "export %s=%s PYTHONUNBUFFERED=${PYTHONUNBUFFERED:-1}" % (P.RUN_ID_ENV, shquote(spec["id"])),
        # a job of several tasks: each srun in it prefixes its lines with the task's rank
        '[ "${SLURM_NTASKS:-1}" -gt 1 ] && export SLURM_LABELIO=${SLURM_LABELIO:-1}',
        "/bin/sh -c %s" % shquote(spec["cmd"]),
        "code=$?",
        '(umask 077; printf \'{"code": %%d, "time": %%s}\' "$code" "$(date +%%s)" > %s.tmp) && mv %s.tmp %s' % (
            exit_json, exit_json, exit_json),
        "exit $code",
    ]
    path = os.path.join(d, "job.sh")
    with os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o700), "w") as f:
        f.write("\n".join(lines) + "\n")
    os.chmod(path, 0o700)
    return path


def submit(d, spec, run_info):
    """sbatch the run of folder d; its info (run_info(d)) after."""
    script = job_script(d, spec)
    log = os.path.join(d, "output.log")
    name = spec["slurm"].get("job_name") or "rd-" + spec["id"]
    argv = ["sbatch", "--parsable", "--output=" + log, "--open-mode=append", "--job-name=" + name,
            "--chdir=" + spec["root"]] + list(spec["slurm"].get("args") or []) + [script]
    try:
        p = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           env=run_env(spec), timeout=120)
        out, err, code = p.stdout.decode(errors="replace"), p.stderr.decode(errors="replace"), p.returncode
    except (OSError, subprocess.TimeoutExpired) as e:
        out, err, code = "", "sbatch: %s" % e, 127
    if code != 0 or not out.strip():
        with open(log, "ab") as f:
            f.write(("remote_dev: sbatch failed: %s\n" % err.strip()).encode())
        write_json(os.path.join(d, "started.json"), {"time": time.time(), "job": None})
        write_json(os.path.join(d, "exit.json"), {"code": code or 1, "time": time.time(), "error": err.strip()})
        return run_info(d)
    job = out.strip().split(";")[0]
    write_json(os.path.join(d, "started.json"), {"time": time.time(), "job": job})
    return run_info(d)


def cancel(job, spec):
    subprocess.run(["scancel", str(job)], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL, env=run_env(spec), timeout=60)
    CACHE.pop(str(job), None)


def fields(job, env, has_output=False):
    """The job's fields (JobState, Reason, NodeList, TimeLeft, ExitCode...), from squeue while it
    is queued or running, else from scontrol; cached for POLL seconds (not past the first
    output of a job cached as pending)."""
    now = time.time()
    cached = CACHE.get(job)
    stale = has_output and cached and cached[1].get("JobState") == "PENDING"  # output: it started
    if cached and now - cached[0] < POLL and not stale:
        return cached[1]
    found = {}
    try:
        p = subprocess.run(["squeue", "-h", "-j", job, "-o", "%T|%r|%N|%L"], stdin=subprocess.DEVNULL,
                           stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env, timeout=30)
        line = p.stdout.decode(errors="replace").strip().splitlines()
        if p.returncode == 0 and line:
            state, reason, node, left = (line[0].split("|") + ["", "", "", ""])[:4]
            found = {"JobState": state, "Reason": reason, "NodeList": node, "TimeLeft": left}
        else:
            p = subprocess.run(["scontrol", "show", "job", "-o", job], stdin=subprocess.DEVNULL,
                               stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env, timeout=30)
            if p.returncode == 0:
                for word in p.stdout.decode(errors="replace").split():
                    if "=" in word:
                        k, v = word.split("=", 1)
                        found[k] = v
    except (OSError, subprocess.TimeoutExpired):
        return cached[1] if cached else {}
    CACHE[job] = (now, found)
    return found


def exit_code(state, f):
    """A shell-like exit code from a finished job's ExitCode (code:signal)."""
    code = f.get("ExitCode", "1:0").split(":")
    num = int(code[0]) if code[0].isdigit() else 1
    sig = int(code[1]) if len(code) > 1 and code[1].isdigit() else 0
    if state in KILLED and num == 0:
        num = 128 + (sig or 15)
    return num if state != "COMPLETED" else 0


def update_state(info, spec, d):
    """Fill in info's state and detail for a submitted job that has not recorded its exit."""
    f = fields(str(info["job"]), run_env(spec), info.get("size", 0) > 0)
    state = f.get("JobState", "")
    if state in LIVE:
        info["state"] = LIVE[state]
        if state == "PENDING":
            reason = f.get("Reason", "")
            info["detail"] = "PENDING (%s)" % reason if reason not in ("", "None", "(null)") else "PENDING"
        else:
            info["detail"] = "%s on %s" % (state, f.get("NodeList", "?"))
        return
    try:  # the job's own record of its exit, if the file system shows it already
        ex = read_json(os.path.join(d, "exit.json"))
    except (OSError, ValueError):
        ex = None
    info["detail"] = state or "gone from the queue"
    if ex is not None:
        info.update(state=P.EXITED, code=ex["code"], ended=ex["time"])
    elif state:
        info.update(state=P.EXITED, code=exit_code(state, f), ended=time.time())
        # recorded in the run folder as the job would have: Slurm is not asked again (it
        # forgets the job after MinJobAge, and may be unreachable later)
        write_json(os.path.join(d, "exit.json"), {"code": info["code"], "time": info["ended"], "slurm": state})
    else:
        info.update(state=P.LOST, code=None)
    if info["stopped"] and info["state"] == P.EXITED:
        info["state"] = P.STOPPED
