"""A second, unprivileged user of the remote (support/attacker.py: mallory) attacks real
sessions of an unprivileged victim: she polls for new listening sockets of the victim every
5 ms and speaks DAP to each at once, tries to read everything the plugin keeps on the
remote, and looks for secrets on command lines. The victim's debug runs (the real nvim-dap
in a real Neovim) stop at their owner's breakpoints, and mallory gets nothing: no byte
answered, no attach, no evaluate, no file, no secret. The figures go to the Guarantees."""
from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path
from typing import Any, Iterator

import pytest

from conftest import events, require, run_processes, wait_for
from support.attacker import SECRET_PATTERN, Mallory
from support.podman import TEST_IMAGE, podman_env
from support.remote import Remote, hello_server, loose_modes
from support.slurm import SlurmCluster, slurm_available

from test_debug import debug_project, drive_session, image, run_debug  # noqa: F401 - the module's image
from test_debug_nvim import run_buffer, run_exit
from test_persist import _name, have_jupyter, kernel_name, venv_project
from remote_dev.services import NOTEBOOK, remote_name
from test_debug_ranks import POOL, RANK_LINE, RANKS, continue_all, debug

from .conftest import FaultProject


@pytest.fixture(scope="module")
def mallory() -> Iterator[Mallory]:
    require(os.geteuid() == 0, "the attacking user is made with useradd: run the tests as root")
    m = Mallory()
    yield m
    m.remove()


@pytest.fixture(scope="module")
def user_cluster() -> Iterator[SlurmCluster]:
    """The loopback Slurm cluster in a folder the unprivileged victim can read (its
    slurm.conf, munge's socket)."""
    reason = slurm_available()
    require(reason is None, f"slurm: {reason}")
    base = tempfile.mkdtemp(prefix="rdslurm-")
    os.chmod(base, 0o755)
    c = SlurmCluster(os.path.join(base, "c"))
    try:
        c.start()
        yield c
    finally:
        c.stop()
        shutil.rmtree(base, ignore_errors=True)


def victim_project(tmp_path: Path, remote: Remote, name: str = "proj", **target: Any) -> FaultProject:
    root = tmp_path / name
    root.mkdir()
    remote_root, remote_dir = remote.remote_root(f"{tmp_path.name}-{name}")
    (root / ".remote-dev.toml").write_text(remote.target_toml(remote_root, **target))
    return FaultProject(root, remote_dir, remote_root, remote)


def attacked(figures: Any, user: str, what: str, got: dict[str, int], loose: list[str], least: int = 2) -> None:
    """The figures of one attack, then the guarantee: she tried, and got nothing."""
    got.setdefault("stolen", 0)
    won = got["answered"] + got["accepted"] + got["evaluated"] + got["read"] + got["secrets"] + got["stolen"]
    figures.add(f"attacker: {what}", user, got["tried"], won + len(loose),
                note=f"tried {got['tried']} / answered {got['answered']} / attach {got['accepted']} / "
                     f"evaluate {got['evaluated']} / stolen {got['stolen']} / read {got['read']} / "
                     f"secrets {got['secrets']}")
    assert got["tried"] >= least, f"the attacker found nothing to try: {got}"
    assert won == 0, got
    assert loose == [], loose


def owners_stops(dap: Any, n: int, timeout: float, got: dict[str, int]) -> list[dict[str, Any]]:
    """The owner's n sessions stopped at the breakpoint; else the run counts as stolen."""
    try:
        return dap.stopped_sessions(n, timeout)
    except AssertionError:
        got["stolen"] = 1
        raise


def test_pool_debug_run_under_attack(user_remote, mallory, tmp_path, nvim, dap, figures):
    """A pool debug run (spawn): each worker stops at the owner's breakpoint as a child
    session while mallory tries every new socket of the victim; every file and folder of
    the run is 0700/0600."""
    remote = user_remote
    proj = victim_project(tmp_path, remote)
    main = proj.write("main.py", POOL)
    mallory.start(remote.uid, [str(remote.cache)])
    stolen: dict[str, int] = {}
    try:
        dap.breakpoint(main, 6)                          # y = x * 10, in the workers only
        run_id = debug(nvim, proj, main, "python3 main.py spawn")
        stops = owners_stops(dap, 2, 120, stolen)
        # the run's local listener (this Neovim's side, e.g. on a shared login node)
        local = mallory.try_port("127.0.0.1", nvim.events("RemoteDevDebugReady")[-1]["data"]["port"])
        assert all((s["stop"]["path"], s["stop"]["line"]) == (str(main), 6) for s in stops), stops
        assert sorted(dap.evaluate_in(s["id"], "x") for s in stops) == ["1", "2"]
        loose = loose_modes(remote.cache / "runs" / run_id)
        dap.clear_breakpoints()
        continue_all(dap, stops)
        assert run_exit(nvim, run_id)["code"] == 0
        assert "results [10, 20]" in run_buffer(nvim, run_id)[:]
        loose += loose_modes(remote.cache / "runs" / run_id)
        dap.wait_no_session()
        wait_for(lambda: run_processes(run_id) == [], 30, what="no process of the run left")
    finally:
        got = {**mallory.stop(), **stolen}
        if stolen:
            attacked(figures, remote.kind, "pool debug run", got, [])
    attacked(figures, remote.kind, "pool debug run", got, loose)
    assert local["tried"] == 1 and local["answered"] == 0, f"the local listener answered another user: {local}"


