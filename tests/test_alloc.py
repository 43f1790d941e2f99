""":RemoteAlloc and what runs in a held allocation, against the real single-node Slurm
cluster on loopback (the login node is this machine through the sshd, and so is the
compute node), real tmux, real ipykernel and real podman."""
from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from conftest import events, require, run_processes, wait_for
from remote_dev.errors import RemoteDevError

from support.podman import TEST_IMAGE, ensure_test_image, podman_available, podman_env
from support.slurm import SlurmCluster, slurm_available

from test_persist import have_jupyter, have_tmux, tmux_sessions


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    reason = slurm_available()
    require(reason is None, f"slurm: {reason}")
    c = SlurmCluster(str(tmp_path_factory.mktemp("slurm")))
    c.start()
    yield c
    c.stop()


def slurm_project(make_project, cluster, args=(), env=None, extra=""):
    return make_project(target={"runner": "slurm", "python": sys.executable, "env": {**cluster.env, **(env or {})}},
                        config_extra="\n[targets.test.slurm]\nargs = [" + ", ".join(f'"{a}"' for a in args) + "]\n"
                                     + extra)


def exit_of(engine, run_id, timeout=60):
    return wait_for(lambda: next((e for e in events(engine, "RemoteDevRunExit") if e["id"] == run_id), None),
                    timeout, 0.05, what=f"exit of {run_id}")


def lines_of(engine, run_id):
    return [ln for k, p in engine.reports if k == "run_output" and p["id"] == run_id for ln in p["lines"]]


def first_line_after(engine, run_id, t0, timeout=30):
    """Seconds from t0 to the first output line of the run (as the engine reported it)."""
    def seen():
        for k, p in engine.reports:
            if k == "run_output" and p["id"] == run_id and p["lines"]:
                return True
        return False
    wait_for(seen, timeout, 0.005, what=f"first line of {run_id}")
    return time.monotonic() - t0


def steps(cluster, job):
    """The job's steps as squeue lists them: {step id: step name}."""
    out = cluster.run("squeue", "-h", "-s", "-j", str(job), "-o", "%i|%j").stdout
    return dict(line.split("|", 1) for line in out.split() if "|" in line)


def alloc_processes(job):
    """Live processes on this machine (login and compute node here) started for the
    allocation's steps, and the job's slurmstepd."""
    out = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            env = open(f"/proc/{pid}/environ", "rb").read().split(b"\0")
            state = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state != "Z" and (f"REMOTE_DEV_ALLOC={job}".encode() in env or f"SLURM_JOB_ID={job}".encode() in env):
            out.append(int(pid))
    return out


def alloc_events(engine):
    return events(engine, "RemoteDevAlloc")


def hold(engine, ctx, args=None):
    res = engine.call_sync("alloc", ctx, {"args": list(args or [])}, timeout=60)
    wait_for(lambda: any(e["job_id"] == res["job_id"] and e["state"] == "RUNNING" for e in alloc_events(engine)),
             30, 0.05, what="the allocation to run")
    return res


