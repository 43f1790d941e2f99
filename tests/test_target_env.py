"""The target's python as an activated environment: with `python` set to a venv's
interpreter, `python` in a run command, in a shell and under a kernel's or notebook's
process is that venv's (its bin first on PATH, VIRTUAL_ENV set), not the login shell's.
A real venv made with the remote's python3; the real sshd, tmux."""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from conftest import events, require, wait_for
from test_persist import capture

from remote_dev.agent.remote.common import activate_interpreter

SYSTEM_PYTHON = "/usr/bin/python3"


@pytest.fixture(scope="module")
def venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    require(os.path.exists(SYSTEM_PYTHON), f"{SYSTEM_PYTHON} (the remote's python3)")
    where = tmp_path_factory.mktemp("env") / "venv"
    subprocess.run([SYSTEM_PYTHON, "-m", "venv", "--without-pip", str(where)], check=True, timeout=120)
    return where


def output(engine, run_id):
    return [ln for k, p in engine.reports if k == "run_output" and p["id"] == run_id for ln in p["lines"]]


def test_python_in_a_run_command_is_the_target_s(engine, make_project, venv):
    proj = make_project(target={"python": str(venv / "bin" / "python")})
    proj.write("which.py", "import os, sys\nprint('prefix', sys.prefix)\nprint('venv', os.environ.get('VIRTUAL_ENV'))\n")
    res = engine.call_sync("run", {"cwd": str(proj.root)}, {"cmd": "command -v python; python which.py"},
                           timeout=60)
    ex = wait_for(lambda: next((e for e in events(engine, "RemoteDevRunExit") if e["id"] == res["id"]), None), 30)
    assert ex["code"] == 0, output(engine, res["id"])
    assert output(engine, res["id"]) == [str(venv / "bin" / "python"), f"prefix {venv}", f"venv {venv}"]


def test_a_system_python_changes_nothing(engine, make_project):
    proj = make_project(target={"python": "python3"})
    res = engine.call_sync("run", {"cwd": str(proj.root)}, {"cmd": "echo venv=${VIRTUAL_ENV:-none}"}, timeout=60)
    wait_for(lambda: any(e["id"] == res["id"] for e in events(engine, "RemoteDevRunExit")), 30)
    assert output(engine, res["id"]) == ["venv=none"]


def test_a_shell_of_the_target_has_the_venv_active(engine, make_project, venv, sshd):
    """A login shell whose profile sets PATH anew (Debian's /etc/profile does) still gets
    the venv: it is sent the venv's activate line, as VS Code's terminals are."""
    require(shutil.which("tmux") is not None, "tmux (scripts/setup installs it)")
    proj = make_project(target={"python": str(venv / "bin" / "python")})
    ctx = {"cwd": str(proj.root)}
    opened = engine.call_sync("shell_open", ctx, {"id": 7, "name": "venv", "cols": 150, "rows": 30}, timeout=60)
    engine.call_sync("shell_input", ctx, {"id": 7, "data": "echo ACTIVE=$VIRTUAL_ENV=$(command -v python)\r"},
                     timeout=30)
    want = f"ACTIVE={venv}={venv}/bin/python"
    wait_for(lambda: want in capture(sshd, opened["session"]), 60, 0.1,
             what=f"{want!r} in the shell: {capture(sshd, opened['session'])[-600:]!r}")
    engine.call_sync("shell_kill", ctx, {"name": "venv"}, timeout=60)


@pytest.mark.parametrize("layout,want", [
    ("venv", {"VIRTUAL_ENV": "/e"}),
    ("conda", {"CONDA_PREFIX": "/e"}),
    ("system", {}),
])
def test_activation_of_each_kind_of_environment(tmp_path, layout, want):
    """The rule itself, for a conda environment too (no conda on this machine to start a
    real one: its prefix is a folder with conda-meta/, which is how conda marks it)."""
    prefix = tmp_path / "e"
    (prefix / "bin").mkdir(parents=True)
    if layout == "conda":
        (prefix / "conda-meta").mkdir()
    env = {"PATH": "/usr/bin:/bin", "PYTHONHOME": "/x"}
    base = "/usr" if layout != "system" else str(prefix)
    if layout == "conda":
        base = str(prefix)
    changes = activate_interpreter(env, str(prefix / "bin" / "python"), str(prefix), base)
    expect = {k: v.replace("/e", str(prefix)) for k, v in want.items()}
    if layout == "system":
        assert changes == {} and env["PATH"] == "/usr/bin:/bin"
        return
    assert {k: v for k, v in changes.items() if k != "PATH"} == expect
    assert env["PATH"] == f"{prefix}/bin:/usr/bin:/bin"
    assert ("PYTHONHOME" in env) == (layout == "conda")


def test_debug_of_python_in_a_command_is_the_target_s_and_an_early_failure_ends_it(engine, make_project, venv):
    """:RemoteDebug python main.py debugs the venv's python (debugpy supplied by the plugin:
    the venv has none); a program that fails before its first line (its file is missing)
    ends the debug run with its error once the debugger attached, not after debug_wait."""
    from support.dap import DapClient
    from test_debug import MAIN, UTIL, drive_session

    proj = make_project(target={"python": str(venv / "bin" / "python")}, config_extra="[run]\ndebug_wait = 300\n")
    proj.write("pkg/__init__.py", "")
    util = proj.write("pkg/util.py", UTIL)
    proj.write("main.py", MAIN + "import sys\nprint('prefix', sys.prefix, flush=True)\n")
    ctx = {"cwd": str(proj.root)}
    res = engine.call_sync("debug", ctx, {"cmd": "python main.py"}, timeout=180)
    drive_session(res["config"], util)
    ex = wait_for(lambda: next((e for e in events(engine, "RemoteDevRunExit") if e["id"] == res["id"]), None), 60)
    assert ex["code"] == 0
    assert f"prefix {venv}" in output(engine, res["id"]), output(engine, res["id"])

    bad = engine.call_sync("debug", ctx, {"cmd": "python missing.py"}, timeout=180)
    cfg = bad["config"]
    dap = DapClient(cfg["connect"]["host"], cfg["connect"]["port"])
    try:
        dap.request("initialize", clientID="remote-dev-tests", adapterID="debugpy", pathFormat="path",
                    linesStartAt1=True, columnsStartAt1=True)
        attach_seq = dap.send("attach", **{k: v for k, v in cfg.items() if k not in ("type", "request", "name")})
        dap.event("initialized")
        dap.request("configurationDone")
        dap.response(attach_seq)
        ex = wait_for(lambda: next((e for e in events(engine, "RemoteDevRunExit") if e["id"] == bad["id"]), None),
                      30, what="the debug run to end with the program's error")
    finally:
        dap.close()
    assert ex["code"] == 2
    assert any("missing.py" in ln and "No such file" in ln for ln in output(engine, bad["id"])), output(engine, bad["id"])