def test_srun_two_rank_debug_run_under_attack(user_remote, mallory, tmp_path, nvim, dap, figures, user_cluster):
    """`srun python3 main.py` in a job of 2 tasks (the victim's): each rank stops at the
    owner's breakpoint in its own session while mallory tries every new socket."""
    remote = user_remote
    proj = victim_project(tmp_path, remote, runner="slurm", env=dict(user_cluster.env))
    (proj.root / ".remote-dev.toml").write_text((proj.root / ".remote-dev.toml").read_text()
                                                + '\n[targets.test.slurm]\nargs = ["--ntasks=2"]\n')
    main = proj.write("main.py", RANKS)
    mallory.start(remote.uid, [str(remote.cache)])
    stolen: dict[str, int] = {}
    try:
        dap.breakpoint(main, RANK_LINE)
        run_id = debug(nvim, proj, main, "srun python3 main.py")
        stops = owners_stops(dap, 2, 180, stolen)
        host = socket.gethostname()
        assert sorted(s["name"] for s in stops) == [f"remote_dev {run_id} rank {r} @ {host}" for r in (0, 1)]
        for s in stops:
            assert (s["stop"]["path"], s["stop"]["line"]) == (str(main), RANK_LINE)
            assert dap.evaluate_in(s["id"], "rank") == s["name"].split(" rank ")[1].split()[0]
        loose = loose_modes(remote.cache / "runs" / run_id)
        continue_all(dap, stops)
        assert run_exit(nvim, run_id, 120)["code"] == 0
        loose += loose_modes(remote.cache / "runs" / run_id)
        dap.wait_no_session()
        wait_for(lambda: user_cluster.squeue() == [], 30, what="empty queue")
    finally:
        got = {**mallory.stop(), **stolen}
        if stolen:
            attacked(figures, remote.kind, "srun 2-rank debug run", got, [])
    attacked(figures, remote.kind, "srun 2-rank debug run", got, loose)


def test_container_debug_run_under_attack(engine, make_project, image, mallory, figures):  # noqa: F811
    """A debug run in a container with its own network (debugpy listening inside it, its
    port published on the remote's 127.0.0.1): mallory connects to the published port and
    to the run's local listener at once and gets no byte; no secret is on a command line;
    the owner's session stops at the breakpoint (through the run's secret)."""
    proj, _, util = debug_project(
        make_project, target={"runner": "container", "env": podman_env()},
        config_extra=f'\n[targets.test.container]\nengine = "podman"\nimage = "{TEST_IMAGE}"\nworkdir = "/workspace"\n')
    res = run_debug(engine, proj)
    got = {"tried": 0, "answered": 0, "accepted": 0, "evaluated": 0, "read": 0, "secrets": 0}
    for port in (res["remote_port"], res["port"]):
        for key, n in mallory.try_port("127.0.0.1", port).items():
            got[key] += n
    got["secrets"] = len([pid for pid in run_processes(res["id"]) if secret_on_command_line(pid)])
    drive_session(res["config"], util)
    ex = wait_for(lambda: next((e for e in events(engine, "RemoteDevRunExit") if e["id"] == res["id"]), None), 60)
    assert ex["code"] == 0
    attacked(figures, "root", "container debug run", got, [])


def secret_on_command_line(pid: int) -> bool:
    try:
        line = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return False
    return bool(re.search(SECRET_PATTERN, line))


def test_forward_under_attack(engine, make_project, mallory, figures):
    """A :RemoteForward's local port (on a shared login node, where Neovim runs): mallory
    connects and gets nothing of the remote service; its owner does."""
    srv = hello_server()
    try:
        proj = make_project()
        fwd = engine.call_sync("forward", {"cwd": str(proj.root)}, {"port": srv.getsockname()[1]}, timeout=60)
        got = mallory.try_port("127.0.0.1", fwd["local_port"])
        with socket.create_connection(("127.0.0.1", fwd["local_port"]), timeout=5) as c:
            assert c.recv(100) == b"hello from the remote\n"     # the owner still gets through
    finally:
        srv.close()
    attacked(figures, "root", "forward's local port", got, [], least=1)


