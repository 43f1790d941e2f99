""":RemoteAlloc and what runs in a held allocation, against the real single-node Slurm
cluster on loopback (the login node is this machine through the sshd, and so is the
compute node), real tmux, real ipykernel and real podman."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

from conftest import events, process_environs, require, run_processes, wait_for
from remote_dev.errors import RemoteDevError

from support.podman import TEST_IMAGE, ensure_test_image, podman_available, podman_env

from test_debug import MAIN, UTIL, drive_session
from test_persist import capture, have_jupyter, have_tmux, tmux_sessions
from test_slurm import cluster, exit_of  # noqa: F401 - a fixture (a cluster for this module)


def slurm_project(make_project, cluster, args=(), env=None, extra=""):
    return make_project(target={"runner": "slurm", "python": sys.executable, "env": {**cluster.env, **(env or {})}},
                        config_extra="\n[targets.test.slurm]\nargs = [" + ", ".join(f'"{a}"' for a in args) + "]\n"
                                     + extra)


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


def alloc_processes(cluster, job):
    """Live processes on this machine (login and compute node here) started for the
    allocation's steps, and the job's own; of this cluster (other test clusters on the
    machine have jobs of the same numbers)."""
    return [pid for pid, env in process_environs() if env.get("SLURM_CONF") == cluster.conf and (
        env.get("SLURM_JOB_ID") == job or env.get("REMOTE_DEV_ALLOC", "").endswith(f":{job}"))]


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

    # a debug run: a step too; a breakpoint on the local file stops it
    proj.write("pkg/__init__.py", "")
    util = proj.write("pkg/util.py", UTIL)
    proj.write("dbg.py", MAIN)
    dbg = engine.call_sync("debug", ctx, {"cmd": "python3 dbg.py"}, timeout=120)
    drive_session(dbg["config"], util)
    assert exit_of(engine, dbg["id"])["code"] == 0
    assert runs[dbg["id"]].meta["job"] == job and runs[dbg["id"]].meta["step"].startswith(f"{job}.")

    # a shell and a kernel in it: steps too, on the node
    opened = engine.call_sync("shell_open", ctx, {"id": 1, "name": "main", "cols": 100, "rows": 30}, timeout=60)
    assert f"allocation job {job}" in opened["where"]
    engine.call_sync("shell_input", ctx, {"id": 1, "data": "echo \"in-step-$SLURM_JOB_ID\"\r"})
    wait_for(lambda: f"in-step-{job}" in capture(sshd, opened["session"]), 30, what="the shell's answer from the step")
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
        # an interrupt reaches the kernel on the node (not srun on the login node); it lives on
        fut = other.request("send", ctx, {"code": "import time\nfor i in range(600):\n    time.sleep(0.1)"})
        wait_for(lambda: any("In [3]" in ln for k, p in other_reports if k == "kernel_output" for ln in p["lines"]),
                 30, what="the long cell to start")
        other.call_sync("kernel", ctx, {"what": "interrupt"}, timeout=30)
        assert fut.result(30)["error"].startswith("KeyboardInterrupt")
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
        assert alloc_events(other)[-1]["live"] is False
    finally:
        other.close()
    assert cluster.squeue() == []
    wait_for(lambda: session not in tmux_sessions(sshd), 20, what="the shell to end with the allocation")
    wait_for(lambda: alloc_processes(cluster, job) == [], 20, what="no process of the allocation left")
    wait_for(lambda: [p for k, p in engine.reports if k == "shell_state" and p["state"] == "ended"], 20,
             what="the terminal to say the shell ended")
    with pytest.raises(RemoteDevError, match="no allocation is held"):
        engine.call_sync("alloc", ctx, {"stop": True}, timeout=60)


def test_a_queued_allocation_shows_its_state_refuses_to_start_things_and_stop_cancels_it(engine, make_project,
                                                                                           cluster):
    proj = slurm_project(make_project, cluster)
    ctx = {"cwd": str(proj.root)}
    res = engine.call_sync("alloc", ctx, {"args": ["--hold"]}, timeout=60)
    pending = wait_for(lambda: [e for e in alloc_events(engine) if e["state"] == "PENDING"
                                and "JobHeldUser" in e["detail"]], 30, 0.05, what="the queue state")[-1]
    assert pending["job_id"] == res["job_id"] and pending["live"] is True and pending["nodes"] == []
    assert any("PENDING (JobHeldUser)" in p["text"] for k, p in engine.reports if k == "message")
    proj.write("main.py", "print('never')\n")
    with pytest.raises(RemoteDevError, match=r"not started: the allocation is not running yet \(job \d+ PENDING "
                                             r"\(JobHeldUser\)\); start it again once it runs") as refused:
        engine.call_sync("run", ctx, {"cmd": "python3 main.py"}, timeout=60)
    assert "once it does" not in refused.value.message   # it is not started later: it says so
    with pytest.raises(RemoteDevError, match="an allocation is held already"):
        engine.call_sync("alloc", ctx, {"args": ["--time=5"]}, timeout=60)
    engine.call_sync("alloc", ctx, {"stop": True}, timeout=60)
    assert cluster.squeue() == []


def test_a_run_the_moment_squeue_shows_the_allocation_running_runs_in_it(engine, make_project, cluster,
                                                                         monkeypatch):
    """What this Neovim knows of the allocation is a poll old (here the watcher looks only
    every 600 s): squeue says R, the run is started at once, and runs in it."""
    import remote_dev.alloc as alloc_mod
    monkeypatch.setattr(alloc_mod, "POLL_PENDING", 600.0)
    proj = slurm_project(make_project, cluster)
    ctx = {"cwd": str(proj.root)}
    proj.write("main.py", "import os\nprint('in job', os.environ.get('SLURM_JOB_ID'), flush=True)\n")
    res = engine.call_sync("alloc", ctx, {"args": ["--hold"]}, timeout=60)
    job = res["job_id"]
    wait_for(lambda: [e for e in alloc_events(engine) if e["state"] == "PENDING"], 30, 0.05, what="the queue state")
    cluster.run("scontrol", "release", str(job))
    wait_for(lambda: cluster.run("squeue", "-h", "-j", str(job), "-o", "%t").stdout.strip() == "R", 30, 0.05,
             what="squeue to show the allocation running")
    assert not [e for e in alloc_events(engine) if e["state"] == "RUNNING"], "known here only as pending"
    run = engine.call_sync("run", ctx, {"cmd": "python3 main.py"}, timeout=60)
    assert exit_of(engine, run["id"])["code"] == 0
    assert lines_of(engine, run["id"]) == [f"in job {job}"]
    assert engine.projects[proj.root].runs[run["id"]].meta["job"] == job
    engine.call_sync("alloc", ctx, {"stop": True}, timeout=60)


def test_an_allocation_s_time_limit_is_warned_of_once_per_threshold_naming_what_ends(engine, make_project,
                                                                                     cluster):
    """--time=2: two minutes.  With warn_before = [600, 112] the first warning comes as soon
    as it runs (less than 10 minutes left), the second about 8 s later, each once; both name
    the live run that ends with it; status and the event carry ends_at / time_left."""
    proj = slurm_project(make_project, cluster, args=["--time=2"], extra="warn_before = [600, 112]\n")
    proj.write("slow.py", "import time\nprint('started', flush=True)\ntime.sleep(300)\n")
    ctx = {"cwd": str(proj.root)}
    job = hold(engine, ctx)["job_id"]
    ev = [e for e in alloc_events(engine) if e["state"] == "RUNNING"][-1]
    assert 100 < ev["ends_at"] - time.time() <= 120 and 100 < ev["time_left"] <= 120
    status = engine.call_sync("status", ctx, {"refresh": False}, timeout=30)
    assert status["alloc"]["ends_at"] == ev["ends_at"]
    run = engine.call_sync("run", ctx, {"cmd": "python3 slow.py"}, timeout=60)
    wait_for(lambda: "started" in lines_of(engine, run["id"]), 30, what="the run in the allocation")

    def warnings():
        return [p["text"] for k, p in engine.reports if k == "message" and p["level"] == "warn"
                and f"job {job} ends at" in p["text"]]
    first = wait_for(warnings, 30, 0.1, what="the first warning")[0]
    assert "its time limit" in first and "left" in first
    both = wait_for(lambda: len(warnings()) >= 2 and warnings(), 30, 0.1, what="the second warning")
    assert f"run {run['id']} (python3 slow.py)" in both[1], both
    left = float(both[1].split("(")[1].split(" left")[0].split(":")[-1]) + 60 * float(
        both[1].split("(")[1].split(" left")[0].split(":")[-2])
    assert left <= 112, both[1]
    for _ in range(3):   # more looks at it (:RemoteAlloc finds it held): nothing told twice
        engine.call_sync("alloc", ctx, {"args": []}, timeout=60)
    assert len(warnings()) == 2, warnings()
    engine.call_sync("stop", ctx, {"id": run["id"]}, timeout=60)
    engine.call_sync("alloc", ctx, {"stop": True}, timeout=60)


def test_allocation_ending_on_its_own_ends_its_shell_and_notebook_and_is_announced(
        engine, make_project, cluster, sshd, monkeypatch):
    """The end an allocation's time limit brings, brought here by a scancel from outside
    (a time limit is at least a minute, checked by slurmctld every 30 s)."""
    have_tmux()
    have_jupyter()
    import urllib.request

    from remote_dev import alloc
    from remote_dev.services import NOTEBOOK, remote_name

    monkeypatch.setattr(alloc, "POLL_RUNNING", 0.5)
    proj = slurm_project(make_project, cluster)
    proj.write("main.py", "import os\nprint('job', os.environ.get('SLURM_JOB_ID'))\n")
    ctx = {"cwd": str(proj.root)}
    job = hold(engine, ctx)["job_id"]
    cli = subprocess.run([sys.executable, "-m", "remote_dev.cli", "-C", str(proj.root), "alloc"],
                         capture_output=True, text=True, timeout=60)
    assert f"allocation on test: job {job} RUNNING on {cluster.node_name}" in cli.stdout, cli
    assert "held already" in cli.stdout and cli.returncode == 0, cli
    nb = engine.call_sync("notebook", ctx, {}, timeout=120)
    token = nb["url"].split("token=")[1]
    req = urllib.request.Request(f"http://127.0.0.1:{nb['local_port']}/api/status",
                                 headers={"Authorization": f"token {token}"})
    assert "started" in json.loads(urllib.request.urlopen(req, timeout=30).read())
    opened = engine.call_sync("shell_open", ctx, {"id": 3, "name": "w", "cols": 80, "rows": 24}, timeout=60)
    engine.call_sync("shell_open", ctx, {"id": 4, "name": "k", "cols": 80, "rows": 24}, timeout=60)
    names = steps(cluster, job).values()
    assert any(n.endswith("-notebook") for n in names) and any(n.endswith("-sh-w") for n in names), names
    # a shell killed on its own: its step ends, the allocation stays
    engine.call_sync("shell_kill", ctx, {"name": "k"}, timeout=60)
    wait_for(lambda: not any(n.endswith("-sh-k") for n in steps(cluster, job).values()), 30,
             what="the killed shell's step to end")

    cluster.run("scancel", job)
    wait_for(lambda: [e for e in alloc_events(engine) if e["job_id"] == job and e["state"] == "CANCELLED"],
             30, 0.05, what=f"RemoteDevAlloc for the end, seen: {alloc_events(engine)}")
    assert all(not e["live"] for e in alloc_events(engine)[2:]), alloc_events(engine)
    nb_name = engine.submit(_name(engine, ctx, NOTEBOOK, remote_name)).result(10)
    wait_for(lambda: opened["session"] not in tmux_sessions(sshd), 30, what="the shell to end")
    wait_for(lambda: not run_processes(nb_name), 30, what="the notebook server to end")
    wait_for(lambda: alloc_processes(cluster, job) == [] and cluster.squeue() == [], 30, what="nothing of the allocation left")
    assert engine.call_sync("status", ctx, {"refresh": False}, timeout=30)["alloc"] is None
    # without an allocation a run is a batch job again
    res = engine.call_sync("run", ctx, {"cmd": "python3 main.py"}, timeout=60)
    assert exit_of(engine, res["id"])["code"] == 0
    rec = engine.projects[proj.root].runs[res["id"]]
    assert rec.meta["job"] != job and "step" not in rec.meta


async def _name(engine, ctx, kind, remote_name):
    return remote_name(engine.project(ctx).session(), kind)


WORKER = """\
import os, sys, time
from pkg import jobs
rank = int(os.environ["SLURM_PROCID"])
print("rank", rank, "of", os.environ["SLURM_NTASKS"], flush=True)
time.sleep(0.2)
jobs.work(rank)
"""
JOBS = """\
def work(rank):
    if rank == 0:
        raise ValueError("rank zero failed")  # RANK0
    shard = [1, 2]
    return shard[rank + 5]  # RANK1
