""":RemoteShell, :RemoteKernel/:RemoteSend and :RemoteNotebook end to end: real headless
Neovim, the real sshd, real tmux, ipykernel and jupyter_server (the venv's python is the
remote's python).  Each outlives a `:qa!` and is found again by a new Neovim."""
from __future__ import annotations

import json
import sys
import urllib.request

import pynvim

from conftest import MINIMAL_INIT, NVIM, run_processes, wait_for
from remote_dev.services import namespace_for
from test_persist import have_jupyter, have_tmux, leave_nothing, tmux_sessions  # noqa: F401 - a fixture


SERVICES = "return require('remote_dev').status().services or {}"


def new_nvim():
    return pynvim.attach("child", argv=[NVIM, "--embed", "--headless", "-u", MINIMAL_INIT, "-i", "NONE", "-n"])


def quit_nvim(api) -> None:
    try:
        api.command("qa!")
    except Exception:  # noqa: BLE001 - it exits while answering
        pass


def venv_project(make_project, **target):
    return make_project(target={"python": sys.executable, **target})


def term_buffer(api, name="main"):
    def find():
        for b in api.buffers:
            if b.name.endswith(f"remote-dev://shell/test/{name}"):
                return b
        return None
    return wait_for(find, 30, 0.05, what=f"the terminal of shell {name}")


def screen_text(buf) -> str:
    return "\n".join(buf[:])


def type_keys(api, keys: str) -> None:
    if api.request("nvim_get_mode")["mode"] != "t":
        api.command("startinsert")
        wait_for(lambda: api.request("nvim_get_mode")["mode"] == "t", 5, what="terminal mode")
    api.input(keys)


def test_shell_outlives_neovim_and_comes_back_with_its_output(nvim, make_project, sshd):
    have_tmux()
    proj = venv_project(make_project)
    main = proj.write("main.py", "print('hi')\n")
    nvim.open(proj.root, main)
    nvim.start_host()
    nvim.command("RemoteShell")
    buf = term_buffer(nvim)
    type_keys(nvim, "for i in $(seq 1 300); do echo scroll-$i; done; echo DONE-$((6*7))\r")
    wait_for(lambda: "DONE-42" in screen_text(buf), 30, 0.05, what=f"the shell's output: {screen_text(buf)[-500:]}")
    session = [s for s in tmux_sessions(sshd) if s.endswith("-sh-main")][0]
    quit_nvim(nvim.api)
    assert session in tmux_sessions(sshd), "the shell outlives Neovim"
    api = new_nvim()
    try:
        api.command(f"cd {proj.root}")
        api.command(f"edit {main}")
        api.command("RemoteShell")
        buf = term_buffer(api)
        wait_for(lambda: "DONE-42" in screen_text(buf), 30, 0.05, what="the earlier screen")
        text = screen_text(buf)
        assert "scroll-1\n" in text + "\n" and "scroll-150" in text, "the earlier scrollback comes back"
        type_keys(api, "echo again-$((7*6))\r")
        wait_for(lambda: "again-42" in screen_text(buf), 30, 0.05)
        # the shell list and status know it; an explicit kill ends it and everything in it
        api.command("RemoteStatus")
        wait_for(lambda: [s for s in api.exec_lua(SERVICES) if s["kind"] == "shell" and s["name"] == "main"], 30)
        api.command("stopinsert")
        api.command("RemoteShell! kill main")
        wait_for(lambda: session not in tmux_sessions(sshd), 30, what="the tmux session to end")
        wait_for(lambda: not run_processes(session), 15, what="no process of the shell left")
        wait_for(lambda: "killed" in screen_text(buf), 10)
    finally:
        quit_nvim(api)


def test_keys_typed_at_once_after_remote_shell_arrive(nvim, make_project, sshd):
    """As a person types: `:RemoteShell second`, then at once a command, no pause: the keys
    typed before the shell is attached are queued and delivered, as :terminal does."""
    have_tmux()
    proj = venv_project(make_project)
    main = proj.write("main.py", "print('hi')\n")
    nvim.open(proj.root, main)
    nvim.command("RemoteShell second")
    nvim.input("echo early-$((6*7))\r")
    buf = term_buffer(nvim, "second")
    wait_for(lambda: "early-42" in screen_text(buf), 30, 0.05, what=f"the typed command's output: {screen_text(buf)[-500:]}")
    nvim.input("echo later-$((7*7))\r")
    wait_for(lambda: "later-49" in screen_text(buf), 30, 0.05, what="the next command's output")
    assert screen_text(buf).count("early-42") == 1, "typed once, not replayed"
    nvim.command("stopinsert")
    nvim.command("RemoteShell! kill second")
    wait_for(lambda: not [s for s in tmux_sessions(sshd) if s.endswith("-sh-second")], 30)