def test_runs_shell_and_kernel_are_steps_of_one_allocation_found_again_and_stopped_clean(
        engine, make_project, cluster, sshd):
    have_tmux()
    have_jupyter()
    from remote_dev.actions import ACTIONS
    from remote_dev.engine import Engine

    proj = slurm_project(make_project, cluster, args=["--time=30"])
    proj.write("main.py", "import os\nprint('step', os.environ['SLURM_JOB_ID'], os.environ['SLURM_STEP_ID'], "
                          "os.environ.get('SLURMD_NODENAME'), flush=True)\n")
    ctx = {"cwd": str(proj.root)}
    held = hold(engine, ctx)
    job = held["job_id"]
    assert held["found"] is False and cluster.squeue() == [job]
    ev = [e for e in alloc_events(engine) if e["state"] == "RUNNING"][-1]
    assert ev["nodes"] == [cluster.node_name] and ev["time_left"] and ev["time_left"] <= 30 * 60
    status = engine.call_sync("status", ctx, {"refresh": False}, timeout=30)
    assert status["alloc"]["job_id"] == job and status["alloc"]["state"] == "RUNNING"

    # two runs: steps of the same job, the second one starting without a queue wait
    r1 = engine.call_sync("run", ctx, {"cmd": "python3 main.py"}, timeout=60)
    assert exit_of(engine, r1["id"])["code"] == 0
    t0 = time.monotonic()
    r2 = engine.call_sync("run", ctx, {"cmd": "python3 main.py"}, timeout=60)
    started_in = first_line_after(engine, r2["id"], t0)
    assert exit_of(engine, r2["id"])["code"] == 0
    runs = engine.projects[proj.root].runs
    metas = [runs[r["id"]].meta for r in (r1, r2)]
    assert [m["job"] for m in metas] == [job, job] and metas[0]["step"] != metas[1]["step"], metas
    for r, m in zip((r1, r2), metas):
        assert lines_of(engine, r["id"]) == [f"step {job} {m['step'].split('.')[1]} {cluster.node_name}"]
    assert started_in < 5, f"a run in the allocation took {started_in:.1f} s to its first line"
    assert cluster.squeue() == [job], "no batch job was submitted for the runs"

    # a shell and a kernel in it: steps too, on the node
    opened = engine.call_sync("shell_open", ctx, {"id": 1, "name": "main", "cols": 100, "rows": 30}, timeout=60)
    assert f"allocation job {job}" in opened["where"]
    engine.call_sync("shell_input", ctx, {"id": 1, "data": "echo \"in-step-$SLURM_JOB_ID\"\r"})
    wait_for(lambda: f"in-step-{job}" in shell_screen(engine, 1), 20, what="the shell's answer from the step")
    res = engine.call_sync("send", ctx, {"code": "import os\nvalue = 41\nos.environ['SLURM_JOB_ID']"}, timeout=120)
    assert res["status"] == "ok"
    assert f"Out[1]: '{job}'" in [ln for k, p in engine.reports if k == "kernel_output" for ln in p["lines"]]
    names = steps(cluster, job)
    assert any(n.endswith("-sh-main") for n in names.values()), names
    assert any(n.endswith("-kernel") for n in names.values()), names
    session = opened["session"]

    # a new engine (a new Neovim) finds the allocation, the kernel's state, and runs in it
    other_reports: list = []
    other = Engine(report=lambda k, p: other_reports.append((k, p)), actions=ACTIONS)
    other.reports = other_reports
    try:
        again = other.call_sync("alloc", ctx, {}, timeout=60)
        assert again["found"] is True and again["job_id"] == job
        assert [e for e in alloc_events(other) if e["found"]][0]["job_id"] == job
        got = other.call_sync("send", ctx, {"code": "value + 1"}, timeout=60)
        assert got["status"] == "ok"
        r3 = other.call_sync("run", ctx, {"cmd": "python3 main.py"}, timeout=60)
        assert exit_of(other, r3["id"])["code"] == 0
        assert other.projects[proj.root].runs[r3["id"]].meta["job"] == job
        assert "Out[2]: 42" in [ln for k, p in other_reports if k == "kernel_output" for ln in p["lines"]]

        # a long run, then stop: it, the shell and the kernel end; nothing is left
        long = other.call_sync("run", ctx, {"cmd": "python3 -c 'import time; time.sleep(300)'"}, timeout=60)
        wait_for(lambda: len(steps(cluster, job)) >= 4, 20, what="the long run's step")
        stopped = other.call_sync("alloc", ctx, {"stop": True}, timeout=120)
        assert stopped["live"] is False
        assert exit_of(other, long["id"])["code"] != 0
        assert alloc_events(other)[-1]["state"] != "RUNNING"
    finally:
        other.close()
    assert cluster.squeue() == []
    wait_for(lambda: session not in tmux_sessions(sshd), 20, what="the shell to end with the allocation")
    wait_for(lambda: alloc_processes(job) == [], 20, what="no process of the allocation left")
    wait_for(lambda: [p for k, p in engine.reports if k == "shell_state" and p["state"] == "ended"], 20,
             what="the terminal to say the shell ended")
    with pytest.raises(RemoteDevError, match="no allocation is held"):
        engine.call_sync("alloc", ctx, {"stop": True}, timeout=60)


def shell_screen(engine, term):
    return b"".join(p["data"] for k, p in engine.reports if k == "shell_output" and p["id"] == term).decode(
        errors="replace")
