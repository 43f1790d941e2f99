"""Debugging at the protocol level: a DAP client (support/dap.py) through a debug run's
local listener with the attach configuration the plugin generates, for runner process and
container; how the listener treats terminate and disconnect. The user flows with the real
nvim-dap are in test_debug_nvim.py."""
from __future__ import annotations

import os
import subprocess

import pytest

from conftest import events, require, run_processes, wait_for

from support.dap import DapClient
from support.podman import TEST_IMAGE, ensure_test_image, podman_available, podman_env
from support.pythons import pyenv_python
from support.remote import hello_server

from remote_dev.dap_proxy import ends_debuggee
from remote_dev.errors import RemoteDevError
from remote_dev.debug_launch import boot_command, debug_command

MAIN = '''\
from pkg import util


def main():
    total = 0
    for i in range(3):
        total = util.add(total, i)
    print("total", total, flush=True)


main()
'''
UTIL = '''\
def add(a, b):
    result = a + b
    return result
'''
FAILING_UTIL = '''\
def add(a, b):
    if b == 2:
        raise ValueError(f"cannot add {b}")
    return a + b
'''


def debug_project(make_project, util=UTIL, **kw):
    """The sample program of the debug tests: (project, main.py, pkg/util.py)."""
    proj = make_project(**kw)
    proj.write("pkg/__init__.py", "")
    return proj, proj.write("main.py", MAIN), proj.write("pkg/util.py", util)


def listening_addresses(port):
    """Local addresses with a LISTEN socket on port, from /proc/net/tcp (this machine is the remote)."""
    out = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as f:
            next(f)
            for line in f:
                fields = line.split()
                addr, p = fields[1].split(":")
                if int(p, 16) == port and fields[3] == "0A":
                    out.append(addr)
    return out


def drive_session(cfg, local_util):
    """initialize, attach, breakpoint on the LOCAL file, stop there, stack in local paths, continue, exit."""
    dap = DapClient(cfg["connect"]["host"], cfg["connect"]["port"])
    try:
        dap.request("initialize", clientID="remote-dev-tests", adapterID="debugpy", pathFormat="path",
                    linesStartAt1=True, columnsStartAt1=True)
        attach_seq = dap.send("attach", **{k: v for k, v in cfg.items() if k not in ("type", "request", "name")})
        dap.event("initialized")
        bp = dap.request("setBreakpoints", source={"path": str(local_util)}, breakpoints=[{"line": 3}])
        assert bp["body"]["breakpoints"][0]["verified"], bp
        dap.request("configurationDone")
        dap.response(attach_seq)
        stopped = dap.event("stopped", 60)
        frames = dap.request("stackTrace", threadId=stopped["body"]["threadId"])["body"]["stackFrames"]
        assert frames[0]["source"]["path"] == str(local_util) and frames[0]["line"] == 3
        scopes = dap.request("scopes", frameId=frames[0]["id"])["body"]["scopes"]
        variables = dap.request("variables", variablesReference=scopes[0]["variablesReference"])["body"]["variables"]
        assert {v["name"]: v["value"] for v in variables}["result"] == "0"
        ev = dap.request("evaluate", expression="a + b + 100", frameId=frames[0]["id"], context="repl")
        assert ev["body"]["result"] == "100"
        dap.request("setBreakpoints", source={"path": str(local_util)}, breakpoints=[])
        dap.request("continue", threadId=stopped["body"]["threadId"])
        dap.event("terminated", 60)
    finally:
        dap.close()


def run_debug(engine, proj):
    res = engine.call_sync("debug", {"cwd": str(proj.root)}, {"cmd": "python3 main.py"}, timeout=180)
    ready = events(engine, "RemoteDevDebugReady")[-1]
    assert ready == {"id": res["id"], "port": res["port"], "name": f"remote_dev {res['id']}", "rank": None,
                     "host": os.uname().nodename}
    return res


