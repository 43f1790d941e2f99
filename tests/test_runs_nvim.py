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


def traceback_project(make_project):
    """A project whose main.py fails with a traceback through pkg/model.py."""
    proj = make_project()
    proj.write("pkg/__init__.py", "")
    proj.write("pkg/model.py", MODEL)
    return proj, proj.write("main.py", MAIN)


def test_traceback_lands_in_quickfix_at_local_files(nvim, make_project):
    proj, main = traceback_project(make_project)
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
    buf = [b for b in nvim.buffers if b.name.startswith("remote-dev://run/")][0]
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
    buf = wait_for(lambda: [b for b in nvim.buffers if b.name == "remote-dev://runs"], 30)[0]
    row = [ln for ln in buf[:] if ln.startswith(ex["id"])]
    assert row and "exited" in row[0] and "python3 main.py" in row[0]
    nvim.command("close")
    nvim.command(f"RemoteLog {ex['id']}")
    log = wait_for(lambda: [b for b in nvim.buffers if b.name == f"remote-dev://log/{ex['id']}"], 30)[0]
    assert log[1:] == ["red", "second"]


def test_remote_runs_d_deletes_an_ended_run(nvim, make_project, sshd):
    proj = make_project()
    main = proj.write("main.py", "print('hi')\n")
    nvim.open(proj.root, main)
    nvim.command("RemoteRun")
    ex = nvim.wait_event("RemoteDevRunExit", 60)
    folder = sshd.remote_cache / "remote-dev" / "runs" / ex["id"]
    assert folder.is_dir()
    nvim.command("RemoteRuns")
    buf = wait_for(lambda: [b for b in nvim.buffers if b.name == "remote-dev://runs"], 30)[0]
    row = wait_for(lambda: [i for i, ln in enumerate(buf[:], 1) if ln.startswith(ex["id"])], 30)[0]
    nvim.call("cursor", row, 1)
    nvim.input("D")
    wait_for(lambda: not folder.exists(), 30, what="the run's folder deleted on the remote")
    wait_for(lambda: any(f"run {ex['id']} deleted" in m for m in nvim.messages()), 30)
    fresh = wait_for(lambda: [b for b in nvim.buffers if b.name == "remote-dev://runs" and b.valid], 30)[0]
    wait_for(lambda: not any(ln.startswith(ex["id"]) for ln in fresh[:]), 30, what="the list without it")


def plugin_buffer_info(nvim, buf):
    return nvim.exec_lua("local b = ...; return { bt = vim.bo[b].buftype, swap = vim.bo[b].swapfile, "
                         "modified = vim.bo[b].modified, owner = vim.b[b].remote_dev, "
                         "file = vim.fn.filereadable(vim.api.nvim_buf_get_name(b)) }", buf.number)


def test_run_and_log_buffers_are_no_files_and_commands_work_from_them(nvim, make_project, tmp_path):
    """Run and log buffers: remote-dev:// names, no file anywhere, their project and target
    remembered, so :RemoteRun / :RemoteLog typed in them work with cwd elsewhere; :w says
    what to do instead; :w {file} writes a copy."""
    proj = make_project()
    main = proj.write("main.py", "print('hello from the run')\n")
    nvim.open(proj.root, main)
    first, code = run_and_wait(nvim)
    assert code == 0
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    nvim.command(f"cd {elsewhere}")
    run_buf = next(b for b in nvim.buffers if b.name == f"remote-dev://run/{first}")
    info = plugin_buffer_info(nvim, run_buf)
    assert info["owner"] == {"root": str(proj.root), "target": "test", "run": first}
    assert info["bt"] == "acwrite" and info["swap"] is False and info["modified"] is False and info["file"] == 0
    nvim.command(f"sbuffer {run_buf.number}")
    second, code = run_and_wait(nvim, "RemoteRun python3 main.py")   # typed in the run buffer
    assert code == 0 and second != first
    nvim.command(f"buffer {run_buf.number}")
    nvim.command("RemoteLog")                                         # this buffer's run
    log = wait_for(lambda: next((b for b in nvim.buffers if b.name == f"remote-dev://log/{first}"), None), 30)
    assert log[:][-1] == "hello from the run"
    info = plugin_buffer_info(nvim, log)
    assert info["owner"] == {"root": str(proj.root), "target": "test", "run": first} and info["file"] == 0
    assert nvim.current.buffer.number == log.number
    third, code = run_and_wait(nvim, "RemoteRun python3 main.py")    # typed in the log buffer
    assert code == 0
    nvim.command(f"buffer {log.number}")
    nvim.command("RemoteLog " + third)
    wait_for(lambda: any(b.name == f"remote-dev://log/{third}" for b in nvim.buffers), 30)
    assert nvim.call("getcwd") == str(elsewhere)
    # :w says what to do instead; nothing is written anywhere
    nvim.command(f"buffer {run_buf.number}")
    before = run_buf[:]
    nvim.command("write")
    assert f":RemoteLog {first} opens its whole output" in nvim.messages()[-1]
    assert run_buf[:] == before and not list(elsewhere.iterdir())
    copy = tmp_path / "copy.txt"
    nvim.command(f"write {copy}")
    assert copy.read_text().splitlines() == before
    # :e fetches the log buffer's output again (Neovim empties it first)
    nvim.command(f"buffer {log.number}")
    nvim.command("edit")
    wait_for(lambda: log[:] and log[:][-1] == "hello from the run", 30, what="the log fetched again")


