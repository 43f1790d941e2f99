-- The Python host (rplugin/python3): requests go out through RemoteDevRequest and never wait;
-- answers ("resolve") and reports come back through require('remote_dev')._from_host(),
-- which hands them to dispatch() here.
local M = {}

local ui = require('remote_dev.ui')

local pending = {} ---@type table<integer, fun(err: string?, result: any)>
local next_id = 0
local status_cache = {} ---@type table<string, table> the last status report, by project root
local last_status = nil ---@type table?

--- The context of a request made for a project rather than from the current buffer.
---@param root string
---@param target string?
---@return { file: string, cwd: string, target: string? }
function M.context_of(root, target)
  return { file = '', cwd = root, target = target }
end

--- The editor context of a request: the current file (when a normal buffer) and cwd; in one
--- of the plugin's buffers (a run or log buffer), its project and target.
---@return { file: string, cwd: string, target: string? }
function M.context()
  local owner = vim.b.remote_dev
  if type(owner) == 'table' and owner.root then
    return M.context_of(owner.root, owner.target)
  end
  local file = vim.api.nvim_buf_get_name(0)
  if vim.bo.buftype ~= '' then
    file = ''
  end
  return { file = file, cwd = vim.fn.getcwd() }
end

--- The project root of the current context: the plugin buffer's project, or the folder of
--- the nearest .remote-dev.toml above the current file (or cwd); nil when none.
---@return string?
function M.project_root()
  local owner = vim.b.remote_dev
  if type(owner) == 'table' and owner.root then
    return owner.root
  end
  local ctx = M.context()
  local start = ctx.file ~= '' and vim.fs.dirname(ctx.file) or ctx.cwd
  local found = vim.fs.find('.remote-dev.toml', { upward = true, path = start, type = 'file' })[1]
  return found and vim.fs.dirname(found) or nil
end

--- Send a request to the Python host; cb(err, result) runs on the main loop later.
--- Without cb an error is reported (message and RemoteDevError).
---@param action string
---@param params table?
---@param cb fun(err: string?, result: any)?
---@param ctx table?  defaults to context()
function M.request(action, params, cb, ctx)
  next_id = next_id + 1
  local id = next_id
  pending[id] = cb or function(err)
    if err then
      ui.error(err)
    end
  end
  local p = params and next(params) ~= nil and params or vim.empty_dict()
  -- Remote plugins load on first use (FuncUndefined); an unknown function means the
  -- manifest lacks us.
  local ok, err = pcall(vim.fn.RemoteDevRequest, id, action, ctx or M.context(), p)
  if not ok then
    pending[id] = nil
    ui.error(tostring(err):find('Unknown function')
      and 'the Python side is not registered: run :UpdateRemotePlugins, then restart Neovim (:checkhealth remote_dev tells more)'
      or ('the Python host failed: ' .. tostring(err)))
  end
end

--- The last status the host reported for a project root (or for any project).
---@param root string?
---@return table?
function M.status_of(root)
  return (root and status_cache[root]) or last_status
end

local levels = { info = vim.log.levels.INFO, warn = vim.log.levels.WARN, error = vim.log.levels.ERROR }

-- What to do on an event before the User autocmd fires (the modules load on first use).
local on_event = {
  RemoteDevPushDone = function(data) require('remote_dev.sync').on_push_done(data) end,
  RemoteDevPullDone = function(data) require('remote_dev.sync').on_pull_done(data) end,
}

-- The host's reports by kind (python/remote_dev: engine.report).
local reports = {
  event = function(p)
    local handler = on_event[p.name]
    if handler then
      handler(p.data)
    end
    ui.fire(p.name, p.data)
  end,
  message = function(p)
    ui.notify(p.text, levels[p.level] or vim.log.levels.INFO)
  end,
  status = function(p)
    status_cache[p.root] = p
    last_status = p
  end,
  progress = function(p)
    local pct = p.total_bytes > 0 and math.floor(100 * p.bytes / p.total_bytes) or 100
    ui.echo(('remote_dev: %s %s: %d/%d files, %d%%'):format(p.action, p.target, p.files, p.total_files, pct))
  end,
  run_output = function(p) require('remote_dev.run').on_output(p) end,
  run_state = function(p) require('remote_dev.run').on_state(p) end,
  debug_ready = function(p) require('remote_dev.dap').on_ready(p) end,
  debug_end = function(p) require('remote_dev.dap').on_end(p) end,
  shell_output = function(p) require('remote_dev.shell').on_output(p) end,
  shell_state = function(p) require('remote_dev.shell').on_state(p) end,
  kernel_output = function(p) require('remote_dev.kernel').on_output(p) end,
  kernel_error = function(p) require('remote_dev.kernel').on_error(p) end,
  login = function(p) require('remote_dev.login').ask(p) end,
}

--- Everything the host sends: ("resolve", id, err, result) answers a request;
--- ("report", kind, payload) is one of the reports above.
function M.dispatch(kind, ...)
  if kind == 'resolve' then
    local id, err, result = ...
    local cb = pending[id]
    pending[id] = nil
    if cb then
      cb(err ~= vim.NIL and err or nil, result ~= vim.NIL and result or nil)
    end
  elseif kind == 'report' then
    local what, payload = ...
    local f = reports[what]
    if f then
      f(payload)
    end
  end
end

return M
