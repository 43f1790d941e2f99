-- nvim-dap glue. `dap.adapters.remote_dev` is a function adapter: for a configuration of a
-- run it asks the host where to connect, the run's local listener while the run goes on and
-- no session ended it, else (dap.restart(), dap.run_last()) a fresh debug run of the same
-- command. How a session ends is seen by the host on that listener (python/remote_dev/
-- dap_proxy.py): terminate/disconnect stop the run like :RemoteStop; the program's own end
-- is left alone. Several sessions may belong to one run: one per debugged process (the
-- ranks of srun/torchrun/mpirun, each with its own listener, announced by the host as they
-- start) and debugpy's child sessions (pool workers), which go through their parent's.
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

--- The configuration nvim-dap runs: the host's, with the user's `dap` option merged in.
local function with_user_fields(cfg)
  return require('remote_dev.env').with_breakpoint_rules(vim.tbl_deep_extend('force', cfg, config.options.dap or {}))
end

--- A server adapter for a local port, answering with the configuration for it.
local function server(port, cfg)
  return {
    type = 'server',
    host = '127.0.0.1',
    port = port,
    enrich_config = cfg and function(_, on_config) on_config(with_user_fields(cfg)) end or nil,
  }
end

--- dap.adapters.remote_dev: see the top of this file.
---@param callback fun(adapter: table)
---@param cfg table  the dap configuration being started
---@param parent table?  the parent session, for a child session (startDebugging)
local function adapter(callback, cfg, parent)
  if parent then
    -- a child session (a subprocess of the debuggee) goes through the parent's listener
    callback(vim.deepcopy(parent.adapter))
    return
  end
  local rd = cfg.remote_dev
  if type(rd) ~= 'table' or not rd.run then
    -- :RemoteDebug --attach: a debugpy the user started, forwarded as it is
    callback(server(cfg.connect.port))
    return
  end
  host.request('debug_attach', { id = rd.run, endpoint = rd.endpoint, cmd = rd.cmd,
      terminate_stops_run = config.options.terminate_stops_run, stop_on_entry = M.stop_on_entry() },
    function(err, res)
      if err then
        ui.error(err)
        return
      end
      -- the same run: the configuration as it is; a new run (restart): the new run's
      callback(server(res.port, res.restarted and res.config or nil))
    end, host.context_of(rd.root, rd.target))
end

--- The `stop_on_entry` option as the host takes it: "all", ranks "0,2", or "".
---@return string
function M.stop_on_entry()
  local out = {}
  for _, r in ipairs(config.options.stop_on_entry or {}) do
    table.insert(out, tostring(r))
  end
  return table.concat(out, ',')
end

local registered = false

local function register(dap)
  if registered then
    return
  end
  registered = true
  dap.adapters.remote_dev = adapter
  dap.listeners.after.setBreakpoints['remote_dev'] = function(...)
    require('remote_dev.env').on_set_breakpoints(...)
  end
end

---@class remote_dev.DebugOpts
---@field cmd string?      the command (default: run.command of .remote-dev.toml)
---@field attach integer?  instead: attach to a debugpy listening on the remote's 127.0.0.1:attach

--- Push, then run under debugpy and attach nvim-dap; or attach to a debugpy already listening.
---@param opts remote_dev.DebugOpts?
function M.debug(opts)
  opts = opts or {}
  local dap = get_dap()
  if not dap then
    return
  end
  register(dap)
  if opts.attach then
    host.request('attach_port', { port = opts.attach })
  else
    host.request('debug', { cmd = opts.cmd, terminate_stops_run = config.options.terminate_stops_run,
      stop_on_entry = M.stop_on_entry() })
  end
end

--- Host report: a debuggee listens behind a local port; start a session for it.
function M.on_ready(p)
  local dap = get_dap()
  if not dap then
    return
  end
  register(dap)
  dap.run(with_user_fields(p.config), { new = true })
end

--- The sessions (children included) of a run.
---@param run_id string
---@return table[]
function M.sessions_of(run_id)
  local ok, dap = pcall(require, 'dap')
  local out = {}
  if not ok then
    return out
  end
  local function walk(s)
    local rd = s.config and s.config.remote_dev
    if type(rd) == 'table' and rd.run == run_id then
      table.insert(out, s)
    end
    for _, child in pairs(s.children or {}) do
      walk(child)
    end
  end
  for _, s in pairs(dap.sessions()) do
    walk(s)
  end
  return out
end

--- Host report: the run ended and its listener is closed. nvim-dap closes the sessions whose
--- connection the host closed; one still open (its adapter never answered) is closed here,
--- without a terminate request (the run is over).
function M.on_end(p)
  for _, s in ipairs(M.sessions_of(p.id)) do
    if not s.closed then
      pcall(function() s:close() end)
    end
  end
end

return M
