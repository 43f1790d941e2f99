---@mod remote_dev  Edit locally, push/run/debug on a remote machine, container or Slurm job.
---
--- The Lua side never blocks: every request goes to the Python host (rplugin) and the
--- answer comes back through `_from_host`. The host keeps the connections; this module
--- keeps what the UI needs (status, run buffers, callbacks).

local M = {}

---@class remote_dev.Options
---@field notify boolean                show messages with vim.notify (default true)
---@field stop_runs_on_exit boolean     stop this session's live runs when Neovim exits (default false)
---@field run_buffer_lines integer      lines a run buffer keeps; the full log stays on the remote (default 10000)
---@field open_quickfix boolean         open the quickfix window when a run fails with locations (default true)
---@field dap table                     extra fields merged into the nvim-dap attach configuration (e.g. { justMyCode = false })
---@field terminate_stops_run boolean   ending the dap session stops the run (default true)
local defaults = {
  notify = true,
  stop_runs_on_exit = false,
  run_buffer_lines = 10000,
  open_quickfix = true,
  dap = {},
  terminate_stops_run = true,
}

M.options = vim.deepcopy(defaults)

local pending = {} ---@type table<integer, fun(err: string?, result: any)>
local next_id = 0
local status_cache = {} ---@type table<string, table> status by project root

--- Configure the plugin. Every field is optional.
---@param opts remote_dev.Options?
function M.setup(opts)
  opts = opts or {}
  vim.validate({ opts = { opts, 'table' } })
  for key, value in pairs(opts) do
    if defaults[key] == nil then
      error(('remote_dev.setup: unknown option %q'):format(key))
    end
    vim.validate({ [key] = { value, type(defaults[key]) } })
  end
  M.options = vim.tbl_deep_extend('force', vim.deepcopy(defaults), opts)
end

local function notify(text, level)
  if M.options.notify then
    vim.notify('remote_dev: ' .. text, level or vim.log.levels.INFO)
  end
end
M.notify = notify

--- A read-only scratch buffer in a new window at the bottom, replacing one of the same name.
---@return integer buf
function M._scratch(lines, name, filetype)
  local old = vim.fn.bufnr(name)
  if old > 0 then
    pcall(vim.api.nvim_buf_delete, old, { force = true })
  end
  vim.cmd('botright new')
  local buf = vim.api.nvim_get_current_buf()
  vim.bo[buf].buftype = 'nofile'
  vim.bo[buf].bufhidden = 'wipe'
  vim.bo[buf].swapfile = false
  vim.api.nvim_buf_set_lines(buf, 0, -1, false, lines)
  vim.bo[buf].modifiable = false
  vim.bo[buf].filetype = filetype
  pcall(vim.api.nvim_buf_set_name, buf, name)
  return buf
end

local function fire(name, data)
  vim.api.nvim_exec_autocmds('User', { pattern = name, data = data, modeline = false })
end
M._fire = fire

local function context()
  local file = vim.api.nvim_buf_get_name(0)
  if vim.bo.buftype ~= '' then
    file = ''
  end
  return { file = file, cwd = vim.fn.getcwd() }
end

--- Send a request to the Python host; cb(err, result) runs on the main loop.
---@param action string
---@param params table?
---@param cb fun(err: string?, result: any)?
---@param ctx table?
function M.request(action, params, cb, ctx)
  next_id = next_id + 1
  pending[next_id] = cb
    or function(err)
      if err then
        M.error(err)
      end
    end
  local p = params and next(params) ~= nil and params or vim.empty_dict()
  -- Remote plugins load on first use (FuncUndefined); an unknown function means the
  -- manifest lacks us.
  local ok, err = pcall(vim.fn.RemoteDevRequest, next_id, action, ctx or context(), p)
  if not ok then
    pending[next_id] = nil
    local msg = tostring(err):find('Unknown function') and
      'the Python side is not registered: run :UpdateRemotePlugins, then restart Neovim (:checkhealth remote_dev tells more)'
      or ('the Python host failed: ' .. tostring(err))
    M.error(msg)
  end
end

--- Report a failure: a message and the RemoteDevError event.
function M.error(message)
  notify(message, vim.log.levels.ERROR)
  fire('RemoteDevError', { message = message })
end

local levels = { info = vim.log.levels.INFO, warn = vim.log.levels.WARN, error = vim.log.levels.ERROR }

local reports = {}

function reports.event(p)
  local handler = M._event_handlers[p.name]
  if handler then
    handler(p.data)
  end
  fire(p.name, p.data)
end

function reports.message(p)
  notify(p.text, levels[p.level] or vim.log.levels.INFO)
end

function reports.status(p)
  status_cache[p.root] = p
  status_cache._last = p
end

function reports.progress(p)
  local pct = p.total_bytes > 0 and math.floor(100 * p.bytes / p.total_bytes) or 100
  vim.api.nvim_echo({ { ('remote_dev: %s %s: %d/%d files, %d%%'):format(p.action, p.target, p.files, p.total_files, pct) } }, false, {})
end

function reports.run_output(p)
  require('remote_dev.run').output(p)
end

function reports.run_state(p)
  require('remote_dev.run').state(p)
end

function reports.debug_ready(p)
  require('remote_dev.dap').ready(p)
end

