"""Debugging every Python process of a run with the REAL nvim-dap in real headless Neovim:
pool workers as debugpy's child sessions, and the ranks of srun (the loopback Slurm
cluster), torchrun (the real PyTorch) and a generic launcher, one session per rank named
with its rank and host."""
from __future__ import annotations

import socket

import pytest

from conftest import require, run_processes, wait_for

from test_debug_nvim import local_listener_closed, run_buffer, run_exit
from test_slurm import cluster, slurm_project  # noqa: F401 - the module's Slurm cluster

HOST = socket.gethostname()

POOL = '''\
import multiprocessing as mp
import sys


def work(x):
    y = x * 10
    return y


if __name__ == "__main__":
    with mp.get_context(sys.argv[1]).Pool(2) as pool:
        print("results", pool.map(work, [1, 2], chunksize=1), flush=True)
'''

RANKS = '''\
import os
import socket
import sys


def shard(rank):
    part = rank * 10
    return part


rank = int(os.environ.get("SLURM_PROCID") or os.environ.get("PMI_RANK") or 0)
sys.stdout.write(f"rank {rank} on {socket.gethostname()} part {shard(rank)}\\n")
if os.environ.get("BY_HAND"):   # what people write to debug each rank without remote_dev
    import debugpy
    debugpy.listen(("127.0.0.1", 5678 + rank))
    debugpy.wait_for_client()
'''
RANK_LINE = 7        # part = rank * 10


def debug(nvim, proj, main, command):
    nvim.open(proj.root, main)
    nvim.command(f"RemoteDebug {command}")
    return nvim.wait_event("RemoteDevRunStart", 120)["id"]


def continue_all(dap, sessions):
    for s in sessions:
        dap.continue_in(s["id"])


def ready_ports(nvim, run_id):
    return [e["data"]["port"] for e in nvim.events("RemoteDevDebugReady") if e["data"]["id"] == run_id]


@pytest.mark.parametrize("method", ["spawn", "fork"])
def test_pool_workers_stop_at_a_breakpoint_as_child_sessions(nvim, dap, make_project, method):
    """Each worker of a multiprocessing pool is a child session of the program's (debugpy's
    startDebugging, its connection through the run's listener and SSH); a breakpoint in the
    worker function stops both workers; continuing them, the program ends with 0."""
    proj = make_project()
    main = proj.write("main.py", POOL)
    dap.breakpoint(main, 6)                          # y = x * 10, in the workers only
    run_id = debug(nvim, proj, main, f"python3 main.py {method}")
    stops = dap.stopped_sessions(2, 120)
    root = [s for s in dap.all_sessions() if s["parent"] is None]
    assert [s["name"] for s in root] == [f"remote_dev {run_id}"]
    assert all(s["parent"] == root[0]["id"] for s in stops), dap.all_sessions()
    assert all((s["stop"]["path"], s["stop"]["line"], s["stop"]["name"]) == (str(main), 6, "work") for s in stops)
    assert sorted(dap.evaluate_in(s["id"], "x") for s in stops) == ["1", "2"]
    dap.clear_breakpoints()
    continue_all(dap, stops)
    assert run_exit(nvim, run_id)["code"] == 0
    assert "results [10, 20]" in run_buffer(nvim, run_id)[:]
    dap.wait_no_session()
    wait_for(lambda: run_processes(run_id) == [], 30, what="no process of the run left")


def test_srun_ranks_each_stop_in_their_own_session(nvim, dap, make_project, cluster):  # noqa: F811
    """`srun python3 main.py` in a job with --ntasks=2: one session per rank, named with its
    rank and host, each stopped at the breakpoint with its own rank; continuing both, the
    job ends with 0 and nothing of it is left."""
    proj = slurm_project(make_project, cluster, args=["--ntasks=2"])
    main = proj.write("main.py", RANKS)
    dap.breakpoint(main, RANK_LINE)
    run_id = debug(nvim, proj, main, "srun python3 main.py")
    stops = dap.stopped_sessions(2, 180)
    assert sorted(s["name"] for s in stops) == [f"remote_dev {run_id} rank {r} @ {HOST}" for r in (0, 1)]
    for s in stops:
        assert (s["stop"]["path"], s["stop"]["line"]) == (str(main), RANK_LINE)
        assert dap.evaluate_in(s["id"], "rank") == s["name"].split(" rank ")[1].split()[0]
    continue_all(dap, stops)
    assert run_exit(nvim, run_id, 120)["code"] == 0
    out = run_buffer(nvim, run_id)[:]
    # srun labels each line with its rank (SLURM_LABELIO, set for jobs of more than one task)
    assert f"0: rank 0 on {HOST} part 0" in out and f"1: rank 1 on {HOST} part 10" in out
    dap.wait_no_session()
    wait_for(lambda: cluster.squeue() == [], 30, what="empty queue")
    wait_for(lambda: run_processes(run_id) == [], 30, what="no process of the job left")
    assert all(local_listener_closed(p) for p in ready_ports(nvim, run_id))


