"""Shells, the kernel and the notebook server through the engine, the real sshd, real tmux,
real ipykernel and jupyter_server (the venv's python acts as the remote's python)."""
from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import urllib.request

import pytest

from conftest import events, require, run_processes, wait_for
from remote_dev.errors import RemoteDevError


@pytest.fixture(autouse=True)
def leave_nothing(tmp_path):
    """A failed test leaves no kernel or server of its projects behind (they outlive
    everything on purpose): processes with a service marker working under tmp_path go."""
    yield
    for pid in os.listdir("/proc"):
        try:
            env = open(f"/proc/{pid}/environ", "rb").read().split(b"\0")
            cwd = os.readlink(f"/proc/{pid}/cwd")
        except (OSError, ValueError):
            continue
        if any(v.startswith(b"REMOTE_DEV_RUN_ID=rd-") for v in env) and cwd.startswith(str(tmp_path)):
            try:
                os.kill(int(pid), signal.SIGKILL)
            except OSError:
                pass


def have_jupyter() -> None:
    for mod in ("ipykernel", "jupyter_server", "jupyter_client"):
        require(importlib.util.find_spec(mod) is not None, f"{mod} not installed in the venv; scripts/setup installs it")


def have_tmux() -> None:
    require(shutil.which("tmux") is not None, "tmux not installed; scripts/setup installs it")


def tmux_sessions(sshd) -> list[str]:
    out = subprocess.run(["tmux", "-L", "remote-dev", "list-sessions", "-F", "#{session_name}"],
                         capture_output=True, text=True, env={"TMUX_TMPDIR": str(sshd.dir / "tmux"), "PATH": "/usr/bin:/bin"})
    return out.stdout.split()


def venv_project(make_project, **target):
    proj = make_project(target={"python": sys.executable, **target})
    return proj, {"file": str(proj.root / "main.py"), "cwd": str(proj.root)}


# --------------------------------------------------------------------------- kernel


def kernel_name(engine, ctx):
    from remote_dev.services import KERNEL, remote_name

    async def name():
        return remote_name(engine.project(ctx).session(), KERNEL)
    return engine.submit(name()).result(10)


def kernel_ports(engine, ctx) -> list[int]:
    from remote_dev.kernels import kernel_of

    async def ports():
        proj = engine.project(ctx)
        return [f.local_port for f in kernel_of(engine, proj).forwards]
    return engine.submit(ports()).result(10)


def assert_nothing_knocks(ports: list[int], quiet: float = 1.5) -> None:
    """After its engine (or session) closed, nothing of a kernel's client is left: no ZMQ socket
    reconnecting to its former local ports (it would reach whatever listens there next, a
    debugger's port among them), and the forwards no longer listen."""
    import select
    import socket

    listeners = [socket.create_server(("127.0.0.1", p)) for p in ports]   # fails if a forward listens still
    try:
        ready, _, _ = select.select(listeners, [], [], quiet)
        assert not ready, f"something of the closed client connects to {[s.getsockname()[1] for s in ready]}"
    finally:
        for s in listeners:
            s.close()


def test_kernel_keeps_state_across_engines_maps_errors_and_stops_clean(engine, make_project, sshd):
    have_jupyter()
    from remote_dev.actions import ACTIONS
    from remote_dev.engine import Engine

    proj, ctx = venv_project(make_project)
    proj.write("pkg/__init__.py", "")
    model = proj.write("pkg/model.py", "def load(p):\n    return parse(p)\n\n\ndef parse(p):\n    raise ValueError('bad ' + p)\n")
    main = proj.write("main.py", "import pkg.model\n\n\npkg.model.load('data')\n")
    engine.call_sync("push", ctx, {}, timeout=60)
    name = kernel_name(engine, ctx)
    try:
        res = engine.call_sync("send", ctx, {"code": "answer = 6 * 7\nanswer", "file": str(main), "line": 1}, timeout=120)
        assert res["status"] == "ok"
        outputs = [ln for k, p in engine.reports if k == "kernel_output" for ln in p["lines"]]
        assert "Out[1]: 42" in outputs
        # a second engine (a new Neovim) reaches the same kernel and its state
        other = Engine(report=lambda kind, payload: None, actions=ACTIONS)
        try:
            again = other.call_sync("send", ctx, {"code": "answer + 1"}, timeout=60)
            assert again["status"] == "ok" and again["count"] == 2
            ports = kernel_ports(other, ctx)
        finally:
            other.close()
        assert_nothing_knocks(ports)
        # an error: its traceback in quickfix at the local files (the sent lines included)
        res = engine.call_sync("send", ctx, {"code": main.read_text(), "file": str(main), "line": 1}, timeout=60)
        assert res["status"] == "error" and res["error"] == "ValueError: bad data"
        err = [p for k, p in engine.reports if k == "kernel_error"][-1]
        located = [(i["filename"], i["lnum"]) for i in err["quickfix"] if i.get("filename")]
        assert located == [(str(main), 4), (str(model), 2), (str(model), 6)]
        assert "ValueError: bad data" in err["quickfix"][-1]["text"]
        assert run_processes(name), "the kernel runs under its name"
    finally:
        engine.call_sync("kernel", ctx, {"what": "stop"}, timeout=60)
    wait_for(lambda: not run_processes(name), 10, what="no kernel process left")


