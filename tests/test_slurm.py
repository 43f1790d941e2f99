"""runner = "slurm" against a real single-node Slurm cluster on loopback (the login node is
this machine through the sshd)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import events, require, run_processes, wait_for

from support.slurm import SlurmCluster, slurm_available

from test_debug import debug_project
from test_debug_nvim import flow_breakpoint_evaluate_natural_end, flow_restart, flow_terminate


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    reason = slurm_available()
    require(reason is None, f"slurm: {reason}")
    c = SlurmCluster(str(tmp_path_factory.mktemp("slurm")))
    c.start()
    yield c
    c.stop()


def slurm_project(make_project, cluster, args=()):
    return make_project(target={"runner": "slurm", "env": dict(cluster.env)},
                        config_extra="\n[targets.test.slurm]\nargs = [" + ", ".join(f'"{a}"' for a in args) + "]\n")


def exit_of(engine, run_id, timeout=60):
    return wait_for(lambda: next((e for e in events(engine, "RemoteDevRunExit") if e["id"] == run_id), None),
                    timeout, 0.05, what=f"exit of {run_id}")


def test_failing_job_traceback_in_quickfix(nvim, make_project, cluster):
    proj = slurm_project(make_project, cluster)
    proj.write("pkg/__init__.py", "")
    proj.write("pkg/train.py", "def step():\n    raise RuntimeError('loss is nan')\n")
    main = proj.write("main.py", "import socket\nprint('on', socket.gethostname(), flush=True)\n"
                                 "from pkg import train\ntrain.step()\n")
    nvim.open(proj.root, main)
    nvim.command("RemoteRun")
    start = nvim.wait_event("RemoteDevRunStart", 60)
    ex = nvim.wait_event("RemoteDevRunExit", 90)
    assert ex["id"] == start["id"] and ex["code"] == 1
    qf = nvim.call("getqflist", {"title": 1, "items": 1})
    located = [(nvim.call("fnamemodify", nvim.call("bufname", i["bufnr"]), ":p"), i["lnum"])
               for i in qf["items"] if i["valid"]]
    assert located == [(str(main), 4), (str(proj.root / "pkg/train.py"), 2)]
    buf = [b for b in nvim.buffers if b.name.startswith("remote-dev://run/")][0]
    header = buf[0]
    assert "job " in header and "FAILED" in header, header
    wait_for(lambda: cluster.squeue() == [], 30, what="empty queue")   # (just ended: may be listed a moment)


def test_pending_job_is_shown_pending_and_stop_cancels(engine, make_project, cluster):
    proj = slurm_project(make_project, cluster, args=["--hold"])
    proj.write("main.py", "print('never')\n")
    res = engine.call_sync("run", {"cwd": str(proj.root)}, {"cmd": "python3 main.py"}, timeout=60)
    state = wait_for(lambda: next((p for k, p in engine.reports if k == "run_state" and p["id"] == res["id"]
                                   and "PENDING" in (p.get("detail") or "")), None), 30, 0.05)
    assert "JobHeldUser" in state["detail"] and state["job"]
    assert cluster.squeue() == [str(state["job"])]
    engine.call_sync("stop", {"cwd": str(proj.root)}, {"id": res["id"]}, timeout=60)
    ex = exit_of(engine, res["id"])
    assert ex["code"] != 0
    wait_for(lambda: cluster.squeue() == [], 30)
    # its end is recorded in the run folder once Slurm told it: Slurm is not asked again
    # (it forgets the job after MinJobAge, or may be unreachable by then)
    cache = engine.projects[proj.root].session().hello["cache_dir"]
    recorded = json.loads((Path(cache) / "runs" / res["id"] / "exit.json").read_text())
    assert recorded["slurm"] == "CANCELLED" and recorded["code"] == ex["code"]


def test_remote_status_counts_a_queued_job_as_live(nvim, make_project, cluster):
    proj = slurm_project(make_project, cluster, args=["--hold"])
    main = proj.write("main.py", "print('never')\n")
    nvim.open(proj.root, main)
    nvim.command("RemoteRun")
    nvim.wait_event("RemoteDevRunStart", 60)
    buf = wait_for(lambda: [b for b in nvim.buffers if b.name.startswith("remote-dev://run/")], 10)[0]
    wait_for(lambda: "pending" in buf[0] and "PENDING" in buf[0], 30, what="queue state in the header")
    nvim.command("RemoteStatus")
    wait_for(lambda: "runs        1 (1 live)" in nvim.exec_lua("return vim.fn.execute('messages')"), 30,
             what="the status to count the queued job")
    nvim.command("RemoteStop")
    nvim.wait_event("RemoteDevRunExit", 60)
    wait_for(lambda: cluster.squeue() == [], 30, what="empty queue")


def test_long_job_cancelled_by_remote_stop(nvim, make_project, cluster):
    proj = slurm_project(make_project, cluster)
    main = proj.write("main.py", "import time\nfor i in range(600):\n    print('step', i, flush=True)\n"
                                 "    time.sleep(0.1)\n")
    nvim.open(proj.root, main)
    nvim.command("RemoteRun")
    start = nvim.wait_event("RemoteDevRunStart", 60)
    wait_for(lambda: run_processes(start["id"]), 30, what="job running")
    buf = wait_for(lambda: [b for b in nvim.buffers if b.name.startswith("remote-dev://run/")], 10)[0]
    wait_for(lambda: "step 2" in buf[:], 30, what="live output")
    wait_for(lambda: "RUNNING on" in buf[0], 10, what="queue state in the header")
    nvim.command("RemoteStop")
    ex = nvim.wait_event("RemoteDevRunExit", 60)
    assert ex["code"] != 0
    wait_for(lambda: cluster.squeue() == [], 30, what="empty queue")
    wait_for(lambda: run_processes(start["id"]) == [], 30, what="no job process left")


def test_debug_a_job_breakpoint_evaluate_and_natural_end_in_nvim(nvim, dap, make_project, cluster):
    proj, main, util = debug_project(lambda **kw: slurm_project(make_project, cluster))
    flow_breakpoint_evaluate_natural_end(nvim, dap, proj, main, util, 180)
    wait_for(lambda: cluster.squeue() == [], 30, what="empty queue")


def test_debug_a_job_terminate_from_nvim_dap_cancels_it(nvim, dap, make_project, cluster):
    proj, main, util = debug_project(lambda **kw: slurm_project(make_project, cluster))
    ready = flow_terminate(nvim, dap, proj, main, util, 180)
    wait_for(lambda: cluster.squeue() == [], 30, what="empty queue")
    wait_for(lambda: run_processes(ready["id"]) == [], 30, what="no job process left")


def test_debug_a_job_restart_from_nvim_dap(nvim, dap, make_project, cluster):
    proj, main, util = debug_project(lambda **kw: slurm_project(make_project, cluster))
    flow_restart(nvim, dap, proj, main, util, 180)
    wait_for(lambda: cluster.squeue() == [], 30, what="empty queue")


def test_health_reports_partitions(engine, make_project, cluster):
    proj = slurm_project(make_project, cluster)
    rep = engine.call_sync("health", {"cwd": str(proj.root)}, timeout=120)
    texts = [i["text"] for i in rep["remote"]]
    assert "slurm default partition: debug" in texts, texts
    assert any(t.startswith("slurm partitions: debug (1 idle") for t in texts), texts
    assert any(t.startswith("slurm: ") and "sbatch" in t for t in texts), texts
