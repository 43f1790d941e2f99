-- What the user sees besides run buffers and quickfix: messages, errors, events, scratch buffers.
local M = {}

local config = require('remote_dev.config')

--- A message through vim.notify (unless the `notify` option is off).
---@param text string
---@param level integer?  vim.log.levels.*
function M.notify(text, level)
  if config.options.notify then
    vim.notify('remote_dev: ' .. text, level or vim.log.levels.INFO)
  end
end

--- A `User` autocmd for statuslines, hooks and tests (|remote_dev-events|).
---@param name string
---@param data table?
function M.fire(name, data)
  vim.api.nvim_exec_autocmds('User', { pattern = name, data = data, modeline = false })
end

--- Report a failure: a message and the RemoteDevError event.
---@param message string
function M.error(message)
  M.notify(message, vim.log.levels.ERROR)
  M.fire('RemoteDevError', { message = message })
end

--- Text in the message area; with `history` kept in :messages.
---@param text string
---@param history boolean?
function M.echo(text, history)
  vim.api.nvim_echo({ { text } }, history or false, {})
end

---@class remote_dev.BufferOwner
---@field root string     the project root: requests made from the buffer are for that project
---@field target string?  the target it shows (a run's, a log's)
---@field run string?     the run it shows: :RemoteStop / :RemoteLog without an id mean that one

---@class remote_dev.BufferOpts
---@field write_hint string?      what :w says instead of writing (default: a generic line)
---@field reload fun(buf: integer)?  :e refills the buffer with this (Neovim empties it first)
---@field listing boolean?        a list to act on (runs, a push preview), not an output

--- Make buf one of the plugin's buffers: named with the remote-dev:// scheme, no file
--- behind it (no swap file; Neovim never reads or writes one), remembering its project
--- (b:remote_dev) so every :Remote* command works from it. :w {file} writes a copy of the
--- lines to {file}; :e refills it (opts.reload).
--- An output (run, log) has 'buftype' "acwrite": Neovim refuses :w in a "nofile" buffer
--- (E382) before any autocommand runs, so only there can :w say what to do instead; its
--- 'modified' stays off (see M.set_lines), so :q never asks. A listing is "nofile".
---@param buf integer
---@param name string
---@param owner remote_dev.BufferOwner
---@param opts remote_dev.BufferOpts?
function M.plugin_buffer(buf, name, owner, opts)
  opts = opts or {}
  vim.bo[buf].buftype = opts.listing and 'nofile' or 'acwrite'
  vim.bo[buf].swapfile = false
  pcall(vim.api.nvim_buf_set_name, buf, name)
  vim.b[buf].remote_dev = owner
  vim.bo[buf].modified = false
  local group = vim.api.nvim_create_augroup('remote_dev_buf_' .. buf, { clear = true })
  vim.api.nvim_create_autocmd('BufWriteCmd', {
    group = group,
    buffer = buf,
    desc = 'remote_dev: say what to do instead of writing; :w {file} writes a copy',
    callback = function(args) M.on_write(buf, args.file, opts.write_hint) end,
  })
  vim.api.nvim_create_autocmd('BufReadCmd', {
    group = group,
    buffer = buf,
    desc = 'remote_dev: :e refills the buffer',
    callback = function()
      if opts.reload then
        opts.reload(buf)
      end
      vim.bo[buf].modified = false
    end,
  })
end

--- BufWriteCmd of a plugin buffer: a copy for :w {file}; for :w, what to do instead.
function M.on_write(buf, file, hint)
  local name = vim.api.nvim_buf_get_name(buf)
  local target = file and vim.fn.fnamemodify(file, ':p') or ''
  if file and file ~= '' and file ~= name and not vim.startswith(file, 'remote-dev://') then
    if vim.uv.fs_stat(target) and vim.v.cmdbang == 0 then
      M.error(('%s exists: :w! %s overwrites it'):format(file, file))
      return
    end
    if vim.fn.writefile(vim.api.nvim_buf_get_lines(buf, 0, -1, false), target) == 0 then
      M.notify(('wrote a copy of %s to %s'):format(name, file))
    else
      M.error(('cannot write %s'):format(file))
    end
    return
  end
  M.notify(('%s is not a file: %s'):format(name,
    hint or ':w {file} writes a copy of it'), vim.log.levels.WARN)
end

--- Replace lines of a plugin buffer (read-only to the user) and keep it unmodified.
---@param buf integer
---@param from integer
---@param to integer
---@param lines string[]
function M.set_lines(buf, from, to, lines)
  vim.bo[buf].modifiable = true
  vim.api.nvim_buf_set_lines(buf, from, to, false, lines)
  vim.bo[buf].modifiable = false
  vim.bo[buf].modified = false
end

--- Windows showing buf that follow its tail: the cursor on the last line, or not the
--- current window. Take them before appending; follow() moves them to the new end.
---@param buf integer
---@return integer[]
function M.followers(buf)
  local out = {}
  local last = vim.api.nvim_buf_line_count(buf)
  for _, win in ipairs(vim.fn.win_findbuf(buf)) do
    if win ~= vim.api.nvim_get_current_win() or vim.api.nvim_win_get_cursor(win)[1] >= last then
      table.insert(out, win)
    end
  end
  return out
end

--- Move the windows of followers(buf) to buf's last line.
---@param wins integer[]
---@param buf integer
function M.follow(wins, buf)
  local last = vim.api.nvim_buf_line_count(buf)
  for _, win in ipairs(wins) do
    pcall(vim.api.nvim_win_set_cursor, win, { last, 0 })
  end
end

--- The buffer named exactly `name` (bufnr() would read it as a pattern), or nil.
---@param name string
---@return integer?
function M.find_buffer(name)
  for _, b in ipairs(vim.api.nvim_list_bufs()) do
    if vim.api.nvim_buf_get_name(b) == name then
      return b
    end
  end
  return nil
end

--- A read-only plugin buffer in a new window at the bottom, replacing one of the same name.
---@param lines string[]
---@param name string
---@param filetype string
---@param owner remote_dev.BufferOwner?  default: the project of the current request context
---@return integer buf
function M.scratch(lines, name, filetype, owner)
  local old = M.find_buffer(name)
  if old then
    pcall(vim.api.nvim_buf_delete, old, { force = true })
  end
  local host = require('remote_dev.host')
  owner = owner or { root = host.project_root() or host.context().cwd }
  vim.cmd('botright new')
  local buf = vim.api.nvim_get_current_buf()
  vim.bo[buf].bufhidden = 'wipe'
  M.plugin_buffer(buf, name, owner, {
    listing = true,
    reload = function(b) M.set_lines(b, 0, -1, lines) end,
  })
  M.set_lines(buf, 0, -1, lines)
  vim.bo[buf].filetype = filetype
  return buf
end

return M
