"""Every remote Python the README promises (3.8 to 3.13), tried for real: the target's
`python` is a venv of each of pyenv's Pythons (support/pythons.py), with ipykernel at the
versions of locks/remote-kernel.txt.  On each: the agent starts, a push, a run with its own
exit code, the kernel, a shell; and with the real nvim-dap a debug run that stops at a
local breakpoint and ends with the program's exit 0 (on 3.8 and 3.9 with the older debugpy
the plugin keeps for them, 1.8.22 needing 3.10).  Older Pythons are refused in one line
that does not claim a push was interrupted."""
from __future__ import annotations

import pytest

from conftest import events, require, wait_for
from support.pythons import PROMISED, pyenv_python, python_env
from test_debug import debug_project
from test_debug_nvim import flow_breakpoint_evaluate_natural_end
from test_persist import capture, have_tmux, kernel_name

from remote_dev.errors import RemoteDevError


def env_for(minor: int):
    python, why = python_env(minor)
    require(python is not None, why)
    return python


@pytest.mark.parametrize("minor", PROMISED)
def test_push_run_kernel_and_shell_on_python_3_x(engine, make_project, sshd, minor):
    python = env_for(minor)
    proj = make_project(target={"python": str(python)})
    ctx = {"cwd": str(proj.root)}
    proj.write("pkg/__init__.py", "")
    proj.write("main.py", "import sys\nprint('on', '%d.%d' % sys.version_info[:2])\nsys.exit(3)\n")
    status = engine.call_sync("status", ctx, timeout=60)
    assert status["python"].startswith(f"3.{minor}.")
    engine.call_sync("push", ctx, {}, timeout=60)
    assert (proj.remote_root / "main.py").exists()
    # a run: its output and its own exit code
    run = engine.call_sync("run", ctx, {"cmd": f"{python} main.py"}, timeout=60)
    ex = wait_for(lambda: next((e for e in events(engine, "RemoteDevRunExit") if e["id"] == run["id"]), None), 60)
    out = [ln for k, p in engine.reports if k == "run_output" and p["id"] == run["id"] for ln in p["lines"]]
    assert ex["code"] == 3 and f"on 3.{minor}" in out, (ex, out)
    # the kernel of that Python
    name = kernel_name(engine, ctx)
    try:
        res = engine.call_sync("send", ctx, {"code": "import sys\nsys.version_info[:2]"}, timeout=120)
        assert res["status"] == "ok", res
        outputs = [ln for k, p in engine.reports if k == "kernel_output" for ln in p["lines"]]
        assert f"Out[1]: (3, {minor})" in outputs, outputs[-5:]
    finally:
        engine.call_sync("kernel", ctx, {"what": "stop"}, timeout=60)
    assert name
    # a shell in remote_root (the agent of that Python starts it)
    have_tmux()
    opened = engine.call_sync("shell_open", ctx, {"id": 1, "name": "py", "cols": 100, "rows": 30}, timeout=60)
    try:
        engine.call_sync("shell_input", ctx, {"id": 1, "data": "echo at-$PWD-$((40+2))\r"})
        wait_for(lambda: f"at-{proj.remote_root}-42" in capture(sshd, opened["session"]), 20,
                 what="the shell's answer")
    finally:
        engine.call_sync("shell_kill", ctx, {"name": "py"}, timeout=60)
    assert opened["created"] is True


@pytest.mark.parametrize("minor", PROMISED)
def test_debug_stops_at_a_local_breakpoint_on_python_3_x(nvim, dap, make_project, minor):
    python = env_for(minor)
    proj, main, util = debug_project(make_project, target={"python": str(python)})
    ready = flow_breakpoint_evaluate_natural_end(nvim, dap, proj, main, util, command=f"{python} main.py")
    assert ready["id"]


@pytest.mark.parametrize("minor", (6, 7))
def test_an_older_python_is_refused_in_one_line(engine, make_project, minor):
    python = pyenv_python(minor)
    require(python is not None, f"Python 3.{minor} under ~/.pyenv/versions")
    proj = make_project(target={"python": str(python)})
    proj.write("main.py", "print('never')\n")
    with pytest.raises(RemoteDevError) as caught:
        engine.call_sync("push", {"cwd": str(proj.root)}, {}, timeout=60)
    msg = caught.value.message
    assert f"is Python 3.{minor}" in msg and "needs Python >= 3.8" in msg, msg
    assert "interrupted" not in msg and "again completes it" not in msg, msg
    assert "\n" not in msg