def kernel_buffer(api, target="test"):
    for b in api.buffers:
        if b.name.endswith(f"remote-dev://kernel/{target}"):
            return b
    return None


def kernel_text(api) -> str:
    b = kernel_buffer(api)
    return "\n".join(b[:]) if b is not None else ""


CELLS = '''\
import pkg.model

# %% set a value
value = 6 * 7
print("value is", value)

# %% fail
def outer():
    return pkg.model.load("data")

outer()
'''


def test_kernel_state_survives_neovim_and_errors_land_in_quickfix(nvim, make_project):
    have_jupyter()
    proj = venv_project(make_project)
    proj.write("pkg/__init__.py", "")
    model = proj.write("pkg/model.py", "def load(p):\n    return parse(p)\n\n\ndef parse(p):\n    raise ValueError('bad ' + p)\n")
    cells = proj.write("cells.py", CELLS)
    nvim.open(proj.root, cells)
    nvim.command("1RemoteSend")            # a range: the import (the kernel starts; the tree is pushed)
    nvim.call("cursor", 4, 1)
    nvim.command("RemoteSend")             # the cell at the cursor
    wait_for(lambda: "value is 42" in kernel_text(nvim), 120, 0.05, what=f"the cell's output: {kernel_text(nvim)}")
    quit_nvim(nvim.api)
    api = new_nvim()
    try:
        api.command(f"cd {proj.root}")
        api.command(f"edit {cells}")
        api.exec_lua("vim.api.nvim_buf_set_lines(0, -1, -1, false, { 'value + 1' })")
        last = api.call("line", "$")
        api.command(f"{last}RemoteSend")
        wait_for(lambda: "Out[3]: 43" in kernel_text(api), 60, 0.05, what=f"the kept value: {kernel_text(api)}")
        assert "connected to the running kernel" in kernel_text(api)
        api.command("normal! 4G0f6v$\x1b")   # a charwise selection: `6 * 7` of `value = 6 * 7`
        api.command("'<,'>RemoteSend")
        wait_for(lambda: "Out[4]: 42" in kernel_text(api), 60, 0.05, what=f"the selection's value: {kernel_text(api)}")
        api.call("cursor", 10, 1)
        api.command("RemoteSend")              # the failing cell
        qf = wait_for(lambda: (q := api.call("getqflist", {"title": 1, "items": 1})) and q["items"] and q, 60)
        located = [(api.call("fnamemodify", api.call("bufname", i["bufnr"]), ":p"), i["lnum"]) for i in qf["items"] if i["valid"]]
        assert located == [(str(cells), 11), (str(cells), 9), (str(model), 2), (str(model), 6)]
        assert "ValueError: bad data" in qf["items"][-1]["text"] and "In [5]" in qf["title"]
        assert "ValueError: bad data" in kernel_text(api)
        api.command("RemoteKernel stop")
        wait_for(lambda: "kernel stopped" in kernel_text(api), 60)
    finally:
        quit_nvim(api)


def test_notebook_url_answers_through_the_forward_and_stop_leaves_nothing(nvim, make_project):
    have_jupyter()
    proj = venv_project(make_project)
    main = proj.write("main.py", "print('hi')\n")
    nvim.exec_lua("require('remote_dev').setup({ notebook_open = 'never' })")
    nvim.open(proj.root, main)
    nvim.command("RemoteNotebook")
    url = nvim.wait_event("RemoteDevNotebook", 120)["url"]
    base, token = url.split("?token=")
    port = int(base.split(":")[2].split("/")[0])
    req = urllib.request.Request(f"http://127.0.0.1:{port}/api/status", headers={"Authorization": f"token {token}"})
    assert "started" in json.loads(urllib.request.urlopen(req, timeout=30).read())
    # a fresh project: the server lists its files (pushed before it started)
    req = urllib.request.Request(f"http://127.0.0.1:{port}/api/contents", headers={"Authorization": f"token {token}"})
    listed = [c["name"] for c in json.loads(urllib.request.urlopen(req, timeout=30).read())["content"]]
    assert "main.py" in listed, listed
    assert any(url in m for m in nvim.messages()), "the URL is shown"
    # :RemoteRuns lists it with the runs
    nvim.command("RemoteRuns")
    runs = wait_for(lambda: [b for b in nvim.buffers if b.name.endswith("remote-dev://runs")], 30)[0]
    wait_for(lambda: any(ln.startswith("notebook") for ln in runs[:]), 30, what="the notebook in :RemoteRuns")
    nvim.command("close")
    name = [s for s in nvim.exec_lua(SERVICES) if s["kind"] == "notebook"]
    assert name and name[0]["state"] == "running"
    nvim.command("RemoteNotebook stop")
    wait_for(lambda: any("notebook server on test stopped" in m for m in nvim.messages()), 60)
    name = namespace_for(str(proj.remote_root), "test") + "notebook"
    assert run_processes(name) == []