function reports.debug_end(p)
  require('remote_dev.dap').ended(p)
end

--- Entry point for the host's notifications.
function M._from_host(kind, ...)
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

M._event_handlers = {}

M._event_handlers.RemoteDevPushDone = function(data)
  require('remote_dev.quickfix').conflicts(data, 'push')
end

M._event_handlers.RemoteDevPullDone = function(data)
  require('remote_dev.quickfix').conflicts(data, 'pull')
  for _, path in ipairs(data.pulled or {}) do
    local buf = vim.fn.bufnr(path)
    if buf > 0 and vim.api.nvim_buf_is_loaded(buf) and not vim.bo[buf].modified then
      vim.api.nvim_buf_call(buf, function()
        vim.cmd('checktime')
      end)
    end
  end
end

local function project_root()
  local buf = vim.api.nvim_buf_get_name(0)
  local start = (buf ~= '' and vim.bo.buftype == '') and vim.fs.dirname(buf) or vim.fn.getcwd()
  local found = vim.fs.find('.remote-dev.toml', { upward = true, path = start, type = 'file' })[1]
  return found and vim.fs.dirname(found) or nil
end

--- What :RemoteStatus shows, for statuslines and tests: target, host, remote_root,
--- connected, python (remote version), agent (version), rtt_ms, last_push, runs, error.
--- Instant: the last known state, refreshed by every request.
---@return table
function M.status()
  local root = project_root()
  return vim.deepcopy((root and status_cache[root]) or status_cache._last or {})
end

-- Commands ---------------------------------------------------------------------------

local function show_status(s)
  local lines = {
    ('target      %s (%s runner)  [%s]'):format(s.target, s.runner, table.concat(s.targets or {}, ', ')),
    ('host        %s%s'):format(s.host, s.remote_host and (' (' .. s.remote_host .. ')') or ''),
    ('remote_root %s'):format(s.remote_root),
    ('connected   %s'):format(s.connected and 'yes' or ('no' .. (s.error and (': ' .. s.error) or ''))),
    ('python      %s'):format(s.python or '?'),
    ('agent       %s'):format(s.agent or '?'),
    ('round trip  %s'):format(s.rtt_ms and (s.rtt_ms .. ' ms') or '?'),
  }
  local lp = s.last_push
  if lp and lp ~= vim.NIL then
    table.insert(lines, ('last push   %d files, %d bytes, %d ms, %s'):format(lp.files, lp.bytes, lp.ms, os.date('%H:%M:%S', lp.time)))
  else
    table.insert(lines, 'last push   never (this session)')
  end
  local live = 0
  for _, r in ipairs(s.runs or {}) do
    if r.state == 'running' or r.state == 'starting' then
      live = live + 1
    end
  end
  table.insert(lines, ('runs        %d (%d live)'):format(#(s.runs or {}), live))
  vim.api.nvim_echo({ { table.concat(lines, '\n') } }, true, {})
end

function M.show_status()
  M.request('status', { refresh = true }, function(err, s)
    if err then
      M.error(err)
      return
    end
    show_status(s)
  end)
end

function M.target(name)
  M.request('target', { name = (name and name ~= '') and name or nil }, function(err, s)
    if err then
      M.error(err)
      return
    end
    notify(('target %s: %s:%s (%s)'):format(s.target, s.host, s.remote_root, s.runner))
  end)
end

local function split_args(o)
  local flags, paths = {}, {}
  for _, a in ipairs(o.fargs or {}) do
    if a:match('^%-%-') then
      flags[a] = true
    else
      table.insert(paths, vim.fn.expand(a))
    end
  end
  return flags, paths
end

function M.push(o)
  o = o or {}
  local flags, paths = split_args(o)
  local dry = flags['--dry-run'] or false
  M.request('push', { paths = #paths > 0 and paths or nil, force = o.bang or false, dry_run = dry }, function(err, res)
    if err then
      M.error(err)
    elseif dry then
      require('remote_dev.quickfix').preview(res)
    end
  end)
end

function M.pull(o)
  o = o or {}
  local _, paths = split_args(o)
  local modified = {}
  for _, b in ipairs(vim.api.nvim_list_bufs()) do
    if vim.api.nvim_buf_is_loaded(b) and vim.bo[b].modified then
      table.insert(modified, vim.api.nvim_buf_get_name(b))
    end
  end
  M.request('pull', { paths = #paths > 0 and paths or nil, force = o.bang or false, modified = modified })
end

local project_cache = {}

--- BufWritePost: push the file when it belongs to a project (the host checks push_on_save).
function M._on_write(args)
  local file = vim.api.nvim_buf_get_name(args.buf)
  if file == '' or vim.bo[args.buf].buftype ~= '' then
    return
  end
  local dir = vim.fs.dirname(file)
  if project_cache[dir] == nil then
    project_cache[dir] = vim.fs.find('.remote-dev.toml', { upward = true, path = dir, type = 'file' })[1] or false
  end
  if project_cache[dir] then
    M.request('save', {}, nil, { file = file, cwd = vim.fn.getcwd() })
  end
end

-- Run-related commands live in remote_dev.run; exposed here for the commands file.
setmetatable(M, {
  __index = function(_, key)
    local run = require('remote_dev.run')
    if run[key] then
      return run[key]
    end
  end,
})

return M
