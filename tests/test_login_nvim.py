"""Two-factor login as a person does it in Neovim: :RemoteRun asks for the code with the
server's own prompt, typing it runs the program, a second :RemoteRun asks nothing; a wrong
code is one line saying the code was refused.  The real PAM sshd of support/mfa.py."""
from __future__ import annotations

from typing import Any

from conftest import wait_for
from test_login import mfa_project

COUNT_LOGINS = """
local login = require('remote_dev.login')
local ask = login.ask
_G.rd_logins = {}
login.ask = function(p)
  table.insert(_G.rd_logins, { host = p.host, prompts = p.prompts })
  return ask(p)
end
_G.rd_secret_prompts = {}
local inputsecret = vim.fn.inputsecret
vim.fn.inputsecret = function(text)
  table.insert(_G.rd_secret_prompts, text)
  return inputsecret(text)
end
"""


def wait_prompt(nvim: Any) -> str:
    """The prompt on Neovim's command line once it asks (getcmdprompt: what the person sees)."""
    wait_for(lambda: nvim.api.api.get_mode()["mode"] == "c", 60, 0.05, what="the code prompt")
    return nvim.exec_lua("return vim.fn.getcmdprompt()")


def test_remote_run_asks_for_the_code_in_neovim_once(nvim, mfa, tmp_path):
    root = mfa_project(tmp_path, mfa)
    nvim.open(root, root / "main.py")
    nvim.exec_lua(COUNT_LOGINS)
    nvim.command("RemoteRun")
    prompt = wait_prompt(nvim)
    # The server's own prompt; the lines above it (input()'s prompt before its last line
    # break) name the host: "remote_dev: login to rdmfa as <user>".
    assert prompt == "Verification code: ", prompt
    assert nvim.exec_lua("return _G.rd_logins")[0]["host"] == mfa.sshd.alias
    assert nvim.exec_lua("return _G.rd_secret_prompts") == \
        [f"remote_dev: login to {mfa.sshd.alias} as {mfa.user}\nVerification code: "]
    code = mfa.code()
    nvim.input(code + "<CR>")
    first = nvim.wait_event("RemoteDevRunExit", 90)
    assert first["code"] == 0
    run_buf = [b for b in nvim.buffers if b.name.startswith("remote-dev://run/")][0]
    assert any(f"hello from {mfa.user}" in line for line in run_buf[:])
    # The second run asks nothing: the one login serves it.
    nvim.command("RemoteRun")
    nvim.wait_event("RemoteDevRunExit", 60, pred=lambda d: d["id"] != first["id"])
    assert len(nvim.exec_lua("return _G.rd_logins")) == 1
    assert nvim.api.api.get_mode()["mode"] == "n"
    # Echo was off and nothing kept the code.
    assert code not in nvim.api.api.exec2("messages", {"output": True})["output"]
    assert code not in (nvim.call("histget", "@", -1) or "")
    status = nvim.exec_lua("return require('remote_dev').status()")
    assert status["connected"] and status["connected_since"]
    nvim.command("RemoteStatus")
    wait_for(lambda: "connected   yes, since " in nvim.api.api.exec2("messages", {"output": True})["output"], 30,
             what=":RemoteStatus saying since when")


def test_wrong_code_is_one_line_in_neovim(nvim, mfa, tmp_path):
    root = mfa_project(tmp_path, mfa)
    nvim.open(root, root / "main.py")
    nvim.command("RemoteRun")
    wait_prompt(nvim)
    nvim.input(mfa.wrong_code() + "<CR>")
    err = nvim.wait_event("RemoteDevError", 90)
    assert "refused the code" in err["message"] and "\n" not in err["message"], err
    assert [m for m in nvim.messages() if "refused the code" in m] == ["remote_dev: " + err["message"]]
    assert nvim.events("RemoteDevRunStart") == []


def test_escape_cancels_the_login(nvim, mfa, tmp_path):
    root = mfa_project(tmp_path, mfa)
    nvim.open(root, root / "main.py")
    nvim.command("RemoteRun")
    wait_prompt(nvim)
    nvim.input("<Esc>")
    err = nvim.wait_event("RemoteDevError", 90)
    assert "login cancelled" in err["message"], err


def test_duo_style_prompt_in_neovim_echoes_through_vim_ui_input(nvim, tmp_path):
    """An echoing prompt goes through vim.ui.input (so a UI plugin's input box shows it)."""
    from support.duo import DUO_PROMPT, start_duo, stop_duo
    from test_login import duo_project
    server = start_duo(tmp_path / "duo")
    try:
        root = duo_project(tmp_path, server)
        (root / "main.py").write_text("print('pushed and ran')\n")
        nvim.open(root, root / "main.py")
        nvim.exec_lua("_G.rd_inputs = {}; local orig = vim.ui.input; vim.ui.input = function(o, cb) "
                      "table.insert(_G.rd_inputs, o.prompt); return orig(o, cb) end")
        nvim.command("RemoteRun")
        assert wait_prompt(nvim) == DUO_PROMPT
        nvim.input("1<CR>")
        assert nvim.wait_event("RemoteDevRunExit", 60)["code"] == 0
        (shown,) = nvim.exec_lua("return _G.rd_inputs")
        assert "1. Duo Push to" in shown and shown.endswith(DUO_PROMPT)
        assert server.answers == ["1"]
    finally:
        stop_duo(server)