def test_a_target_changed_in_the_config_lets_go_of_its_kernel_client(engine, make_project):
    """The target's settings change (.remote-dev.toml edited): its old session's client of
    the kernel is closed (nothing reconnects to its ports) and the new one reaches the same
    kernel, its state kept."""
    have_jupyter()
    proj, ctx = venv_project(make_project, env={"MARK": "a"})
    try:
        assert engine.call_sync("send", ctx, {"code": "kept = 41"}, timeout=120)["status"] == "ok"
        ports = kernel_ports(engine, ctx)
        config = proj.root / ".remote-dev.toml"
        config.write_text(config.read_text().replace('MARK = "a"', 'MARK = "b"'))
        os.utime(config, ns=(0, config.stat().st_mtime_ns + 10**9))
        assert kernel_ports(engine, ctx) == []               # the new session has none yet
        assert_nothing_knocks(ports)
        again = engine.call_sync("send", ctx, {"code": "kept + 1"}, timeout=60)
        assert again["status"] == "ok" and again["count"] == 2
    finally:
        engine.call_sync("kernel", ctx, {"what": "stop"}, timeout=60)


def test_kernel_rich_output_saved_and_interrupt(engine, make_project):
    have_jupyter()
    proj, ctx = venv_project(make_project)
    try:
        png = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg=="
        code = ("from IPython.display import display, Image, HTML\n"
                f"display(Image(data=__import__('base64').b64decode('{png}')))\ndisplay(HTML('<b>hi</b>'))")
        res = engine.call_sync("send", ctx, {"code": code}, timeout=120)
        assert res["status"] == "ok"
        lines = [ln for k, p in engine.reports if k == "kernel_output" for ln in p["lines"]]
        saved = [ln for ln in lines if ln.startswith("[image/png: ") or ln.startswith("[text/html: ")]
        assert len(saved) == 2, lines
        png_path = saved[0][len("[image/png: "):-1]
        assert open(png_path, "rb").read().startswith(b"\x89PNG")
        assert open(saved[1][len("[text/html: "):-1]).read() == "<b>hi</b>"
        # interrupt a long cell: KeyboardInterrupt, the kernel lives on
        fut = engine.request("send", ctx, {"code": "import time\nfor i in range(600):\n    time.sleep(0.1)"})
        wait_for(lambda: any("In [2]" in ln for k, p in engine.reports if k == "kernel_output" for ln in p["lines"]), 30)
        engine.call_sync("kernel", ctx, {"what": "interrupt"}, timeout=30)
        assert fut.result(30)["error"].startswith("KeyboardInterrupt")
        # the connection drops: the forwards come back on their ports, the kernel answers
        drop_connection(engine, ctx)
        assert engine.call_sync("send", ctx, {"code": "1 + 1"}, timeout=60)["status"] == "ok"
    finally:
        engine.call_sync("kernel", ctx, {"what": "stop"}, timeout=60)


