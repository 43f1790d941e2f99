-- :RemoteShell: terminals on tmux sessions of the target. The host relays the bytes of a PTY
-- channel on its own SSH connection; this side is a terminal made with nvim_open_term
-- whose keystrokes (on_input) and size go back to the host.
local M = {}

local host = require('remote_dev.host')
local ui = require('remote_dev.ui')

---@class remote_dev.Term
---@field chan integer      the terminal's channel (nvim_open_term)
---@field name string       the shell's name
---@field root string?      the project root
---@field state string      'opening' | 'attached' | 'reconnecting' | 'ended' | 'detached'
---@field size integer[]?   {cols, rows} last sent
---@field note string?      the last state message written into the terminal

local terms = {} ---@type table<integer, remote_dev.Term> by buffer

local function noop() end

local function project_root()
  local s = host.status_of(nil)
  local ctx = host.context()
  local start = ctx.file ~= '' and vim.fs.dirname(ctx.file) or ctx.cwd
  local found = vim.fs.find('.remote-dev.toml', { upward = true, path = start, type = 'file' })[1]
  return found and vim.fs.dirname(found) or (s and s.root) or nil
end

--- The terminal's size: the smallest window showing buf (columns without number/sign
--- columns), or nil when no window shows it.
local function size_of(buf)
  local cols, rows
  for _, win in ipairs(vim.fn.win_findbuf(buf)) do
    local info = vim.fn.getwininfo(win)[1]
    local c, r = info.width - info.textoff, info.height
    cols = cols and math.min(cols, c) or c
    rows = rows and math.min(rows, r) or r
  end
  if not cols then
    return nil
  end
  return { math.max(cols, 2), math.max(rows, 1) }
end

local function send_size(buf)
  local t = terms[buf]
  if not t or t.state == 'ended' or t.state == 'detached' then
    return
  end
  local size = size_of(buf)
  if size and (not t.size or t.size[1] ~= size[1] or t.size[2] ~= size[2]) then
    t.size = size
    host.request('shell_resize', { id = buf, cols = size[1], rows = size[2] }, noop)
  end
end

local function resize_all()
  for buf in pairs(terms) do
    send_size(buf)
  end
end

local group = nil
local function ensure_autocmds()
  if group then
    return
  end
  group = vim.api.nvim_create_augroup('remote_dev_shell', { clear = true })
  vim.api.nvim_create_autocmd({ 'WinResized', 'VimResized', 'BufWinEnter', 'WinNew', 'WinClosed', 'TabEnter' }, {
    group = group,
    desc = 'remote_dev: terminal sizes of :RemoteShell',
    callback = function() vim.schedule(resize_all) end,
  })
end

local function write_note(t, text)
  if t.note == text then
    return
  end
  t.note = text
  pcall(vim.api.nvim_chan_send, t.chan, '\r\n\27[2m[remote_dev: ' .. text .. ']\27[0m\r\n')
end

local function find(root, name)
  for buf, t in pairs(terms) do
    if vim.api.nvim_buf_is_valid(buf) and t.root == root and t.name == name then
      return buf, t
    end
  end
end

local function open_window(mods, buf)
  local existing = vim.fn.win_findbuf(buf)[1]
  if existing then
    vim.api.nvim_set_current_win(existing)
    return
  end
  if mods and mods ~= '' then
    vim.cmd(mods .. ' split')
  else
    vim.cmd('botright split')
    vim.cmd('resize ' .. math.max(10, math.floor(vim.o.lines * 0.4)))
  end
  vim.api.nvim_win_set_buf(0, buf)
end

---@class remote_dev.ShellOpts
---@field name string?  the shell's name (default "main")
---@field mods string?  command modifiers for the window (:vertical, :tab...)