def located(nvim, items):
    return [(nvim.call("fnamemodify", nvim.call("bufname", i["bufnr"]), ":p"), i["lnum"]) for i in items if i["valid"]]


def qf(nvim, nr=0):
    return nvim.call("getqflist", {"nr": nr, "title": 1, "items": 1, "winid": 1, "id": 0})


def run_and_wait(nvim, command="RemoteRun"):
    """Start a run and wait for its end; returns (id, exit code)."""
    seen = len(nvim.events("RemoteDevRunExit"))
    nvim.command(command)
    ex = wait_for(lambda: nvim.events("RemoteDevRunExit")[seen:], 60, 0.05, what="the run to end")[0]["data"]
    return ex["id"], ex["code"]


def test_each_run_sets_a_new_list_and_a_clean_one_closes_the_window(nvim, make_project):
    proj, main = traceback_project(make_project)
    nvim.open(proj.root, main)
    failing, code = run_and_wait(nvim)
    assert code == 1
    first = wait_for(lambda: (q := qf(nvim)) and failing in q["title"] and q, 10)
    assert (str(proj.root / "pkg/model.py"), 6) in located(nvim, first["items"])
    assert first["winid"] != 0, "a failing run with locations opens the quickfix window"
    # a failure without locations: an empty list of its own, and the window closes
    no_module, code = run_and_wait(nvim, "RemoteRun python3 -m no_such_module_here")
    assert code != 0
    now = wait_for(lambda: (q := qf(nvim)) and no_module in q["title"] and q, 10)
    assert now["items"] == [] and "python3 -m no_such_module_here" in now["title"]
    assert now["winid"] == 0
    # the fix, saved; a clean run: again a new empty list
    proj.write("pkg/model.py", MODEL.replace('raise ValueError(f"cannot parse {path}")', "return path"))
    clean, code = run_and_wait(nvim)
    assert code == 0
    now = wait_for(lambda: (q := qf(nvim)) and clean in q["title"] and q, 10)
    assert now["items"] == [] and now["winid"] == 0
    assert nvim.call("getqflist", {"nr": "$"})["nr"] == 3
    nvim.command("colder 2")
    back = qf(nvim)
    assert back["id"] == first["id"] and failing in back["title"]
    assert located(nvim, back["items"]) == located(nvim, first["items"])


def test_two_runs_at_once_keep_their_own_lists(nvim, make_project):
    proj = make_project()
    proj.write("slow.py", "import time\nprint('slow.py:1: note: started', flush=True)\ntime.sleep(5)\n")
    fast = proj.write("fast.py", "def f():\n    raise KeyError('x')\n\n\nf()\n")
    nvim.open(proj.root, fast)
    nvim.command("RemoteRun python3 slow.py")
    slow_id = nvim.wait_event("RemoteDevRunStart", 60)["id"]
    fast_id, code = run_and_wait(nvim, "RemoteRun python3 fast.py")
    assert code == 1
    fast_list = wait_for(lambda: (q := qf(nvim)) and fast_id in q["title"] and q, 10)
    assert located(nvim, fast_list["items"]) == [(str(fast), 5), (str(fast), 2)]
    # the slow run's locations on demand, while it runs: a list of its own
    nvim.exec_lua("require('remote_dev').quickfix(...)", slow_id)
    slow_list = wait_for(lambda: (q := qf(nvim)) and slow_id in q["title"] and q, 10)
    assert located(nvim, slow_list["items"]) == [(str(proj.root / "slow.py"), 1)]
    assert nvim.call("getqflist", {"nr": "$"})["nr"] == 2
    nvim.wait_event("RemoteDevRunExit", 60, pred=lambda d: d["id"] == slow_id)
    # the slow run ends: it updates its own list (the current one), not the fast run's
    assert qf(nvim)["id"] == slow_list["id"] and nvim.call("getqflist", {"nr": "$"})["nr"] == 2
    assert located(nvim, qf(nvim)["items"]) == [(str(proj.root / "slow.py"), 1)]
    kept = nvim.call("getqflist", {"id": fast_list["id"], "title": 1, "items": 1})
    assert fast_id in kept["title"] and located(nvim, kept["items"]) == located(nvim, fast_list["items"])