def test_debug_process_runner_hits_local_breakpoint(engine, make_project):
    proj, _, util = debug_project(make_project)
    res = run_debug(engine, proj)
    cfg = res["config"]
    assert cfg["type"] == "remote_dev" and cfg["request"] == "attach"
    assert cfg["pathMappings"] == [{"localRoot": str(proj.root), "remoteRoot": str(proj.remote_root)}]
    assert cfg["connect"]["host"] == "127.0.0.1"
    assert listening_addresses(res["remote_port"]) == ["0100007F"]  # 127.0.0.1 only
    drive_session(cfg, util)
    ex = wait_for(lambda: next((e for e in events(engine, "RemoteDevRunExit") if e["id"] == res["id"]), None), 60)
    assert ex["code"] == 0
    out = [ln for k, p in engine.reports if k == "run_output" and p["id"] == res["id"] for ln in p["lines"]]
    assert "total 3" in out  # program output still streams to the run buffer
    assert any(k == "debug_end" and p["id"] == res["id"] for k, p in engine.reports)


def test_debugpy_is_supplied_when_missing(engine, make_project, tmp_path):
    """The remote python here has no debugpy (system python); the plugin uploads its own."""
    probe = subprocess.run(["python3", "-c", "import debugpy"], capture_output=True)
    proj = make_project()
    proj.write("main.py", "print('hi')\n")
    engine.call_sync("status", {"cwd": str(proj.root)}, timeout=60)
    from remote_dev.debug_launch import ensure_debugpy

    sess = dict(engine.projects)[proj.root].session()
    path = engine.submit(ensure_debugpy(sess)).result(120)
    check = subprocess.run(["python3", "-c", "import debugpy, sys; print(debugpy.__file__)"],
                           env={**os.environ, "PYTHONPATH": path}, capture_output=True, text=True)
    assert check.returncode == 0 and check.stdout.startswith(path), (probe.returncode, check)


def test_stop_ends_debug_session_and_forward(engine, make_project):
    proj = make_project()
    proj.write("main.py", "print('never reached')\n")
    res = run_debug(engine, proj)
    engine.call_sync("stop", {"cwd": str(proj.root)}, {"id": res["id"]}, timeout=60)
    wait_for(lambda: any(k == "debug_end" and p["id"] == res["id"] for k, p in engine.reports), 30)
    import socket
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", res["port"]), timeout=2).recv(1)


def attach_and_stop_at(cfg, local_file, line):
    """A DAP client through the local listener, stopped at a breakpoint of the local file."""
    dap = DapClient(cfg["connect"]["host"], cfg["connect"]["port"])
    dap.request("initialize", clientID="remote-dev-tests", adapterID="debugpy", pathFormat="path",
                linesStartAt1=True, columnsStartAt1=True)
    attach_seq = dap.send("attach", **{k: v for k, v in cfg.items() if k not in ("type", "request", "name")})
    dap.event("initialized")
    dap.request("setBreakpoints", source={"path": str(local_file)}, breakpoints=[{"line": line}])
    dap.request("configurationDone")
    dap.response(attach_seq)
    dap.event("stopped", 60)
    return dap


def exit_of(engine, run_id, timeout=60):
    return wait_for(lambda: next((e for e in events(engine, "RemoteDevRunExit") if e["id"] == run_id), None),
                    timeout, 0.05, what=f"exit of {run_id}")


def final_state(engine, run_id):
    return next(p for k, p in engine.reports if k == "run_state" and p["id"] == run_id and p.get("final"))


def test_terminate_is_answered_and_stops_the_run(engine, make_project):
    """The listener answers a client's terminate itself and stops the run like :RemoteStop;
    the run is shown stopped by the debugger and its interrupt stays out of quickfix."""
    proj, _, util = debug_project(make_project)
    res = run_debug(engine, proj)
    dap = attach_and_stop_at(res["config"], util, 3)
    try:
        seq = dap.send("terminate")
        assert dap.response(seq, 5)["command"] == "terminate"
        ex = exit_of(engine, res["id"])
    finally:
        dap.close()
    assert ex["code"] != 0
    state = final_state(engine, res["id"])
    assert state["state"] == "stopped" and state["stopped_by"] == "dap terminate"
    assert state["quickfix"] == []
    assert run_processes(res["id"]) == []


def test_disconnect_keeping_the_debuggee_lets_it_finish(engine, make_project):
    """disconnect with terminateDebuggee false detaches: the program goes on to its own end."""
    proj, _, util = debug_project(make_project)
    res = run_debug(engine, proj)
    dap = attach_and_stop_at(res["config"], util, 3)
    try:
        dap.request("setBreakpoints", source={"path": str(util)}, breakpoints=[])
        dap.request("disconnect", terminateDebuggee=False)
    finally:
        dap.close()
    ex = exit_of(engine, res["id"])
    assert ex["code"] == 0
    assert final_state(engine, res["id"])["state"] == "exited"


