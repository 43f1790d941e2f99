"""The target's `python` as a home path (`~/venv/bin/python`) and as a command with arguments
(`conda run -n X python`) works for runs, debug runs, shells and kernels: every feature writes
it with agent.protocol.shell_word.

No conda here: `env PYTHONNOUSERSITE=1 <venv python>` stands in for `conda run -n X python`
(a program with arguments that ends in the interpreter, the same shape on the command line).
The `~/` form is a real path below the remote user's home (`~/../..` up to the venv)."""
from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import events, wait_for

from remote_dev.agent.protocol import python_words, shell_word
from remote_dev.debug_launch import boot_command, debug_command

VENV_PYTHON = sys.executable   # the venv's python (debugpy, ipykernel) acts as the target's
PROBE = "import os, sys\nprint('exe', os.path.realpath(sys.executable), 'nousersite', sys.flags.no_user_site)\n"


def home_python() -> str:
    """VENV_PYTHON as `~/...` (the remote user is this user)."""
    return "~/" + os.path.relpath(VENV_PYTHON, os.path.expanduser("~"))


def command_python() -> str:
    return f"env PYTHONNOUSERSITE=1 {shlex.quote(VENV_PYTHON)}"


PYTHONS = {"home": home_python, "command": command_python}
EXE = os.path.realpath(VENV_PYTHON)


def sh(line: str) -> str:
    return subprocess.run(["sh", "-c", line], capture_output=True, text=True, check=True).stdout


def test_shell_word_starts_the_interpreter_in_sh():
    assert shell_word("python3") == "python3"
    assert shell_word("~/venv/bin/python") == '"$HOME"/venv/bin/python'
    assert shell_word("conda run -n my env python") == "conda run -n my env python"
    assert shell_word("'/opt/my env/bin/python'") == "'/opt/my env/bin/python'"
    assert python_words("conda run -n X python") == ["conda", "run", "-n", "X", "python"]
    for name, make in PYTHONS.items():
        out = sh(f"exec {shell_word(make())} -c {shlex.quote(PROBE)}")
        assert out.split()[1] == EXE, name
    assert sh(f"exec {shell_word(command_python())} -c {shlex.quote(PROBE)}").split()[3] == "1"


@pytest.mark.parametrize("kind", sorted(PYTHONS))
def test_debug_command_lines_start_the_targets_python(kind):
    """The debug rewrites (bootstrap and direct) give the shell the interpreter as shell_word
    writes it, whether the command names it as configured, through {python}, or not at all
    (`pytest` runs as `python -m pytest`)."""
    py = PYTHONS[kind]()
    env = {"REMOTE_DEV_DEBUG": "/d", "PYTHONPATH": "/b"}
    for cmd in (f"{py} -u x.py", f"{shell_word(py)} -u x.py"):
        line = boot_command(cmd, py, env)
        assert line.endswith(f"exec {shell_word(py)} -Xfrozen_modules=off -u x.py"), line
    assert boot_command("pytest -x", py, env).endswith(f"exec {shell_word(py)} -Xfrozen_modules=off -m pytest -x")
    direct = debug_command(f"{shell_word(py)} x.py", py, "127.0.0.1", 1, [((3, 10), "/dbg"), ((3, 8), "/old")])
    assert f"exec {shell_word(py)} -Xfrozen_modules=off -m debugpy" in direct
    assert f"{shell_word(py)} -c 'import debugpy'" in direct
    assert f"{shell_word(py)} -c 'import sys; sys.exit(sys.version_info < (3, 10))'" in direct
    # what the shell makes of the interpreter words: the venv's python
    head = direct.rsplit("exec ", 1)[0]
    assert sh(head + f"exec {shell_word(py)} -c {shlex.quote(PROBE)}").split()[1] == EXE


def python_project(make_project, kind, **target):
    proj = make_project(target={"python": PYTHONS[kind](), **target})
    proj.write("main.py", PROBE)
    return proj, {"cwd": str(proj.root), "file": str(proj.root / "main.py")}


def run_output(engine, run_id):
    wait_for(lambda: any(e["id"] == run_id for e in events(engine, "RemoteDevRunExit")), 60, what="the run's end")
    return [ln for k, p in engine.reports if k == "run_output" and p["id"] == run_id for ln in p["lines"]]


@pytest.mark.parametrize("kind", sorted(PYTHONS))
def test_run_with_the_targets_python(engine, make_project, kind):
    proj, ctx = python_project(make_project, kind)
    res = engine.call_sync("run", ctx, {"cmd": "{python} main.py"}, timeout=60)
    out = run_output(engine, res["id"])
    assert any(ln.startswith(f"exe {EXE} ") for ln in out), out
    assert [e["code"] for e in events(engine, "RemoteDevRunExit") if e["id"] == res["id"]] == [0]


@pytest.mark.parametrize("kind", sorted(PYTHONS))
def test_debug_with_the_targets_python(engine, make_project, kind):
    """Both ways a command reaches the interpreter: `{python} main.py`, and a module name
    (`main`) that runs as `python -m main`; a debugger attaches to each, the program ends 0."""
    from support.dap import DapClient

    proj, ctx = python_project(make_project, kind)
    for cmd in ("{python} main.py", "main"):
        res = engine.call_sync("debug", ctx, {"cmd": cmd, "terminate_stops_run": False}, timeout=180)
        dap = DapClient("127.0.0.1", res["port"])
        try:
            dap.request("initialize", clientID="remote-dev-tests", adapterID="debugpy", pathFormat="path")
            attach = dap.send("attach", **{k: v for k, v in res["config"].items()
                                           if k not in ("type", "request", "name")})
            dap.event("initialized")
            dap.request("configurationDone")
            dap.response(attach)
            dap.event("terminated", 60)
        finally:
            dap.close()
        out = run_output(engine, res["id"])
        assert any(ln.startswith(f"exe {EXE} ") for ln in out), (cmd, out)
        assert [e["code"] for e in events(engine, "RemoteDevRunExit") if e["id"] == res["id"]] == [0]


@pytest.mark.parametrize("kind", sorted(PYTHONS))
def test_kernel_with_the_targets_python(engine, make_project, kind):
    proj, ctx = python_project(make_project, kind)
    try:
        res = engine.call_sync("send", ctx, {"code": "import os, sys\nos.path.realpath(sys.executable)"}, timeout=120)
        assert res["status"] == "ok"
        outputs = [ln for k, p in engine.reports if k == "kernel_output" for ln in p["lines"]]
        assert f"Out[1]: {EXE!r}" in outputs, outputs
    finally:
        engine.call_sync("kernel", ctx, {"what": "stop"}, timeout=60)


@pytest.mark.parametrize("kind", sorted(PYTHONS))
def test_shell_with_the_targets_python(engine, make_project, sshd, kind):
    """A shell of such a target opens, and the checks of shells, kernels and notebooks
    (:checkhealth) run the target's python through the same word."""
    proj, ctx = python_project(make_project, kind)
    opened = engine.call_sync("shell_open", ctx, {"id": 1, "name": "py", "cols": 80, "rows": 24}, timeout=60)
    try:
        assert opened["created"] is True
    finally:
        engine.call_sync("shell_kill", ctx, {"name": "py"}, timeout=60)
    texts = [i["text"] for i in engine.call_sync("health", ctx, timeout=60)["remote"]]
    assert any(t.startswith("ipykernel: importable by") for t in texts), texts
    assert not any("does not run" in t for t in texts), texts


def test_home_python_is_below_home():
    assert Path(os.path.expanduser(home_python())).resolve() == Path(VENV_PYTHON).resolve()