def test_quickfix_open_false_fills_the_list_without_a_window(nvim, make_project):
    proj = make_project()
    main = proj.write("main.py", "raise SystemExit('main.py:1: error: broken')\n")
    nvim.exec_lua("require('remote_dev').setup({ quickfix = { open = false } })")
    nvim.open(proj.root, main)
    run_id, code = run_and_wait(nvim)
    assert code == 1
    listed = wait_for(lambda: (q := qf(nvim)) and run_id in q["title"] and q, 10)
    assert located(nvim, listed["items"]) == [(str(main), 1)]
    assert listed["winid"] == 0


def test_loclist_mode_fills_the_window_the_run_started_from(nvim, make_project):
    proj = make_project()
    main = proj.write("main.py", "import time\ntime.sleep(1)\nraise SystemExit('main.py:2: error: broken')\n")
    nvim.exec_lua("require('remote_dev').setup({ quickfix = { loclist = true } })")
    nvim.open(proj.root, main)
    origin = nvim.call("win_getid")
    nvim.command("RemoteRun")
    run_id = nvim.wait_event("RemoteDevRunStart", 60)["id"]
    nvim.command("vnew")  # the user moves on to another window while it runs
    elsewhere = nvim.call("win_getid")
    nvim.wait_event("RemoteDevRunExit", 60)
    loc = wait_for(lambda: (q := nvim.call("getloclist", origin, {"title": 1, "items": 1, "winid": 1}))
                   and q["items"] and q, 10)
    assert run_id in loc["title"] and located(nvim, loc["items"]) == [(str(main), 2)]
    assert loc["winid"] != 0, "the location window of the run's window opens"
    assert nvim.call("getloclist", elsewhere, {"nr": "$"})["nr"] == 0
    assert nvim.call("getqflist", {"nr": "$"})["nr"] == 0
    assert nvim.call("win_getid") == elsewhere, "the cursor stays where the user is"
    # fixed and run again from the same window: an empty list, the location window closes
    proj.write("main.py", "print('fine')\n")
    nvim.call("win_gotoid", origin)
    clean, code = run_and_wait(nvim)
    assert code == 0
    loc = wait_for(lambda: (q := nvim.call("getloclist", origin, {"title": 1, "items": 1, "winid": 1}))
                   and clean in q["title"] and q, 10)
    assert loc["items"] == [] and loc["winid"] == 0


WARNING_MAIN = '''\
import warnings
from pkg import model


def main():
    warnings.warn("torch.cuda.amp.GradScaler(args...) is deprecated", FutureWarning)
    model.load("data.csv")


main()
'''


def windows(nvim):
    """(buffer name, height) of the windows of the current tab, top to bottom."""
    return [(nvim.call("bufname", nvim.call("winbufnr", w)), nvim.call("winheight", w))
            for w in nvim.call("range", 1, nvim.call("winnr", "$"))]


def test_a_person_s_screen_the_run_window_keeps_its_lines_and_warnings_wait(nvim, make_project):
    """180x45 as a person's terminal: source, run window, then quickfix after a failing run.
    The run's output stays readable (>= 8 lines), the cursor stays in the source; the
    warning printed before the error is a W entry after the error's frames, and once fixed
    a run with only the warning closes the window (as :make with :cwindow)."""
    nvim.ui_attach(180, 45, rgb=True)
    proj, _ = traceback_project(make_project)
    main = proj.write("main.py", WARNING_MAIN)
    nvim.open(proj.root, main)
    nvim.call("cursor", 7, 5)
    source = nvim.call("win_getid")
    failing, code = run_and_wait(nvim)
    assert code == 1
    listed = wait_for(lambda: (q := qf(nvim)) and failing in q["title"] and q["winid"] and q, 10)
    shown = windows(nvim)
    run_height = next(h for name, h in shown if name.startswith("remote-dev://run/"))
    assert run_height >= 8, shown
    assert nvim.call("win_getid") == source and nvim.call("getpos", ".")[1:3] == [7, 5]
    types = [(i["type"], i["lnum"]) for i in listed["items"] if i["valid"]]
    assert types[0][0] != "W" and types[-1] == ("W", 6), types
    assert ("E", 6) in types   # the raise in pkg/model.py
    nvim.command("cfirst")
    assert nvim.call("expand", "%:t") == "main.py" and nvim.call("line", ".") == 10   # main() of the error
    nvim.call("win_gotoid", source)
    nvim.command("buffer " + str(main))
    # the fix: the run ends well with its warning; the list keeps it, the window closes
    proj.write("pkg/model.py", MODEL.replace('raise ValueError(f"cannot parse {path}")', "return path"))
    clean, code = run_and_wait(nvim)
    assert code == 0
    now = wait_for(lambda: (q := qf(nvim)) and clean in q["title"] and q, 10)
    assert [i["type"] for i in now["items"] if i["valid"]] == ["W"]
    assert now["winid"] == 0, windows(nvim)