def test_a_debug_run_ending_before_debugpy_listens_says_so(engine, make_project):
    proj, _, _ = debug_project(make_project)
    with pytest.raises(RemoteDevError, match=r"ended \(exit 127\) before debugpy listened"):
        engine.call_sync("debug", {"cwd": str(proj.root)}, {"cmd": "python9 main.py"}, timeout=60)


def test_ends_debuggee():
    assert ends_debuggee({"type": "request", "command": "terminate"})
    assert ends_debuggee({"type": "request", "command": "disconnect"})
    assert ends_debuggee({"type": "request", "command": "disconnect", "arguments": {"terminateDebuggee": True}})
    assert ends_debuggee({"type": "request", "command": "disconnect",
                          "arguments": {"terminateDebuggee": False, "restart": True}})
    assert not ends_debuggee({"type": "request", "command": "disconnect", "arguments": {"terminateDebuggee": False}})
    assert not ends_debuggee({"type": "event", "event": "terminated"})
    assert not ends_debuggee({"type": "request", "command": "continue"})


def test_command_rewrite():
    """Direct (containers with their own network): the command rewritten to start under
    `python -m debugpy`; a launcher there is refused with a message naming it."""
    cmd = debug_command("python3 -u train.py --lr 1", "python3", "127.0.0.1", 5678, [])
    assert "exec python3 -Xfrozen_modules=off -u -m debugpy --listen 127.0.0.1:5678 --wait-for-client train.py --lr 1" in cmd
    cmd = debug_command("pytest -x tests", "python3", "127.0.0.1", 5678, [((3, 10), "/c/dbg")])
    assert "-m debugpy --listen 127.0.0.1:5678 --wait-for-client -m pytest -x tests" in cmd
    assert "_rd_debugpy=/c/dbg;" in cmd and 'export PYTHONPATH="$_rd_debugpy' in cmd
    cmd = debug_command("OMP_NUM_THREADS=1 python -m pkg.train", "python3", "0.0.0.0", 1, [])
    assert "export OMP_NUM_THREADS=1; exec python -Xfrozen_modules=off -m debugpy --listen 0.0.0.0:1 " \
           "--wait-for-client -m pkg.train" in cmd
    # the command's own variables reach the program: the line up to its exec, then `env`
    cmd = debug_command("GREETING='a b' python3 x.py", "python3", "127.0.0.1", 1, [])
    out = subprocess.run(["sh", "-c", cmd.rsplit("exec ", 1)[0] + "exec env"], capture_output=True, text=True)
    assert "GREETING=a b" in out.stdout.splitlines()
    with pytest.raises(RemoteDevError, match="`torchrun` .a launcher. in a container"):
        debug_command("torchrun --nproc-per-node 2 x.py", "python3", "0.0.0.0", 1, [])


