"""The agent starts whatever the remote user's login shell is and whatever it prints first.

Real users made with useradd, each with its own login shell (bash, tcsh, fish, zsh) and a
banner in its shell's startup file, as clusters print them for `ssh host cmd` too (conda
init, "modules loaded", a MOTD script): on stdout, and on stderr.  Through a real sshd each
pushes, runs and debugs (a real debugpy to a breakpoint); the banner is in the log, never
in the agent's answers."""
from __future__ import annotations

import logging
import os
from typing import Iterator

import pytest

from conftest import events, require, wait_for
from support.remote import Remote, start_user_remote, stop_remote
from support.sshd import SSHD

from remote_dev.errors import RemoteDevError
from test_debug import MAIN, UTIL, drive_session

BANNER = "Welcome to the cluster"
# shell -> (its startup file read for `ssh host cmd`, the banner line(s) in its syntax)
SHELLS = {
    "bash-stdout": ("/bin/bash", ".bashrc", f'echo "{BANNER}"\nprintf "no newline at the end"\n'),
    "bash-stderr": ("/bin/bash", ".bashrc", f'echo "{BANNER}" >&2\n'),
    "tcsh": ("/usr/bin/tcsh", ".cshrc", f'echo "{BANNER}"\n'),
    "fish": ("/usr/bin/fish", ".config/fish/config.fish", f'echo "{BANNER}"\n'),
    "zsh": ("/usr/bin/zsh", ".zshenv", f'echo "{BANNER}"\n'),
}


@pytest.fixture(params=list(SHELLS))
def shell_remote(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Remote]:
    shell, rc, banner = SHELLS[request.param]
    require(os.path.exists(SSHD), f"OpenSSH server not installed ({SSHD}); scripts/setup installs it")
    require(os.geteuid() == 0, "the remote users are made with useradd: run the tests as root")
    require(os.path.exists(shell), f"{shell} (scripts/setup installs tcsh, fish, zsh)")
    suffix = "".join(c for c in request.param if c.isalpha())[:8]
    r = start_user_remote(tmp_path_factory.mktemp(f"sh{suffix[:4]}"), shell=shell, suffix=suffix)
    try:
        path = r.home / rc
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(banner)
        r.chown(r.home / rc.split("/")[0])
        # the banner really reaches `ssh host cmd` on this remote (else the test proves nothing)
        seen = r.sshd.ssh("echo", "hello", check=False)
        assert BANNER in seen.stdout + seen.stderr and "hello" in seen.stdout, seen
        yield r
    finally:
        stop_remote(r)


def test_push_run_and_debug_past_the_login_shell(shell_remote, tmp_path, engine, caplog):
    caplog.set_level(logging.INFO, logger="remote_dev")
    r = shell_remote
    root = tmp_path / "proj"
    root.mkdir()
    remote_root, remote_dir = r.remote_root("proj")
    (root / ".remote-dev.toml").write_text(r.target_toml(remote_root))
    (root / "pkg").mkdir()
    (root / "pkg/__init__.py").write_text("")
    util = root / "pkg/util.py"
    util.write_text(UTIL)
    (root / "main.py").write_text(MAIN)
    ctx = {"cwd": str(root)}

    pushed = engine.call_sync("push", ctx, {}, timeout=120)
    assert (remote_dir / "main.py").read_text() == MAIN, pushed
    res = engine.call_sync("run", ctx, {"cmd": "python3 main.py"}, timeout=120)
    ex = wait_for(lambda: next((e for e in events(engine, "RemoteDevRunExit") if e["id"] == res["id"]), None), 60)
    assert ex["code"] == 0
    out = [ln for k, p in engine.reports if k == "run_output" and p["id"] == res["id"] for ln in p["lines"]]
    assert "total 3" in out and not any(BANNER in ln for ln in out), out

    dbg = engine.call_sync("debug", ctx, {"cmd": "python3 main.py"}, timeout=180)
    drive_session(dbg["config"], util)
    ex = wait_for(lambda: next((e for e in events(engine, "RemoteDevRunExit") if e["id"] == dbg["id"]), None), 60)
    assert ex["code"] == 0

    logged = "\n".join(rec.getMessage() for rec in caplog.records if rec.name == "remote_dev")
    assert BANNER in logged, logged[-3000:]
    assert not [e for e in events(engine, "RemoteDevError")], events(engine, "RemoteDevError")



def test_a_remote_without_the_interpreter_says_so_once(engine, make_project):
    """An agent that cannot start is not an interrupted push: pushing again cannot help."""
    proj = make_project(target={"python": "python9"})
    proj.write("a.py", "print(1)\n")
    with pytest.raises(RemoteDevError) as e:
        engine.call_sync("push", {"cwd": str(proj.root)}, {}, timeout=60)
    assert "remote interpreter 'python9' not found" in e.value.message
    assert "interrupted" not in e.value.message and "again completes it" not in e.value.message