def test_no_ipykernel_is_one_clear_message(engine, make_project):
    probe = subprocess.run(["/usr/bin/python3", "-c", "import ipykernel"], capture_output=True)
    require(probe.returncode != 0, "/usr/bin/python3 has ipykernel: no interpreter without it to test with")
    proj = make_project(target={"python": "/usr/bin/python3"})
    ctx = {"cwd": str(proj.root)}
    with pytest.raises(RemoteDevError) as e:
        engine.call_sync("send", ctx, {"code": "1"}, timeout=60)
    msg = e.value.message
    assert "ipykernel is not installed for /usr/bin/python3" in msg and "pip install ipykernel" in msg
    with pytest.raises(RemoteDevError) as e:
        engine.call_sync("notebook", ctx, {}, timeout=60)
    assert "no Jupyter server is installed for /usr/bin/python3" in e.value.message


# --------------------------------------------------------------------------- notebook


def test_notebook_answers_through_the_forward_is_found_again_and_stops_clean(engine, make_project):
    have_jupyter()
    from remote_dev.services import NOTEBOOK, remote_name

    proj, ctx = venv_project(make_project)
    try:
        first = engine.call_sync("notebook", ctx, {}, timeout=120)
        assert first["found"] is False and first["url"].startswith(f"http://127.0.0.1:{first['local_port']}/")
        token = first["url"].split("token=")[1]
        req = urllib.request.Request(f"http://127.0.0.1:{first['local_port']}/api/status",
                                     headers={"Authorization": f"token {token}"})
        status = json.loads(urllib.request.urlopen(req, timeout=30).read())
        assert "started" in status
        with pytest.raises(urllib.error.HTTPError):   # the token is needed
            urllib.request.urlopen(f"http://127.0.0.1:{first['local_port']}/api/contents", timeout=30)
        assert events(engine, "RemoteDevNotebook")[0]["url"] == first["url"]
        again = engine.call_sync("notebook", ctx, {}, timeout=60)
        assert again["found"] is True and again["url"] == first["url"]
        name = engine.submit(_name(engine, ctx, NOTEBOOK, remote_name)).result(10)
        listening = subprocess.run(["ss", "-Hltnp"], capture_output=True, text=True).stdout
        port_lines = [ln for ln in listening.splitlines() if f":{first['remote_port']} " in ln]
        assert port_lines and all("127.0.0.1:" in ln for ln in port_lines), port_lines
    finally:
        engine.call_sync("notebook", ctx, {"stop": True}, timeout=60)
    wait_for(lambda: not run_processes(name), 10, what="no notebook process left")


async def _name(engine, ctx, kind, remote_name):
    return remote_name(engine.project(ctx).session(), kind)


# --------------------------------------------------------------------------- shells


def shell_text(engine, term):
    return b"".join(p["data"] for k, p in engine.reports if k == "shell_output" and p["id"] == term).decode(errors="replace")


def test_shell_is_made_in_remote_root_found_again_and_killed_clean(engine, make_project, sshd):
    have_tmux()
    proj, ctx = venv_project(make_project, env={"RD_MARK": "from-env"})
    opened = engine.call_sync("shell_open", ctx, {"id": 1, "name": "main", "cols": 100, "rows": 30}, timeout=60)
    session = opened["session"]
    try:
        assert opened["created"] is True and session in tmux_sessions(sshd)
        engine.call_sync("shell_input", ctx, {"id": 1, "data": "echo \"at $PWD with $RD_MARK\"; sleep 300 &\r"})
        wait_for(lambda: f"at {proj.remote_root} with from-env" in capture(sshd, session), 20,
                 what="the shell's answer")
        pane_pid = int(subprocess.run(["tmux", "-L", "remote-dev", "list-panes", "-t", "=" + session, "-F", "#{pane_pid}"],
                                      capture_output=True, text=True, env={"TMUX_TMPDIR": str(sshd.dir / "tmux")}).stdout)
        # a second attach (another Neovim) finds it, with the earlier output in its history
        listed = engine.call_sync("shells", ctx, {}, timeout=30)
        assert [s["name"] for s in listed] == ["main"]
        again = engine.call_sync("shell_open", ctx, {"id": 2, "name": "main", "cols": 100, "rows": 30}, timeout=60)
        assert again["created"] is False
        wait_for(lambda: "with from-env" in shell_text(engine, 2), 20, what="the earlier output on reattach")
        assert wait_for(lambda: run_processes(session), 5)
        # the connection drops: both terminals reattach by themselves, the shell is the same
        drop_connection(engine, ctx)
        wait_for(lambda: [p for k, p in engine.reports if k == "shell_state" and p["state"] == "reconnecting"], 10)
        wait_for(lambda: len([p for k, p in engine.reports if k == "shell_state" and p["id"] == 1
                              and p["state"] == "attached"]) == 2, 30, what="terminal 1 attached again")
        engine.call_sync("shell_input", ctx, {"id": 1, "data": "echo back-$((40+2))\r"})
        wait_for(lambda: "back-42" in capture(sshd, session), 20, what="input after the reconnect")
    finally:
        engine.call_sync("shell_kill", ctx, {"name": "main"}, timeout=60)
    assert session not in tmux_sessions(sshd)
    wait_for(lambda: not run_processes(session), 10, what="no process of the shell left (sleep & included)")
    assert not _alive(pane_pid)
    with pytest.raises(RemoteDevError, match="no shell named 'main'"):
        engine.call_sync("shell_kill", ctx, {"name": "main"}, timeout=60)


