"""Driving the real nvim-dap inside the test Neovim through its Lua API, and waiting on what
its listeners and sessions show (polling, never sleeping).

nvim-dap is the pinned copy beside the repository (``../shared/vendor/nvim-dap`` from the
root of the main checkout, see conftest.nvim_dap_dir); it is put on the runtimepath of the
test Neovim, never copied into the repository.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from conftest import wait_for

# Listeners record what the tests wait on: stops (counted before nvim-dap handles them, so a
# stop's frame is known once nvim-dap has set it), output events, sessions seen.
HELPERS = r"""
local dap = require('dap')
_G.T = { stops = 0, stop_reasons = {}, outputs = {}, sessions = {}, eval = {} }
dap.listeners.before.event_stopped['test'] = function(_, body)
  T.stops = T.stops + 1
  table.insert(T.stop_reasons, body.reason)
end
dap.listeners.before.event_output['test'] = function(_, body)
  table.insert(T.outputs, { category = body.category, output = body.output })
end
dap.listeners.on_session['test'] = function(_, new)
  if new then
    T.sessions[new.id] = new.config.remote_dev and new.config.remote_dev.run or vim.NIL
  end
end

--- The focused session's stop, once the n-th stop is known with its top frame.
function T.stopped(n)
  local s = dap.session()
  if T.stops < n or not s or not s.stopped_thread_id or not s.current_frame then
    return vim.NIL
  end
  local f = s.current_frame
  return { path = f.source and f.source.path, line = f.line, name = f.name, thread = s.stopped_thread_id,
           run = s.config.remote_dev and s.config.remote_dev.run, reason = T.stop_reasons[#T.stop_reasons] }
end

--- Send an evaluate request in the stopped frame; the answer lands in T.eval[key].
function T.evaluate(key, expr)
  T.eval[key] = nil
  dap.session():evaluate(expr, function(err, resp)
    T.eval[key] = err and { error = tostring(err) } or { result = resp.result }
  end)
end

--- Every open session (children included): id, name, parent, run, and its stop (top frame) if stopped.
function T.all()
  local out = {}
  local function walk(s, parent)
    if not s.closed then
      local f = s.stopped_thread_id and s.current_frame or nil
      table.insert(out, { id = s.id, name = s.config.name, parent = parent or vim.NIL,
                          run = s.config.remote_dev and s.config.remote_dev.run or vim.NIL,
                          stop = f and { path = f.source and f.source.path, line = f.line, name = f.name } or vim.NIL })
    end
    for _, c in pairs(s.children or {}) do walk(c, s.id) end
  end
  for _, s in pairs(dap.sessions()) do walk(s) end
  return out
end

--- The open session with this id, focused.
function T.focus(id)
  local found
  local function walk(s)
    if s.id == id then found = s end
    for _, c in pairs(s.children or {}) do walk(c) end
  end
  for _, s in pairs(dap.sessions()) do walk(s) end
  assert(found, 'no session ' .. id)
  dap.set_session(found)
  return found
end

--- Open sessions (children included) with their run ids.
function T.open_sessions()
  local out = {}
  local function walk(s)
    if not s.closed then
      table.insert(out, { id = s.id, run = s.config.remote_dev and s.config.remote_dev.run or vim.NIL })
    end
    for _, c in pairs(s.children or {}) do walk(c) end
  end
  for _, s in pairs(dap.sessions()) do walk(s) end
  return out
end
"""


def nvim_with_dap(nvim: Any, dap_dir: Path) -> "Dap":
    nvim.exec_lua("vim.opt.runtimepath:prepend(...)", str(dap_dir))
    nvim.command("runtime! plugin/dap.lua")
    return Dap(nvim)


class Dap:
    def __init__(self, nvim: Any) -> None:
        self.nvim = nvim
        nvim.exec_lua(HELPERS)

    def lua(self, code: str, *args: Any) -> Any:
        return self.nvim.exec_lua(code, *args)

    def breakpoint(self, file: Path, line: int, condition: str | None = None, log: str | None = None) -> None:
        """A breakpoint on a LOCAL file, set as a user does: cursor on the line of its buffer."""
        self.nvim.command(f"edit {file}")
        self.lua("vim.api.nvim_win_set_cursor(0, { ..., 0 })", line)
        if condition is None and log is None:
            self.lua("require('dap').toggle_breakpoint()")
        else:
            self.lua("local c, l = ...; require('dap').set_breakpoint(c ~= vim.NIL and c or nil, nil, "
                     "l ~= vim.NIL and l or nil)", condition, log)

    def clear_breakpoints(self) -> None:
        self.lua("require('dap').clear_breakpoints()")

    def stopped(self, n: int, timeout: float = 90) -> dict[str, Any]:
        """Wait for the n-th stop (counted over the test) and return its top frame."""
        return wait_for(lambda: self.lua("return T.stopped(...)", n), timeout, 0.05,
                        what=f"stop #{n} in nvim-dap (stops so far: {self.lua('return T.stops')}, "
                             f"sessions: {self.sessions()}, messages: {self.nvim.messages()[-5:]})")

    def evaluate(self, expr: str, timeout: float = 30) -> str:
        key = f"e{abs(hash(expr))}"
        self.lua("T.evaluate(...)", key, expr)
        res = wait_for(lambda: self.lua("return T.eval[...]", key), timeout, 0.05, what=f"evaluate {expr}")
        assert "result" in res, res
        return res["result"]

    def step_over(self) -> None:
        self.lua("require('dap').step_over()")

    def step_into(self) -> None:
        self.lua("require('dap').step_into()")

    def continue_(self) -> None:
        self.lua("require('dap').continue()")

    def terminate(self) -> None:
        self.lua("require('dap').terminate()")

    def restart(self) -> None:
        self.lua("require('dap').restart()")

    def all_sessions(self) -> list[dict[str, Any]]:
        """Every open session: {id, name, parent, run, stop: {path, line, name} or None}."""
        return self.lua("return T.all()")

    def stopped_sessions(self, n: int, timeout: float = 90) -> list[dict[str, Any]]:
        """Wait until n open sessions are stopped (their top frames known); those sessions."""
        def stopped() -> list[dict[str, Any]] | None:
            found = [s for s in self.all_sessions() if s["stop"]]
            return found if len(found) >= n else None
        return wait_for(stopped, timeout, 0.05,
                        what=f"{n} stopped sessions (sessions: {self.all_sessions()}, "
                             f"messages: {self.nvim.messages()[-5:]}, "
                             f"run exits: {[e['data'] for e in self.nvim.events('RemoteDevRunExit')]})")

    def focus(self, session_id: int) -> None:
        self.lua("T.focus(...)", session_id)

    def evaluate_in(self, session_id: int, expr: str) -> str:
        self.focus(session_id)
        return self.evaluate(expr)

    def continue_in(self, session_id: int) -> None:
        self.focus(session_id)
        self.continue_()

    def sessions(self) -> list[dict[str, Any]]:
        return self.lua("return T.open_sessions()")

    def wait_no_session(self, timeout: float = 60) -> None:
        wait_for(lambda: not self.sessions(), timeout, 0.05, what=f"no dap session left: {self.sessions()}")

    def outputs(self, category: str | None = None) -> list[str]:
        return [o["output"] for o in self.lua("return T.outputs") if category is None or o["category"] == category]