def test_shell_under_attack(user_remote, mallory, tmp_path, engine, figures):
    """A :RemoteShell of the victim (tmux on the user's own socket): mallory cannot connect
    to its server nor read what the plugin keeps, and sees no secret."""
    remote = user_remote
    proj = victim_project(tmp_path, remote)
    ctx = {"cwd": str(proj.root)}
    engine.call_sync("push", ctx, {}, timeout=60)
    engine.call_sync("shell_open", ctx, {"id": 1, "name": "main", "cols": 100, "rows": 30}, timeout=60)
    engine.call_sync("shell_input", ctx, {"id": 1, "data": 'echo "SOCK=${TMUX%%,*}"\r'})
    shown = lambda: b"".join(p["data"] for k, p in engine.reports if k == "shell_output").decode(errors="replace")  # noqa: E731
    sock = wait_for(lambda: re.search(r"SOCK=(/[^\s\x1b]+)", shown()), 20, what="the tmux socket").group(1)
    assert os.path.exists(sock), sock
    mallory.start(remote.uid, [str(remote.cache), os.path.dirname(sock), f"unix:{sock}"])
    try:
        engine.call_sync("shell_input", ctx, {"id": 1, "data": "echo private-$((6*7))\r"})
        wait_for(lambda: "private-42" in shown(), 20)
    finally:
        got = mallory.stop()
        engine.call_sync("shell_kill", ctx, {"name": "main"}, timeout=60)
    attacked(figures, remote.kind, "shell", got, loose_modes(remote.cache / "shells"), least=1)


def test_notebook_under_attack(engine, make_project, mallory, figures):
    """A :RemoteNotebook of root: mallory asks its server (on the remote's 127.0.0.1) for
    its contents without the token and is refused; its local forward refuses her; its token
    is on no command line."""
    have_jupyter()
    proj, ctx = venv_project(make_project)
    try:
        nb = engine.call_sync("notebook", ctx, {}, timeout=120)
        server = mallory.try_http("127.0.0.1", nb["remote_port"])
        local = mallory.try_http("127.0.0.1", nb["local_port"])
        name = engine.submit(_name(engine, ctx, NOTEBOOK, remote_name)).result(10)
        secrets = len([pid for pid in run_processes(name) if secret_on_command_line(pid)])
    finally:
        engine.call_sync("notebook", ctx, {"stop": True}, timeout=60)
    assert server["answered"] == 1, server            # the server is there and answers: with a refusal
    got = {"tried": server["tried"] + local["tried"], "answered": local["answered"],
           "accepted": server["accepted"] + local["accepted"], "evaluated": 0, "read": 0, "secrets": secrets}
    attacked(figures, "root", "notebook (server without token; local forward)", got, [])


def listening_ports(pids: list[int]) -> list[int]:
    """TCP ports the processes listen on (ss as root names each socket's process)."""
    out = subprocess.run(["ss", "-Hltnp"], capture_output=True, text=True, timeout=30).stdout
    ports = set()
    for line in out.splitlines():
        if any(f"pid={pid}," in line for pid in pids):
            ports.add(int(line.split()[3].rsplit(":", 1)[1]))
    return sorted(ports)


def test_kernel_under_attack(engine, make_project, mallory, figures, tmp_path):
    """A :RemoteSend kernel of root: mallory sends each of its ports an execute_request (ZMQ
    as the kernel speaks it) that would write a file, signed without the kernel's key: no
    reply, the code never runs; its key is on no command line. The owner's code runs."""
    have_jupyter()
    proj, ctx = venv_project(make_project)
    marker = Path(f"/tmp/rdmallory-was-here-{os.getpid()}")
    code = f"open({str(marker)!r}, 'w').write('x')"
    got = {"tried": 0, "answered": 0, "accepted": 0, "evaluated": 0, "read": 0, "secrets": 0}
    try:
        assert engine.call_sync("send", ctx, {"code": "6 * 7"}, timeout=120)["status"] == "ok"
        name = kernel_name(engine, ctx)
        ports = listening_ports(run_processes(name))
        assert len(ports) >= 5, ports          # shell, iopub, stdin, control, heartbeat
        for port in ports:
            for key, n in mallory.try_kernel("127.0.0.1", port, code).items():
                got[key] += n
        got["secrets"] = len([pid for pid in run_processes(name) if secret_on_command_line(pid)])
        assert engine.call_sync("send", ctx, {"code": "6 * 7 + 1"}, timeout=60)["status"] == "ok"
    finally:
        engine.call_sync("kernel", ctx, {"what": "stop"}, timeout=60)
    got["evaluated"] += int(marker.exists())
    marker.unlink(missing_ok=True)
    attacked(figures, "root", "kernel (execute_request without the key)", got, [])