def capture(sshd, session: str) -> str:
    """The shell's screen as tmux has it (the bytes relayed are drawing commands)."""
    return subprocess.run(["tmux", "-L", "remote-dev", "capture-pane", "-p", "-J", "-t", f"={session}:"],
                          capture_output=True, text=True, env={"TMUX_TMPDIR": str(sshd.dir / "tmux")}).stdout


def drop_connection(engine, ctx) -> None:
    """The SSH connection breaks (as when the network goes); returns once the engine knows."""
    async def drop():
        sess = engine.project(ctx).session()
        sess.conn.abort()
        while sess.connected:
            await asyncio.sleep(0.01)
    engine.submit(drop()).result(10)


def _alive(pid: int) -> bool:
    try:
        state = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_no_tmux_is_one_clear_message(engine, make_project):
    proj = make_project(target={"env": {"PATH": "/nonexistent"}})
    with pytest.raises(RemoteDevError) as e:
        engine.call_sync("shell_open", {"cwd": str(proj.root)}, {"id": 1, "name": "main"}, timeout=60)
    assert "tmux is not installed" in e.value.message and "apt install tmux" in e.value.message
    assert e.value.message.startswith("rdtest: ")


def test_health_names_tmux_ipykernel_and_the_jupyter_server(engine, make_project):
    have_tmux()
    have_jupyter()
    proj, ctx = venv_project(make_project)
    texts = [i["text"] for i in engine.call_sync("health", ctx, timeout=60)["remote"]]
    assert any(t.startswith("tmux: tmux 3") for t in texts), texts
    assert any(t.startswith("ipykernel: importable by") for t in texts)
    assert any(t.startswith("Jupyter server: jupyter_server importable") for t in texts)
    bare = make_project("bare", target={"python": "/usr/bin/python3", "env": {"PATH": "/nonexistent"}})
    texts = [i["text"] for i in engine.call_sync("health", {"cwd": str(bare.root)}, timeout=60)["remote"]]
    assert any(t.startswith("ipykernel: not installed for /usr/bin/python3") for t in texts), texts


def test_container_shell_runs_in_the_image_with_the_tree_mounted(engine, make_project, sshd):
    have_tmux()
    from support.podman import TEST_IMAGE, ensure_test_image, podman_available
    from test_container import container_project, podman_ps

    reason = podman_available()
    require(reason is None, f"podman: {reason}")
    ensure_test_image()
    proj = container_project(make_project, dockerfile=False, image=TEST_IMAGE)
    proj.write("data.txt", "mounted tree\n")
    ctx = {"cwd": str(proj.root)}
    engine.call_sync("push", ctx, {}, timeout=60)
    opened = engine.call_sync("shell_open", ctx, {"id": 7, "name": "box", "cols": 120, "rows": 30}, timeout=120)
    session = opened["session"]
    try:
        assert "(in a container)" in opened["where"]
        engine.call_sync("shell_input", ctx, {"id": 7, "data": "echo \"$(pwd) $(cat data.txt) $(cat /etc/debian_version)\"\r"})
        wait_for(lambda: "/workspace mounted tree 12" in capture(sshd, session), 60,
                 what=f"the shell inside the container: {capture(sshd, session)}")
        assert podman_ps(f"rd-{session}") == [f"rd-{session}"]
    finally:
        engine.call_sync("shell_kill", ctx, {"name": "box"}, timeout=60)
    wait_for(lambda: podman_ps(f"rd-{session}") == [], 30, what="the container removed")
    assert session not in tmux_sessions(sshd)
