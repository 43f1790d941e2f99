"""The Lua side in a real headless Neovim, without a remote: setup() checked against the option
schema, the option docs written from it, command arguments refused with a message naming them."""
from __future__ import annotations

import pytest

from conftest import REPO


def setup_error(nvim, opts_lua: str) -> str:
    ok, err = nvim.exec_lua(f"return {{ pcall(require('remote_dev').setup, {opts_lua}) }}")
    assert ok is False
    return err


def test_setup_checks_options_against_the_schema(nvim):
    assert "unknown option colour" in setup_error(nvim, "{ colour = 'red' }")
    assert "option notify: expected boolean, got string" in setup_error(nvim, "{ notify = 'yes' }")
    assert "option run_buffer_lines: expected a whole number from 1 to 1000000" in setup_error(nvim, "{ run_buffer_lines = 0 }")
    nvim.exec_lua("require('remote_dev').setup({ run_buffer_lines = 50, dap = { justMyCode = false } })")
    opts = nvim.exec_lua("return require('remote_dev').options")
    assert opts["run_buffer_lines"] == 50 and opts["dap"] == {"justMyCode": False}
    assert opts["notify"] is True and opts["terminate_stops_run"] is True  # defaults stay
    nvim.exec_lua("require('remote_dev').setup()")
    assert nvim.exec_lua("return require('remote_dev').options.run_buffer_lines") == 10000


def test_quickfix_options_and_the_deprecated_open_quickfix(nvim):
    assert "unknown option quickfix.window (known: open, loclist)" in setup_error(nvim, "{ quickfix = { window = 1 } }")
    assert "option quickfix.loclist: expected boolean" in setup_error(nvim, "{ quickfix = { loclist = 'yes' } }")
    nvim.exec_lua("require('remote_dev').setup({ quickfix = { loclist = true } })")
    assert nvim.exec_lua("return require('remote_dev').options.quickfix") == {"open": True, "loclist": True}
    nvim.exec_lua("require('remote_dev').setup({ open_quickfix = false })")
    assert nvim.exec_lua("return require('remote_dev').options.quickfix") == {"open": False, "loclist": False}
    assert "open_quickfix is deprecated; use quickfix.open" in nvim.messages()[-1]
    nvim.exec_lua("require('remote_dev').setup({ open_quickfix = false, quickfix = { open = true } })")
    assert nvim.exec_lua("return require('remote_dev').options.quickfix.open") is True  # the new name wins


def test_option_docs_are_written_from_the_schema(nvim):
    lines = nvim.exec_lua("return require('remote_dev.config').doc_lines()")
    doc = (REPO / "doc" / "remote_dev.txt").read_text().splitlines()
    head = doc.index("require('remote_dev').setup({opts})")
    assert doc[head + 1:head + 1 + len(lines)] == lines, "doc out of date: run scripts/doc-options"
    assert doc[head + 1 + len(lines)] == ""
    names = nvim.exec_lua("return vim.tbl_map(function(s) return s.name end, require('remote_dev.config').schema)")
    assert all(any(ln.strip().startswith(n + " ") for ln in lines) for n in names)


def test_loading_the_api_loads_no_feature_module(nvim):
    loaded = nvim.exec_lua("""
        require('remote_dev')
        local out = {}
        for name in pairs(package.loaded) do
          if name:match('^remote_dev%.') then table.insert(out, name) end
        end
        table.sort(out)
        return out""")
    assert loaded == ["remote_dev.config"]


@pytest.mark.parametrize("command, message", [
    ("RemotePush --dryrun", ":RemotePush: unknown flag --dryrun; known: --dry-run"),
    ("RemotePull --force", ":RemotePull: unknown flag --force"),
    ("RemoteDebug --attach x", ":RemoteDebug --attach needs a port number"),
    ("RemoteForward tensorboard", ":RemoteForward needs port numbers"),
])
def test_bad_command_arguments_are_named(nvim, command, message):
    try:
        nvim.command(command)
    except Exception:  # noqa: BLE001 - the error message is also raised to the client
        pass
    errors = [e["data"]["message"] for e in nvim.events("RemoteDevError")]
    assert errors and errors[0].startswith(message), errors