def test_srun_terminate_from_one_rank_stops_the_whole_job(nvim, dap, make_project, cluster):  # noqa: F811
    """dap.terminate() in rank 1's session cancels the job: every rank, every listener,
    every session ends; the run is shown stopped by the debugger."""
    proj = slurm_project(make_project, cluster, args=["--ntasks=2"])
    main = proj.write("main.py", RANKS)
    dap.breakpoint(main, RANK_LINE)
    run_id = debug(nvim, proj, main, "srun python3 main.py")
    stops = dap.stopped_sessions(2, 180)
    rank1 = next(s for s in stops if " rank 1 @ " in s["name"])
    dap.focus(rank1["id"])
    dap.terminate()
    assert run_exit(nvim, run_id, 120)["code"] != 0
    assert "■ stopped by dap terminate" in run_buffer(nvim, run_id)[0]
    dap.wait_no_session()
    wait_for(lambda: cluster.squeue() == [], 30, what="empty queue")
    wait_for(lambda: run_processes(run_id) == [], 30, what="no process of the job left")
    ports = ready_ports(nvim, run_id)
    assert len(ports) == 2 and all(local_listener_closed(p) for p in ports)


LAUNCHER = '''\
#!/bin/sh
# a launcher of our own: one python per rank, with MPI's rank variables (as mpirun sets them)
for r in 0 1; do
    PMI_RANK=$r PMI_SIZE=2 BY_HAND=1 python3 main.py &
done
wait
'''


def test_a_generic_launcher_and_stop_on_entry_by_rank(nvim, dap, make_project):
    """Any launcher that starts Python processes (here a shell script setting PMI_RANK as
    mpirun does): each process is a session named with its rank; with stop_on_entry = { 1 }
    rank 1 stops at the program's first line, rank 0 runs to the breakpoint.  The program's
    own debugpy.listen() + wait_for_client() (per rank, by hand) go through unharmed."""
    proj = make_project()
    main = proj.write("main.py", RANKS)
    proj.write("launch.sh", LAUNCHER)
    nvim.exec_lua("require('remote_dev').setup({ stop_on_entry = { 1 } })")
    dap.breakpoint(main, RANK_LINE)
    run_id = debug(nvim, proj, main, "sh launch.sh")
    stops = dap.stopped_sessions(2, 120)
    by_name = {s["name"]: s for s in stops}
    rank0, rank1 = (by_name[f"remote_dev {run_id} rank {r} @ {HOST}"] for r in (0, 1))
    assert (rank1["stop"]["path"], rank1["stop"]["line"]) == (str(main), 1)     # its first line
    assert (rank0["stop"]["path"], rank0["stop"]["line"]) == (str(main), RANK_LINE)
    dap.continue_in(rank1["id"])
    wait_for(lambda: next(s for s in dap.all_sessions() if s["id"] == rank1["id"])["stop"], 60,
             what="rank 1 at the breakpoint")
    stop = next(s for s in dap.all_sessions() if s["id"] == rank1["id"])["stop"]
    assert (stop["path"], stop["line"]) == (str(main), RANK_LINE)
    assert dap.evaluate_in(rank1["id"], "rank") == "1"
    continue_all(dap, [rank0, rank1])
    assert run_exit(nvim, run_id)["code"] == 0
    out = run_buffer(nvim, run_id)[:]
    # srun labels each line with its rank (SLURM_LABELIO, set for jobs of more than one task)
    assert f"rank 0 on {HOST} part 0" in out and f"rank 1 on {HOST} part 10" in out
    dap.wait_no_session()