"""


def rank_project(make_project, cluster, args):
    proj = slurm_project(make_project, cluster, args=args)
    proj.write("pkg/__init__.py", "")
    jobs = proj.write("pkg/jobs.py", JOBS)
    proj.write("worker.py", WORKER)
    return proj, jobs


def check_ranks(engine, proj, jobs, run_id):
    assert exit_of(engine, run_id, 90)["code"] != 0
    out = lines_of(engine, run_id)
    assert "0: rank 0 of 2" in out and "1: rank 1 of 2" in out, out
    qf = engine.projects[proj.root].runs[run_id].quickfix
    located = [(e["text"].split(":", 1)[0], e["filename"], e["lnum"]) for e in qf if e.get("type") == "E"]
    assert located == [("0", str(jobs), 3), ("1", str(jobs), 5)] or \
        located == [("1", str(jobs), 5), ("0", str(jobs), 3)], qf
    assert any(e["text"].startswith("0: ValueError: rank zero failed") for e in qf), qf
    assert any(e["text"].startswith("1: IndexError") for e in qf), qf


def test_two_task_job_has_both_ranks_apart_in_quickfix(engine, make_project, cluster):
    proj, jobs = rank_project(make_project, cluster, ["--ntasks=2"])
    res = engine.call_sync("run", {"cwd": str(proj.root)}, {"cmd": "srun python3 worker.py"}, timeout=60)
    check_ranks(engine, proj, jobs, res["id"])
    wait_for(lambda: cluster.squeue() == [], 30, what="empty queue")


def test_two_task_allocation_runs_srun_commands_on_all_its_tasks(engine, make_project, cluster):
    proj, jobs = rank_project(make_project, cluster, ["--ntasks=2"])
    ctx = {"cwd": str(proj.root)}
    held = hold(engine, ctx)
    try:
        res = engine.call_sync("run", ctx, {"cmd": "srun python3 worker.py"}, timeout=60)
        check_ranks(engine, proj, jobs, res["id"])
        assert cluster.squeue() == [held["job_id"]]
        texts = [i["text"] for i in engine.call_sync("health", ctx, timeout=120)["remote"]]
        assert [t for t in texts if t.startswith(f"allocation: job {held['job_id']} RUNNING on {cluster.node_name}")
                and "are its job steps" in t], texts
    finally:
        engine.call_sync("alloc", ctx, {"stop": True}, timeout=120)
    assert cluster.squeue() == []


def test_unknown_partition_is_one_line_naming_it(engine, make_project, cluster):
    proj = slurm_project(make_project, cluster, args=["--partition=nope"])
    ctx = {"cwd": str(proj.root)}
    with pytest.raises(RemoteDevError) as err:
        engine.call_sync("alloc", ctx, {}, timeout=60)
    assert "unknown partition 'nope' (--partition=nope)" in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(RemoteDevError, match=r"invalid time limit \(-t soon\)"):
        engine.call_sync("alloc", ctx, {"args": ["-t", "soon"]}, timeout=60)
    # a batch run refused alike: the run ends, and the one line says why
    proj.write("main.py", "print('never')\n")
    res = engine.call_sync("run", ctx, {"cmd": "python3 main.py"}, timeout=60)
    assert exit_of(engine, res["id"])["code"] != 0
    errors = [e["message"] for e in events(engine, "RemoteDevError")]
    assert [m for m in errors if "unknown partition 'nope' (--partition=nope)" in m], errors
    assert cluster.squeue() == []


def test_no_slurm_on_the_host_is_one_line(engine, make_project, cluster):
    proj = slurm_project(make_project, cluster, env={"PATH": "/nonexistent"})
    with pytest.raises(RemoteDevError, match="no Slurm here: sbatch is not on the PATH"):
        engine.call_sync("alloc", {"cwd": str(proj.root)}, {}, timeout=60)


def test_alloc_on_a_target_without_slurm_says_so(engine, make_project):
    proj = make_project()
    with pytest.raises(RemoteDevError, match=r'allocations are for runner = "slurm" targets'):
        engine.call_sync("alloc", {"cwd": str(proj.root)}, {}, timeout=60)


# --------------------------------------------------------------------------- containers in jobs


@pytest.fixture(scope="module")
def image():
    reason = podman_available()
    require(reason is None, f"podman: {reason}")
    return ensure_test_image()


def container_slurm_project(make_project, cluster):
    body = ("\n[targets.test.container]\nengine = \"podman\"\nimage = \"" + TEST_IMAGE
            + "\"\nworkdir = \"/workspace\"\n")
    proj = slurm_project(make_project, cluster, env=podman_env(), extra=body)
    proj.write("pkg/__init__.py", "")
    mod = proj.write("pkg/mod.py", "def f():\n    raise RuntimeError('inside the container, inside the job')\n")
    main = proj.write("main.py", "import os\nprint('in', os.getcwd(), 'job', os.environ.get('SLURM_JOB_ID'), "
                                 "'container', os.path.exists('/run/.containerenv'), flush=True)\n"
                                 "from pkg import mod\nmod.f()\n")
    return proj, main, mod


def podman_names():
    out = subprocess.run(["podman", "ps", "-a", "--format", "{{.Names}}"], capture_output=True, text=True,
                         env={**os.environ, **podman_env()})
    return [n for n in out.stdout.split() if n.startswith("rd-")]


def test_containerized_job_traceback_maps_to_local_files(engine, make_project, cluster, image):
    proj, main, mod = container_slurm_project(make_project, cluster)
    res = engine.call_sync("run", {"cwd": str(proj.root)}, {"cmd": "python3 main.py"}, timeout=60)
    ex = exit_of(engine, res["id"], 120)
    out = lines_of(engine, res["id"])
    job = engine.projects[proj.root].runs[res["id"]].meta["job"]
    assert ex["code"] == 1, out
    assert f"in /workspace job {job} container True" in out, out
    qf = engine.projects[proj.root].runs[res["id"]].quickfix
    assert [(e["filename"], e["lnum"]) for e in qf if e.get("filename")] == [(str(main), 4), (str(mod), 2)], qf
    assert f"rd-{res['id']}" not in podman_names()
    wait_for(lambda: cluster.squeue() == [], 30, what="empty queue")

    # in a held allocation: a step running the container; a stopped one leaves no container
    ctx = {"cwd": str(proj.root)}
    held = hold(engine, ctx)
    try:
        res = engine.call_sync("run", ctx, {"cmd": "python3 main.py"}, timeout=60)
        assert exit_of(engine, res["id"], 120)["code"] == 1
        rec = engine.projects[proj.root].runs[res["id"]]
        assert rec.meta["job"] == held["job_id"] and rec.meta.get("step")
        assert [(e["filename"], e["lnum"]) for e in rec.quickfix if e.get("filename")] == [(str(main), 4),
                                                                                              (str(mod), 2)]
        long = engine.call_sync("run", ctx, {"cmd": "python3 -c 'import time; print(1, flush=True); time.sleep(300)'"},
                                timeout=60)
        wait_for(lambda: "1" in lines_of(engine, long["id"]), 60, what="the container to run")
        assert f"rd-{long['id']}" in podman_names()
        engine.call_sync("stop", ctx, {"id": long["id"]}, timeout=60)
        assert exit_of(engine, long["id"])["code"] != 0
        wait_for(lambda: f"rd-{long['id']}" not in podman_names(), 30, what="the container removed")
    finally:
        engine.call_sync("alloc", ctx, {"stop": True}, timeout=120)
    assert cluster.squeue() == []


# --------------------------------------------------------------------------- units (no cluster)


def test_config_warn_before(tmp_path):
    from remote_dev.config import load_config
    from remote_dev.errors import ConfigError

    def load(slurm):
        f = tmp_path / ".remote-dev.toml"
        f.write_text(f'[targets.hpc]\nhost = "login"\nremote_root = "~/p"\nrunner = "slurm"\n[targets.hpc.slurm]\n{slurm}\n')
        return load_config(f).targets["hpc"].slurm

    assert load("").warn_before == (600.0, 60.0)
    assert load("warn_before = [1800, 300.5]").warn_before == (1800.0, 300.5)
    assert load("warn_before = []").warn_before == ()
    with pytest.raises(ConfigError, match=r"targets\.hpc\.slurm\.warn_before: must be an array of numbers"):
        load('warn_before = "10m"')
    with pytest.raises(ConfigError, match=r"targets\.hpc\.slurm\.warn_before: must hold numbers of 1 or more"):
        load("warn_before = [60, 0]")


def test_config_container_table_on_a_slurm_target(tmp_path):
    from remote_dev.config import check_runner, load_config
    from remote_dev.errors import ConfigError
    from remote_dev.runners import RUNNERS

    def load(container):
        f = tmp_path / ".remote-dev.toml"
        f.write_text('[targets.hpc]\nhost = "login"\nremote_root = "~/p"\nrunner = "slurm"\n'
                     f"[targets.hpc.container]\n{container}\n")
        cfg = load_config(f)
        check_runner(cfg, RUNNERS)
        return cfg.targets["hpc"]

    t = load('image = "pytorch:24.01"\nworkdir = "/w"')
    runner = RUNNERS[t.runner](t)
    assert runner.in_container() and runner.container_root() == "/w"
    assert load('image = "x"\nengine = "pyxis"').container.engine == "pyxis"
    with pytest.raises(ConfigError, match=r"targets\.hpc\.container.*needs container\.dockerfile or container\.image"):
        load('workdir = "/w"')
    with pytest.raises(ConfigError, match="pyxis runs an image, not a Dockerfile"):
        load('dockerfile = "Dockerfile"\nengine = "pyxis"')


def test_pyxis_command_mounts_the_tree_at_workdir():
    from types import SimpleNamespace

    from remote_dev.config import ContainerConfig, Target
    from remote_dev.runners.slurm_container import pyxis_command

    t = Target(name="hpc", host="login", remote_root="~/p", runner="slurm",
               container=ContainerConfig(image="nvcr.io#nvidia/pytorch:24.01-py3", workdir="/w", args=("--no-container-mount-home",)))
    sess = SimpleNamespace(target=t, remote_root="/home/u/p")
    assert pyxis_command(sess, "python train.py") == (
        "srun --nodes=1 --ntasks=1 '--container-image=nvcr.io#nvidia/pytorch:24.01-py3' "
        "--container-mounts=/home/u/p:/w --container-workdir=/w --no-container-mount-home /bin/sh -c 'python train.py'")


@pytest.mark.parametrize("args, option, want", [
    (["--partition=gpu"], "partition", "--partition=gpu"),
    (["-p", "gpu", "-t", "10"], "partition", "-p gpu"),
    (["-pgpu"], "partition", "-pgpu"),
    (["-t", "10", "--time=20"], "time", "--time=20"),
    (["--gres=gpu:2"], "gres", "--gres=gpu:2"),
    (["--ntasks=2"], "partition", ""),
])
def test_find_arg_names_the_argument_as_given(args, option, want):
    from remote_dev.slurm_errors import find_arg

    assert find_arg(args, option) == want


def test_step_commands():
    from remote_dev.alloc import SRUN, Allocation, parse_left

    for cmd in ("srun python x.py", "  OMP_NUM_THREADS=2 srun -n2 x", "/usr/bin/srun x", "exec srun x"):
        assert SRUN.match(cmd), cmd
    for cmd in ("python srun.py", "sruntool", "echo srun"):
        assert not SRUN.match(cmd), cmd
    assert parse_left("1-02:03:04") == 93784 and parse_left("05:06") == 306 and parse_left("UNLIMITED") is None
    a = Allocation.from_info({"name": "n", "job": 7, "state": "pending", "job_state": "PENDING", "reason": "Resources"})
    assert a.live and not a.running and a.describe() == "job 7 PENDING (Resources)"
    done = Allocation.from_info({"name": "n", "job": 7, "state": "stopped", "detail": "CANCELLED"})
    assert not done.live and done.describe() == "job 7 ended (CANCELLED)"


# --------------------------------------------------------------------------- through Neovim


def test_remote_alloc_in_neovim_found_again_by_a_new_neovim_and_stopped(nvim, make_project, cluster):
    from test_persist_nvim import new_nvim, quit_nvim

    proj = slurm_project(make_project, cluster)
    main = proj.write("main.py", "import os\nprint('in job', os.environ['SLURM_JOB_ID'])\n")
    nvim.open(proj.root, main)
    nvim.command("RemoteAlloc --time=20 --job-name=ignored")
    ev = nvim.wait_event("RemoteDevAlloc", 60, lambda d: d.get("state") == "RUNNING")
    job = ev["job_id"]
    assert ev["nodes"] == [cluster.node_name] and ev["found"] is False and cluster.squeue() == [job]
    nvim.command("RemoteRun")
    ex = nvim.wait_event("RemoteDevRunExit", 60)
    assert ex["code"] == 0
    buf = [b for b in nvim.buffers if b.name.startswith("remote-dev://run/")][0]
    assert f"in job {job}" in buf[:] and f"step {job}." in buf[0], buf[:]
    quit_nvim(nvim.api)
    assert cluster.squeue() == [job], "the allocation outlives Neovim"

    api = new_nvim()
    try:
        api.command(f"cd {proj.root}")
        api.command(f"edit {main}")
        api.command("RemoteAlloc")
        found = wait_for(lambda: next((e["data"] for e in api.exec_lua("return _G.rd_events")
                                       if e["name"] == "RemoteDevAlloc"), None), 60, 0.05, what="RemoteDevAlloc")
        assert found["job_id"] == job and found["found"] is True and found["state"] == "RUNNING"
        alloc = api.exec_lua("return require('remote_dev').status().alloc")
        assert alloc["job_id"] == job and alloc["nodes"] == [cluster.node_name] and 0 < alloc["time_left"] <= 1200
        api.command("RemoteStatus")
        wait_for(lambda: f"alloc       job {job} RUNNING on {cluster.node_name} (0:1" in api.exec_lua(
            "return vim.fn.execute('messages')"), 30, 0.05, what="the allocation in :RemoteStatus")
        api.command("RemoteAlloc stop")
        wait_for(lambda: [e for e in api.exec_lua("return _G.rd_events") if e["name"] == "RemoteDevAlloc"
                          and e["data"]["state"] != "RUNNING"], 60, 0.05, what="the allocation's end")
        assert cluster.squeue() == []
        assert alloc_processes(cluster, job) == []
        assert api.exec_lua("return require('remote_dev').status().alloc") is None
    finally:
        quit_nvim(api)


def test_remote_alloc_refuses_a_word_that_is_no_argument(nvim, make_project, cluster):
    proj = slurm_project(make_project, cluster)
    nvim.open(proj.root, proj.write("main.py", ""))
    try:
        nvim.command("RemoteAlloc start")
    except Exception:  # noqa: BLE001 - the error is also raised to the client
        pass
    errors = [e["data"]["message"] for e in nvim.events("RemoteDevError")]
    assert errors and errors[0].startswith(":RemoteAlloc start: unknown; give sbatch/salloc arguments"), errors
