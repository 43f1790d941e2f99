-- nvim-dap glue: a `server` adapter for the forwarded port and an `attach` configuration
-- whose pathMappings come from the host's mapping module. Plugs into nvim-dap's tables.
local M = {}

local function rd()
  return require('remote_dev')
end

local install_hint = 'nvim-dap is not installed: add "mfussenegger/nvim-dap" with your plugin manager '
  .. '(e.g. lazy.nvim: { "mfussenegger/nvim-dap" }); :checkhealth remote_dev checks it'

local function get_dap()
  local ok, dap = pcall(require, 'dap')
  if not ok then
    rd().error(install_hint)
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
    if id and rd().options.terminate_stops_run then
      rd().request('stop', { id = id }, function() end)
    end
  end
  dap.listeners.after.event_terminated['remote_dev'] = ended
  dap.listeners.after.disconnect['remote_dev'] = ended
end

--- :RemoteDebug [cmd]
function M.debug(cmd)
  if not get_dap() then
    return
  end
  rd().request('debug', { cmd = cmd })
end

--- Attach nvim-dap to a debugpy already listening on the remote's 127.0.0.1:port.
function M.attach(port)
  if not get_dap() then
    return
  end
  rd().request('attach_port', { port = tonumber(port) })
end

--- Host report: the debuggee listens and the forward is up.
function M.ready(p)
  local dap = get_dap()
  if not dap then
    return
  end
  set_listeners(dap)
  local config = vim.tbl_deep_extend('force', p.config, rd().options.dap or {})
  dap.adapters.remote_dev = { type = 'server', host = config.connect.host, port = config.connect.port }
  dap.run(config)
end

--- Host report: the run ended; close its dap session if still open.
function M.ended(p)
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

--- :RemoteForward {port} [local]
function M.forward(args)
  local port, local_port = tonumber(args[1]), tonumber(args[2] or '')
  if not port then
    rd().error(':RemoteForward needs a port number: :RemoteForward {port} [local]')
    return
  end
  rd().request('forward', { port = port, ['local'] = local_port })
end

return M
