"""The Lua side hands nvim-dap a server adapter and an attach configuration.

nvim-dap cannot be installed from the registries here, so this test puts a STAND-IN `dap`
module on package.loaded that records what the plugin gives it (adapters table, run()
calls, listeners); the debug protocol itself is exercised by tests/test_debug.py.
"""
from __future__ import annotations

from conftest import wait_for

STAND_IN = """
local recorded = { runs = {} }
_G.dap_recorded = recorded
local listeners = { after = setmetatable({}, { __index = function(t, k) t[k] = {}; return t[k] end }),
                    before = setmetatable({}, { __index = function(t, k) t[k] = {}; return t[k] end }) }
package.loaded['dap'] = {
  adapters = {}, configurations = {}, listeners = listeners,
  run = function(config) table.insert(recorded.runs, vim.deepcopy(config)) end,
  sessions = function() return {} end,
}
recorded.dap = package.loaded['dap']
"""


def test_remote_debug_gives_dap_adapter_and_config(nvim, make_project):
    proj = make_project()
    proj.write("main.py", "import time\ntime.sleep(1)\n")
    nvim.exec_lua(STAND_IN)
    nvim.exec_lua("require('remote_dev').setup({ dap = { justMyCode = false } })")
    nvim.open(proj.root, proj.root / "main.py")
    nvim.command("RemoteDebug")
    ready = nvim.wait_event("RemoteDevDebugReady", 120)
    runs = wait_for(lambda: nvim.exec_lua("return _G.dap_recorded.runs"), 10)
    cfg = runs[0]
    adapter = nvim.exec_lua("return _G.dap_recorded.dap.adapters.remote_dev")
    assert adapter == {"type": "server", "host": "127.0.0.1", "port": ready["port"]}
    assert cfg["type"] == "remote_dev" and cfg["request"] == "attach"
    assert cfg["connect"] == {"host": "127.0.0.1", "port": ready["port"]}
    assert cfg["pathMappings"] == [{"localRoot": str(proj.root), "remoteRoot": str(proj.remote_root)}]
    assert cfg["justMyCode"] is False  # user options pass through
    assert cfg["remote_dev_run"] == ready["id"]
    assert nvim.exec_lua("return type(_G.dap_recorded.dap.listeners.after.event_terminated.remote_dev)") == "function"
    # ending the dap session stops the run
    nvim.exec_lua("_G.dap_recorded.dap.listeners.after.event_terminated.remote_dev({ config = ... })", cfg)
    ex = nvim.wait_event("RemoteDevRunExit", 60)
    assert ex["id"] == ready["id"] and ex["code"] != 0


def test_remote_debug_without_nvim_dap_says_how_to_install(nvim, make_project):
    proj = make_project()
    proj.write("main.py", "")
    nvim.open(proj.root, proj.root / "main.py")
    try:
        nvim.command("RemoteDebug")
    except Exception:  # noqa: BLE001 - the error message is also raised to the client
        pass
    err = nvim.wait_event("RemoteDevError", 10)
    assert "nvim-dap is not installed" in err["message"] and "mfussenegger/nvim-dap" in err["message"]