def test_restart_from_one_rank_debugs_every_rank_again(nvim, dap, make_project):
    """dap.restart() in rank 1's session stops the whole run and debugs the same command
    again: a new run, again one session per rank, each stopping at the breakpoint."""
    proj = make_project()
    main = proj.write("main.py", RANKS)
    proj.write("launch.sh", LAUNCHER)
    dap.breakpoint(main, RANK_LINE)
    first = debug(nvim, proj, main, "sh launch.sh")
    stops = dap.stopped_sessions(2, 120)
    dap.focus(next(s for s in stops if " rank 1 @ " in s["name"])["id"])
    dap.restart()
    assert run_exit(nvim, first)["code"] != 0
    assert "■ stopped by dap terminate" in run_buffer(nvim, first)[0]

    def new_stops():
        found = [s for s in dap.all_sessions() if s["stop"] and s["run"] != first]
        return found if len(found) == 2 else None
    again = wait_for(new_stops, 120, what=f"both ranks of the new run stopped: {dap.all_sessions()}")
    second = again[0]["run"]
    assert sorted(s["name"] for s in again) == [f"remote_dev {second} rank {r} @ {HOST}" for r in (0, 1)]
    assert [e["data"]["cmd"] for e in nvim.events("RemoteDevRunStart")] == ["sh launch.sh", "sh launch.sh"]
    continue_all(dap, again)
    assert run_exit(nvim, second)["code"] == 0
    dap.wait_no_session()
    wait_for(lambda: run_processes(first) == [] and run_processes(second) == [], 30, what="no process left")

TORCH_MAIN = '''\
import os
import sys

import torch
import torch.distributed as dist


def contribution(rank):
    value = torch.tensor([rank + 1.0])
    return value


dist.init_process_group("gloo")
rank = dist.get_rank()
total = contribution(rank)
dist.all_reduce(total)
# one write per line: torchrun starts the ranks unbuffered (-u), print() writes piece by piece
sys.stdout.write(f"rank {rank} local {os.environ['LOCAL_RANK']} of {os.environ['WORLD_SIZE']} sum {total.item()}\\n")
dist.destroy_process_group()
'''
TORCH_LINE = 9       # value = torch.tensor(...)


@pytest.fixture(scope="module")
def torch_python():
    """The real PyTorch (CPU), in an environment of the test bed's cache (support/torch_env.py)."""
    from support.torch_env import torch_python as make

    python, why = make()
    require(python is not None, why)
    return python


def test_torchrun_ranks_each_stop_in_their_own_session(nvim, dap, make_project, torch_python):
    """The real torchrun (PyTorch's elastic launcher, --standalone, 2 processes, gloo): torchrun
    itself runs free, each rank it starts is a session named with its rank; both stop at the
    breakpoint, continue, and the all_reduce over both ranks completes: exit 0.  That
    environment has no debugpy: the plugin's is supplied."""
    proj = make_project()
    main = proj.write("main.py", TORCH_MAIN)
    dap.breakpoint(main, TORCH_LINE)
    torchrun = torch_python.parent / "torchrun"
    run_id = debug(nvim, proj, main, f"{torchrun} --standalone --nproc-per-node 2 main.py")
    stops = dap.stopped_sessions(2, 240)
    assert sorted(s["name"] for s in stops) == [f"remote_dev {run_id} rank {r} @ {HOST}" for r in (0, 1)]
    assert sorted(dap.evaluate_in(s["id"], "rank") for s in stops) == ["0", "1"]
    assert all((s["stop"]["path"], s["stop"]["line"]) == (str(main), TORCH_LINE) for s in stops)
    assert len(dap.all_sessions()) == 2                           # no session for torchrun itself
    continue_all(dap, stops)
    assert run_exit(nvim, run_id, 180)["code"] == 0
    out = run_buffer(nvim, run_id)[:]
    assert "rank 0 local 0 of 2 sum 3.0" in out and "rank 1 local 1 of 2 sum 3.0" in out
    dap.wait_no_session()
    wait_for(lambda: run_processes(run_id) == [], 30, what="no process of the run left")

