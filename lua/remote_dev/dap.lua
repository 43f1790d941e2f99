-- nvim-dap glue: a `server` adapter for the forwarded port and an `attach` configuration
-- whose pathMappings come from the host's mapping module. Plugs into nvim-dap's tables.
local M = {}

local config = require('remote_dev.config')
local host = require('remote_dev.host')
local ui = require('remote_dev.ui')

local install_hint = 'nvim-dap is not installed: add "mfussenegger/nvim-dap" with your plugin manager '
  .. '(e.g. lazy.nvim: { "mfussenegger/nvim-dap" }); :checkhealth remote_dev checks it'

local function get_dap()
  local ok, dap = pcall(require, 'dap')
  if not ok then
    ui.error(install_hint)
    return nil
  end
  return dap
end

local listeners_set = false

local function set_listeners(dap)
  if listeners_set then
    return
  end
  listeners_set = true
  local function ended(session)
    local id = session and session.config and session.config.remote_dev_run
    if id and config.options.terminate_stops_run then
      host.request('stop', { id = id }, function() end)
    end
  end
  dap.listeners.after.event_terminated['remote_dev'] = ended
  dap.listeners.after.disconnect['remote_dev'] = ended
end

---@class remote_dev.DebugOpts
---@field cmd string?      the command (default: run.command of .remote-dev.toml)
---@field attach integer?  instead: attach to a debugpy listening on the remote's 127.0.0.1:attach

--- Push, then run under debugpy and attach nvim-dap; or attach to a debugpy already listening.
---@param opts remote_dev.DebugOpts?
function M.debug(opts)
  opts = opts or {}
  if not get_dap() then
    return
  end
  if opts.attach then
    host.request('attach_port', { port = opts.attach })
  else
    host.request('debug', { cmd = opts.cmd })
  end
end

--- Host report: the debuggee listens and the forward is up.
function M.on_ready(p)
  local dap = get_dap()
  if not dap then
    return
  end
  set_listeners(dap)
  local attach = vim.tbl_deep_extend('force', p.config, config.options.dap or {})
  dap.adapters.remote_dev = { type = 'server', host = attach.connect.host, port = attach.connect.port }
  dap.run(attach)
end

--- Host report: the run ended; close its dap session if still open.
function M.on_end(p)
  local ok, dap = pcall(require, 'dap')
  if not ok or not dap.sessions then
    return
  end
  for _, session in pairs(dap.sessions()) do
    if session.config and session.config.remote_dev_run == p.id then
      pcall(function()
        dap.set_session(session)
        dap.terminate()
      end)
    end
  end
end

return M