--- Open (or show) a terminal on shell `name` of the target: made in remote_root with the
--- target's env when missing, reattached when it exists (its screen and history come back).
---@param opts remote_dev.ShellOpts?
function M.open(opts)
  opts = opts or {}
  local name = (opts.name and opts.name ~= '') and opts.name or 'main'
  local root = project_root()
  local old_buf, old = find(root, name)
  if old_buf and old.state ~= 'ended' and old.state ~= 'detached' then
    open_window(opts.mods, old_buf)
    vim.cmd('startinsert')
    return
  end
  if old_buf then
    terms[old_buf] = nil
    pcall(vim.api.nvim_buf_delete, old_buf, { force = true })
  end
  local ctx = host.context()
  local buf = vim.api.nvim_create_buf(true, true)
  vim.bo[buf].bufhidden = 'hide'
  open_window(opts.mods, buf)
  local chan = vim.api.nvim_open_term(buf, {
    on_input = function(_, _, b, data)
      local t = terms[b]
      if t and (t.state == 'attached' or t.state == 'reconnecting' or t.state == 'opening') then
        host.request('shell_input', { id = b, data = data }, noop)
      end
    end,
  })
  terms[buf] = { chan = chan, name = name, root = root, state = 'opening' }
  vim.b[buf].remote_dev_shell = name
  vim.b[buf].remote_dev_root = root
  ensure_autocmds()
  vim.api.nvim_create_autocmd('BufWipeout', {
    buffer = buf,
    group = group,
    desc = 'remote_dev: detach the shell (it lives on)',
    callback = function()
      if terms[buf] then
        terms[buf] = nil
        host.request('shell_detach', { id = buf }, noop)
      end
    end,
  })
  local size = size_of(buf) or { vim.o.columns, math.max(10, vim.o.lines - 4) }
  terms[buf].size = size
  vim.cmd('startinsert')
  host.request('shell_open', { id = buf, name = name, cols = size[1], rows = size[2] }, function(err, res)
    local t = terms[buf]
    if not t then
      return
    end
    if err then
      t.state = 'ended'
      write_note(t, 'no shell: ' .. err)
      ui.error(err)
      return
    end
    vim.b[buf].remote_dev_target = res.target
    pcall(vim.api.nvim_buf_set_name, buf, ('remote-dev://shell/%s/%s'):format(res.target, name))
    if res.created then
      ui.notify(('shell %s made on %s'):format(name, res.where))
    end
    send_size(buf)
  end, ctx)
end

--- Host report: bytes for a terminal.
function M.on_output(p)
  local t = terms[p.id]
  if t then
    pcall(vim.api.nvim_chan_send, t.chan, p.data)
  end
end

--- Host report: a terminal attached, lost its connection (it reattaches by itself), or ended.
function M.on_state(p)
  local t = terms[p.id]
  if not t then
    return
  end
  local was = t.state
  t.state = p.state
  if p.state == 'attached' then
    t.note = nil
    if was == 'reconnecting' then
      ui.notify(('shell %s: reattached'):format(t.name))
    end
  elseif p.state == 'reconnecting' then
    write_note(t, 'reconnecting: ' .. (p.message or ''))
  else
    write_note(t, p.message ~= '' and p.message or p.state)
    ui.notify(p.message ~= '' and p.message or ('shell ' .. t.name .. ' ' .. p.state))
  end
end

--- Names of the target's shells (completion; from the last status).
---@return string[]
function M.names()
  local out = {}
  for _, s in ipairs((host.status_of(project_root()) or {}).services or {}) do
    if s.kind == 'shell' then
      table.insert(out, s.name)
    end
  end
  return out
end

--- End shell `name` on the remote: its tmux session and every process started in it.
---@param name string
function M.kill(name)
  host.request('shell_kill', { name = name }, function(err)
    if err then
      ui.error(err)
    end
  end)
end

--- :RemoteShell!: the target's shells in a list; <CR> opens one, X kills it.
function M.list()
  host.request('shells', {}, function(err, list)
    if err then
      ui.error(err)
      return
    end
    local lines = { 'remote_dev shells — <CR> open  X kill  r refresh  q close', '' }
    local by_line = {}
    for _, s in ipairs(list) do
      table.insert(lines, ('%-16s %s  %s'):format(s.name, os.date('%m-%d %H:%M', math.floor(s.created or 0)), s.detail or ''))
      by_line[#lines] = s.name
    end
    if #list == 0 then
      table.insert(lines, '(no shells: :RemoteShell [name] makes one)')
    end
    local buf = ui.scratch(lines, 'remote-dev://shells', 'remote_dev_shells')
    local function map(lhs, f, desc)
      vim.keymap.set('n', lhs, function()
        local name = by_line[vim.api.nvim_win_get_cursor(0)[1]]
        if name then
          f(name)
        end
      end, { buffer = buf, desc = desc })
    end
    map('<CR>', function(name)
      vim.cmd('close')
      M.open({ name = name })
    end, 'open')
    map('X', function(name)
      vim.cmd('close')
      M.kill(name)
    end, 'kill')
    vim.keymap.set('n', 'r', function() vim.cmd('close'); M.list() end, { buffer = buf, desc = 'refresh' })
    vim.keymap.set('n', 'q', '<cmd>close<cr>', { buffer = buf, desc = 'close' })
  end)
end

--- The state of the terminals of this session (tests, statuslines): by buffer.
---@return table<integer, { name: string, state: string }>
function M.terminals()
  local out = {}
  for buf, t in pairs(terms) do
    out[buf] = { name = t.name, state = t.state }
  end
  return out
end

return M
