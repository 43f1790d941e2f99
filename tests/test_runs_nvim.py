"""Runs end to end through real Neovim and the real sshd."""
from __future__ import annotations

import pynvim

from conftest import MINIMAL_INIT, NVIM, wait_for

MODEL = '''\
def load(path):
    return parse(path)


def parse(path):
    raise ValueError(f"cannot parse {path}")
'''

MAIN = '''\
from pkg import model


def main():
    model.load("data.csv")


main()
'''


def test_traceback_lands_in_quickfix_at_local_files(nvim, make_project):
    proj = make_project()
    proj.write("pkg/__init__.py", "")
    proj.write("pkg/model.py", MODEL)
    main = proj.write("main.py", MAIN)
    nvim.open(proj.root, main)
    nvim.command("RemoteRun")
    ex = nvim.wait_event("RemoteDevRunExit", 60)
    assert ex["code"] == 1
    start = nvim.events("RemoteDevRunStart")[0]["data"]
    assert start["cmd"] == "python3 main.py"
    qf = wait_for(lambda: nvim.call("getqflist", {"title": 1, "items": 1}), 10)
    assert start["id"] in qf["title"] and "python3 main.py" in qf["title"]
    located = [(nvim.call("fnamemodify", nvim.call("bufname", i["bufnr"]), ":p"), i["lnum"]) for i in qf["items"] if i["valid"]]
    assert located == [(str(proj.root / "main.py"), 8), (str(proj.root / "main.py"), 5),
                       (str(proj.root / "pkg/model.py"), 2), (str(proj.root / "pkg/model.py"), 6)]
    assert "ValueError: cannot parse data.csv" in qf["items"][-1]["text"]
    # the run buffer shows the output and the state
    buf = [b for b in nvim.buffers if "remote_dev://run/" in b.name][0]
    lines = buf[:]
    assert "exit 1" in lines[0]
    assert "ValueError: cannot parse data.csv" in lines[-1]


def test_run_survives_quit_and_new_neovim_shows_all_output(nvim, make_project, nvim_env):
    proj = make_project()
    main = proj.write("main.py", "import time\nfor i in range(40):\n    print('line', i, flush=True)\n"
                                 "    time.sleep(0.05)\n")
    nvim.open(proj.root, main)
    nvim.command("RemoteRun")
    start = nvim.wait_event("RemoteDevRunStart", 60)
    run_id = start["id"]
    try:
        nvim.command("qa!")
    except Exception:  # noqa: BLE001 - it exits while answering
        pass
    api = pynvim.attach("child", argv=[NVIM, "--embed", "--headless", "-u", MINIMAL_INIT, "-i", "NONE", "-n"])
    try:
        api.command(f"cd {proj.root}")
        api.command(f"edit {main}")
        api.exec_lua("require('remote_dev').request('attach', { id = ... })", run_id)

        def exited():
            return [e for e in api.exec_lua("return _G.rd_events") if e["name"] == "RemoteDevRunExit"]
        ex = wait_for(exited, 60, 0.05)[0]["data"]
        assert ex["code"] == 0
        buf = [b for b in api.buffers if b.name.endswith(run_id)][0]
        assert buf[1:] == [f"line {i}" for i in range(40)]
    finally:
        try:
            api.command("qa!")
        except Exception:  # noqa: BLE001
            pass


def test_remote_runs_lists_and_remote_log_opens_output(nvim, make_project):
    proj = make_project()
    main = proj.write("main.py", "print('\\x1b[31mred\\x1b[0m')\nprint('second')\n")
    nvim.open(proj.root, main)
    nvim.command("RemoteRun")
    ex = nvim.wait_event("RemoteDevRunExit", 60)
    nvim.command("RemoteRuns")
    buf = wait_for(lambda: [b for b in nvim.buffers if b.name.endswith("remote_dev://runs")], 30)[0]
    row = [ln for ln in buf[:] if ln.startswith(ex["id"])]
    assert row and "exited" in row[0] and "python3 main.py" in row[0]
    nvim.command("close")
    nvim.command(f"RemoteLog {ex['id']}")
    log = wait_for(lambda: [b for b in nvim.buffers if b.name.endswith(".log") and ex["id"] in b.name], 30)[0]
    assert log[1:] == ["red", "second"]