@pytest.mark.parametrize("minor,want", [(9, "/c/debugpy-old"), (12, "/c/debugpy")])
def test_a_container_python_without_debugpy_gets_the_newest_that_runs_on_it(minor, want):
    """Direct: the debugpys mounted into a container, newest first; the command line puts
    on PYTHONPATH the first whose oldest Python the interpreter meets (run here by real
    Pythons 3.9 and 3.12)."""
    python = pyenv_python(minor)
    require(python is not None, f"Python 3.{minor} under ~/.pyenv/versions")
    cmd = debug_command(f"{python} x.py", str(python), "127.0.0.1", 1,
                        [((3, 10), "/c/debugpy"), ((3, 8), "/c/debugpy-old")])
    out = subprocess.run(["sh", "-c", cmd.rsplit("exec ", 1)[0] + "exec env"], capture_output=True, text=True,
                         env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"})
    assert f"PYTHONPATH={want}" in out.stdout.splitlines(), (cmd, out.stdout[-500:], out.stderr)


def boot_env(cmd, env=None):
    """The environment `cmd` (a boot command line, its exec replaced by `env`) gives the program."""
    line = boot_command(cmd, "python3", {"REMOTE_DEV_DEBUG": "/c/runs/1/debug", "PYTHONPATH": "/c/boot", **(env or {})})
    head, _, prog = line.rpartition("exec ")
    out = subprocess.run(["sh", "-c", head + "exec env"], capture_output=True, text=True,
                         env={"PATH": os.environ["PATH"], "PYTHONPATH": "/user/lib"})
    return prog, dict(ln.split("=", 1) for ln in out.stdout.splitlines() if "=" in ln)


def test_boot_command_runs_the_command_as_typed_with_the_bootstrap_in_front():
    """Bootstrap (process and Slurm runners): the command as typed, the bootstrap first on
    PYTHONPATH (before the command's own PYTHONPATH and the one in force), the run's marker
    in the environment; a bare program that is no launcher runs as `python -m prog`."""
    prog, env = boot_env("python3 -u train.py --lr 1")
    assert prog == "python3 -Xfrozen_modules=off -u train.py --lr 1"
    assert env["PYTHONPATH"] == "/c/boot:/user/lib" and env["REMOTE_DEV_DEBUG"] == "/c/runs/1/debug"
    prog, env = boot_env("PYTHONPATH=src:. GREETING='a b' srun --ntasks=2 python x.py")
    assert prog == "srun --ntasks=2 python x.py"
    assert env["PYTHONPATH"] == "/c/boot:src:." and env["GREETING"] == "a b"
    assert boot_env("torchrun --nproc-per-node 2 x.py")[0] == "torchrun --nproc-per-node 2 x.py"
    assert boot_env("mpirun -n 2 python x.py")[0] == "mpirun -n 2 python x.py"
    assert boot_env("./launch.sh 4")[0] == "./launch.sh 4"
    assert boot_env("pytest -x tests")[0] == "python3 -Xfrozen_modules=off -m pytest -x tests"
    line = boot_command("cd sub && python x.py $ARGS", "python3", {"REMOTE_DEV_DEBUG": "/d", "PYTHONPATH": "/b"})
    assert line.endswith("; cd sub && python x.py $ARGS")     # shell syntax: as typed


@pytest.fixture(scope="module")
def image():
    reason = podman_available()
    require(reason is None, f"podman: {reason}")
    return ensure_test_image()


def test_debug_container_runner_hits_local_breakpoint(engine, make_project, image):
    proj, _, util = debug_project(
        make_project, target={"runner": "container", "env": podman_env()},
        config_extra=f'\n[targets.test.container]\nengine = "podman"\nimage = "{TEST_IMAGE}"\nworkdir = "/workspace"\n')
    res = run_debug(engine, proj)
    cfg = res["config"]
    assert cfg["pathMappings"] == [{"localRoot": str(proj.root), "remoteRoot": "/workspace"}]
    assert listening_addresses(res["remote_port"]) == ["0100007F"]  # published on 127.0.0.1 only
    drive_session(cfg, util)
    ex = wait_for(lambda: next((e for e in events(engine, "RemoteDevRunExit") if e["id"] == res["id"]), None), 60)
    assert ex["code"] == 0


def test_remote_forward_survives_reconnect(engine, make_project, tmp_path):
    """:RemoteForward to a TCP server on the remote's 127.0.0.1; the local port stays the
    same after the connection drops."""
    import socket

    srv = hello_server()
    remote_port = srv.getsockname()[1]
    proj = make_project()
    ctx = {"cwd": str(proj.root)}
    fwd = engine.call_sync("forward", ctx, {"port": remote_port}, timeout=60)
    local = fwd["local_port"]

    def fetch():
        with socket.create_connection(("127.0.0.1", local), timeout=5) as c:
            return c.recv(100)
    assert fetch() == b"hello from the remote\n"
    sess = engine.projects[proj.root].session()
    old_pid = sess.hello["pid"]

    async def cut():
        sess.conn.abort()
    engine.submit(cut()).result(10)
    wait_for(lambda: sess.connected and sess.hello["pid"] != old_pid, 30, 0.05, what="reconnect")

    def works():
        try:
            return fetch() == b"hello from the remote\n"
        except OSError:
            return False
    wait_for(works, 30, 0.1, what="forward on the same local port after reconnect")
    srv.close()
