-- Push and pull: requests, push on save, the dry-run preview, what a finished sync changes here.
local M = {}

local host = require('remote_dev.host')
local ui = require('remote_dev.ui')

---@class remote_dev.PushOpts
---@field paths string[]?   files or folders (default: the whole tree)
---@field force boolean?    overwrite remote files changed since the last sync
---@field dry_run boolean?  show what would happen in a scratch buffer; write nothing

---@param opts remote_dev.PushOpts?
function M.push(opts)
  opts = opts or {}
  local paths = opts.paths and #opts.paths > 0 and opts.paths or nil
  local dry_run = opts.dry_run or false
  host.request('push', { paths = paths, force = opts.force or false, dry_run = dry_run }, function(err, res)
    if err then
      ui.error(err)
    elseif dry_run then
      M.preview(res)
    end
  end)
end

---@class remote_dev.PullOpts
---@field paths string[]?  files or folders (default: the sync.pull folders)
---@field force boolean?   overwrite local files changed since the last sync (never unsaved buffers)

---@param opts remote_dev.PullOpts?
function M.pull(opts)
  opts = opts or {}
  local modified = {}
  for _, b in ipairs(vim.api.nvim_list_bufs()) do
    if vim.api.nvim_buf_is_loaded(b) and vim.bo[b].modified then
      table.insert(modified, vim.api.nvim_buf_get_name(b))
    end
  end
  local paths = opts.paths and #opts.paths > 0 and opts.paths or nil
  host.request('pull', { paths = paths, force = opts.force or false, modified = modified })
end

local project_file = {} ---@type table<string, string|false> folder -> its .remote-dev.toml

--- BufWritePost: push the file when it belongs to a project (the host checks push_on_save).
---@param args { buf: integer }
function M.on_write(args)
  local file = vim.api.nvim_buf_get_name(args.buf)
  if file == '' or vim.bo[args.buf].buftype ~= '' then
    return
  end
  local dir = vim.fs.dirname(file)
  if project_file[dir] == nil then
    project_file[dir] = vim.fs.find('.remote-dev.toml', { upward = true, path = dir, type = 'file' })[1] or false
  end
  if project_file[dir] then
    host.request('save', {}, nil, { file = file, cwd = vim.fn.getcwd() })
  end
end

--- RemoteDevPushDone: conflicts into quickfix.
function M.on_push_done(data)
  require('remote_dev.quickfix').conflicts(data, 'push')
end

--- RemoteDevPullDone: conflicts into quickfix; reload open buffers of pulled files.
function M.on_pull_done(data)
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

local function human(n)
  for _, unit in ipairs({ 'B', 'KB', 'MB' }) do
    if n < 1000 then
      return unit == 'B' and ('%d B'):format(n) or ('%.1f %s'):format(n, unit)
    end
    n = n / 1000
  end
  return ('%.1f GB'):format(n)
end

--- Why a file would not be pushed: the host's reason, or (a host that gives none) its size.
local function skip_reason(s)
  if type(s.reason) == 'string' and s.reason ~= '' then
    return s.reason
  end
  return ('%s, over sync.max_file_size'):format(human(tonumber(s.size) or 0))
end

--- A push preview (:RemotePush --dry-run) in a scratch buffer: what would be sent, deleted,
--- left in conflict, and skipped (with the reason), and files that could not be read.
---@return integer buf
function M.preview(res)
  local lines = { ('remote_dev push preview for %s (nothing was written)'):format(res.target), '' }
  local function section(title, list, fmt)
    table.insert(lines, ('%s (%d)'):format(title, #list))
    for _, item in ipairs(list) do
      table.insert(lines, '  ' .. fmt(item))
    end
    table.insert(lines, '')
  end
  section('send', res.send or {}, function(p) return p end)
  section('delete on the remote', res.delete or {}, function(p) return p end)
  section('conflicts (not overwritten without !)', res.conflict_details or {}, function(c)
    return c.path .. ': ' .. c.reason
  end)
  section('skipped', res.skipped or {}, function(s) return s.path .. ': ' .. skip_reason(s) end)
  if res.errors and #res.errors > 0 then
    section('errors', res.errors, function(e) return e.path .. ': ' .. e.reason end)
  end
  return ui.scratch(lines, 'remote-dev://push-preview', 'remote_dev_preview')
end

return M
