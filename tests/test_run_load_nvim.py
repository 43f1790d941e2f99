"""Run buffers under load, in a Neovim with a real UI attached at 180x45: output is written
into the buffers a window shows on a timer, into hidden ones when they are shown and when
their run ends; every buffer ends holding exactly the last run_buffer_lines lines.  (How
fast Neovim answers meanwhile is measured by bench/load_bench.py, not asserted here.)"""
from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import pytest

from conftest import MINIMAL_INIT, NVIM, Nvim, wait_for

# Counts the lines each run's reports brought, to know when output reached Lua.
HOOK = r"""
_G.rd_got = {}
local run = require('remote_dev.run')
local orig = run.on_output
run.on_output = function(p)
  _G.rd_got[p.id] = (_G.rd_got[p.id] or 0) + (p.n or 0)
  orig(p)
end
"""


@pytest.fixture
def ui_nvim(nvim_env, monkeypatch):
    from support.ui_nvim import UiNvim

    for k, v in nvim_env.items():
        monkeypatch.setenv(k, v)
    sock_dir = Path(tempfile.mkdtemp(prefix="rd-ui-"))   # short: a socket path has a length limit
    ui = UiNvim(NVIM, MINIMAL_INIT, sock_dir / "nvim.sock", nvim_env)
    try:
        assert ui.ui_size() == (180, 45)
        yield Nvim(ui.api)
    finally:
        ui.close()
        shutil.rmtree(sock_dir, ignore_errors=True)


def run_lines(nvim, run_id: str) -> list[str]:
    """The output lines of a run's buffer as a plugin reads them (without the state line)."""
    return nvim.exec_lua("local b = vim.fn.bufnr('remote-dev://run/' .. ...) "
                         "return vim.api.nvim_buf_get_lines(b, 1, -1, false)", run_id)


def started_ids(nvim) -> list[str]:
    return [e["data"]["id"] for e in nvim.events("RemoteDevRunStart")]


def test_concurrent_runs_end_with_the_last_lines_shown_or_hidden(ui_nvim, make_project):
    nvim, keep, n, runs = ui_nvim, 3000, 20000, 4
    proj = make_project()
    main = proj.write("count.py", "import sys\ntag = sys.argv[1]\nw = sys.stdout.write\n"
                                  "for i in range(int(sys.argv[2])):\n    w('%s %d\\n' % (tag, i))\n")
    nvim.open(proj.root, main)
    nvim.exec_lua("require('remote_dev').setup({ run_buffer_lines = ... })", keep)
    for tag in range(runs):
        nvim.command(f"RemoteRun python3 count.py r{tag} {n}")
    exits = wait_for(lambda: len(nvim.events("RemoteDevRunExit")) == runs and nvim.events("RemoteDevRunExit"), 120,
                     0.1, what="the runs to end")
    shown = nvim.exec_lua("local o = {} for _, b in ipairs(vim.api.nvim_list_bufs()) do "
                          "if #vim.fn.win_findbuf(b) > 0 then table.insert(o, vim.api.nvim_buf_get_name(b)) end end "
                          "return o")
    hidden = 0
    for ex in exits:
        assert ex["data"]["code"] == 0
        lines = run_lines(nvim, ex["data"]["id"])
        tag = lines[-1].split()[0]
        assert lines == [f"{tag} {i}" for i in range(n - keep, n)]
        hidden += f"remote-dev://run/{ex['data']['id']}" not in shown
    assert hidden == runs - 1        # the run window shows one run; the others were complete hidden
    # a hidden one shown afterwards shows the same
    rid = next(ex["data"]["id"] for ex in exits if f"remote-dev://run/{ex['data']['id']}" not in shown)
    nvim.command(f"botright sbuffer remote-dev://run/{rid}")
    assert nvim.current.buffer[:][1:] == run_lines(nvim, rid) and len(nvim.current.buffer) == keep + 1
    assert "exited" in nvim.current.buffer[0]


STEPS = '''\
import os, sys, time
def wait(name):
    while not os.path.exists(name):
        time.sleep(0.02)
wait("go1")
for i in range(3000):
    print("a", i)
sys.stdout.flush()
wait("go2")
for i in range(20000):
    print("b", i)
print("b partial", end="", flush=True)
wait("go3")
print(" done")
'''


def test_a_buffer_shown_mid_stream_is_complete_and_keeps_up(ui_nvim, make_project):
    nvim, keep = ui_nvim, 5000
    proj = make_project()
    main = proj.write("steps.py", STEPS)
    nvim.open(proj.root, main)
    nvim.exec_lua("require('remote_dev').setup({ run_buffer_lines = ... })", keep)
    nvim.exec_lua(HOOK)
    nvim.command("RemoteRun python3 steps.py")
    rid = wait_for(lambda: started_ids(nvim), 60, 0.05, what="the run to start")[0]
    # hide it: the run window goes
    wait_for(lambda: nvim.exec_lua("return vim.fn.bufwinid(vim.fn.bufnr('remote-dev://run/' .. ...))", rid) != -1,
             30, what="the run window")
    nvim.exec_lua("vim.api.nvim_win_close(vim.fn.bufwinid(vim.fn.bufnr('remote-dev://run/' .. ...)), true)", rid)
    (proj.remote_root / "go1").touch()
    wait_for(lambda: nvim.exec_lua("return _G.rd_got[...] or 0", rid) >= 3000, 60, 0.05,
             what="the first 3000 lines to reach Lua")
    # shown: complete at once (read in the same call that shows it)
    got = nvim.exec_lua("vim.cmd('botright sbuffer remote-dev://run/' .. ...) "
                        "return vim.api.nvim_buf_get_lines(0, 1, -1, false)", rid)
    assert got == [f"a {i}" for i in range(3000)]
    nvim.command("wincmd p")      # the user goes back to the file; the run window follows the output
    (proj.remote_root / "go2").touch()
    want = [f"a {i}" for i in range(3000)] + [f"b {i}" for i in range(20000)] + ["b partial"]
    wait_for(lambda: run_lines(nvim, rid) == want[-keep:], 60, 0.05, what="the shown buffer to keep up")
    win = nvim.exec_lua("return vim.fn.bufwinid(vim.fn.bufnr('remote-dev://run/' .. ...))", rid)
    assert nvim.exec_lua("return vim.api.nvim_win_get_cursor(...)[1]", win) == keep + 1   # following the end
    (proj.remote_root / "go3").touch()
    ex = nvim.wait_event("RemoteDevRunExit", 60)
    assert ex["code"] == 0
    assert run_lines(nvim, rid) == (want[:-1] + ["b partial done"])[-keep:]
