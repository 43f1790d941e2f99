-- Run buffers, :RemoteRun / :RemoteStop / :RemoteRuns / :RemoteLog.
local M = {}

local runs = {} ---@type table<string, {buf: integer, summary: table, has_partial: boolean}>
local run_win = nil ---@type integer?

local function rd()
  return require('remote_dev')
end

local function state_line(s)
  local icon = ({ running = '●', starting = '…', pending = '…', exited = (s.code == 0 and '✓' or '✗'), stopped = '■', lost = '?' })[s.state]
    or '•'
  local what = s.state
  if s.code ~= nil and s.code ~= vim.NIL and s.state ~= 'running' then
    what = ('%s (exit %d)'):format(s.state, s.code)
  end
  local job = (s.job and s.job ~= vim.NIL) and (' job ' .. s.job) or ''
  local detail = (s.detail and s.detail ~= '' and s.detail ~= vim.NIL) and (' — ' .. s.detail) or ''
  return ('%s %s  %s  [%s %s%s]  %.1f s%s'):format(icon, what, s.cmd, s.target, s.id, job, s.duration or 0, detail)
end

local function show(buf)
  if run_win and vim.api.nvim_win_is_valid(run_win) then
    vim.api.nvim_win_set_buf(run_win, buf)
    return
  end
  local cur = vim.api.nvim_get_current_win()
  vim.cmd('botright 12split')
  run_win = vim.api.nvim_get_current_win()
  vim.api.nvim_win_set_buf(run_win, buf)
  vim.wo[run_win].number = false
  vim.wo[run_win].wrap = false
  vim.api.nvim_set_current_win(cur)
end

local function buffer_for(s)
  local r = runs[s.id]
  if r and vim.api.nvim_buf_is_valid(r.buf) then
    return r
  end
  local buf = vim.api.nvim_create_buf(false, true)
  vim.bo[buf].buftype = 'nofile'
  vim.bo[buf].bufhidden = 'hide'
  vim.bo[buf].swapfile = false
  vim.bo[buf].undolevels = -1
  vim.bo[buf].filetype = 'remote_dev_run'
  pcall(vim.api.nvim_buf_set_name, buf, 'remote_dev://run/' .. s.id)
  vim.api.nvim_buf_set_lines(buf, 0, -1, false, { state_line(s) })
  vim.bo[buf].modifiable = false
  vim.b[buf].remote_dev_run = s.id
  vim.keymap.set('n', '<C-c>', function() M.stop({ args = s.id }) end, { buffer = buf, desc = 'remote_dev: stop this run' })
  vim.keymap.set('n', 'q', '<cmd>close<cr>', { buffer = buf, desc = 'close' })
  r = { buf = buf, summary = s, has_partial = false }
  runs[s.id] = r
  return r
end

local function with_modifiable(buf, f)
  vim.bo[buf].modifiable = true
  f()
  vim.bo[buf].modifiable = false
end

--- Windows showing buf whose cursor is on the last line (they follow the tail).
local function followers(buf)
  local out = {}
  for _, win in ipairs(vim.fn.win_findbuf(buf)) do
    local last = vim.api.nvim_buf_line_count(buf)
    if vim.api.nvim_win_get_cursor(win)[1] >= last or win ~= vim.api.nvim_get_current_win() then
      table.insert(out, win)
    end
  end
  return out
end

--- Host report: new output lines (and the current unfinished line) of a run.
function M.output(p)
  local r = runs[p.id]
  if not r then
    return
  end
  local buf = r.buf
  if not vim.api.nvim_buf_is_valid(buf) then
    return
  end
  local follow = followers(buf)
  local lines = p.lines or {}
  if p.dropped and p.dropped > 0 then
    table.insert(lines, 1, ('[remote_dev: %d lines skipped here; :RemoteLog %s has them all]'):format(p.dropped, p.id))
  end
  local partial = p.partial or ''
  with_modifiable(buf, function()
    local count = vim.api.nvim_buf_line_count(buf)
    local from = r.has_partial and count - 1 or count
    local new = vim.list_extend(vim.list_slice(lines), partial ~= '' and { partial } or {})
    vim.api.nvim_buf_set_lines(buf, from, -1, false, new)
    r.has_partial = partial ~= ''
    local max = rd().options.run_buffer_lines + 1
    count = vim.api.nvim_buf_line_count(buf)
    if count > max then
      vim.api.nvim_buf_set_lines(buf, 1, count - max + 1, false, {})
    end
  end)
  local last = vim.api.nvim_buf_line_count(buf)
  for _, win in ipairs(follow) do
    pcall(vim.api.nvim_win_set_cursor, win, { last, 0 })
  end
end

--- Host report: a run's state changed (new, queue state, exit with quickfix entries).
function M.state(s)
  local r = buffer_for(s)
  r.summary = s
  if s.new or s.show then
    show(r.buf)
  end
  with_modifiable(r.buf, function()
    vim.api.nvim_buf_set_lines(r.buf, 0, 1, false, { state_line(s) })
  end)
  if s.final then
    local qf = s.quickfix or {}
    if #qf > 0 then
      vim.fn.setqflist({}, ' ', { title = ('%s: %s'):format(s.id, s.cmd), items = qf })
      if s.code ~= 0 and rd().options.open_quickfix then
        local cur = vim.api.nvim_get_current_win()
        vim.cmd('botright copen')
        vim.api.nvim_set_current_win(cur)
      end
    end
  end
end

local function ids()
  local out = {}
  for id in pairs(runs) do
    table.insert(out, id)
  end
  table.sort(out)
  return out
end
M.run_ids = ids

local function cmd_of(o)
  local c = o and o.args or ''
  return c ~= '' and c or nil
end

function M.run(o)
  rd().request('run', { cmd = cmd_of(o) })
end

function M.stop(o)
  local id = o and o.args ~= '' and o.args or nil
  rd().request('stop', { id = id })
end

function M.log(o)
  local id = o and o.args ~= '' and o.args or nil
  rd().request('log', { id = id }, function(err, res)
    if err then
      rd().error(err)
      return
    end
    vim.cmd('botright split ' .. vim.fn.fnameescape(res.path))
    vim.bo.filetype = 'remote_dev_log'
    vim.cmd('normal! G')
  end)
end

function M.quickfix(id)
  rd().request('quickfix', { id = id }, function(err, res)
    if err then
      rd().error(err)
      return
    end
    vim.fn.setqflist({}, ' ', { title = ('%s: %s'):format(res.id, res.cmd), items = res.quickfix })
  end)
end

--- :RemoteRuns: a list of the target's runs with keys to attach, stop and open the log.
function M.runs()
  rd().request('runs', {}, function(err, list)
    if err then
      rd().error(err)
      return
    end
    local lines = { 'remote_dev runs — <CR>/a attach  s stop  l log  r refresh  q close', '' }
    local by_line = {}
    for _, s in ipairs(list) do
      table.insert(lines, ('%-20s %-9s %-6s %s  %8.1f s  %s%s'):format(s.id, s.state,
        (s.code ~= nil and s.code ~= vim.NIL) and tostring(s.code) or '-',
        os.date('%m-%d %H:%M:%S', math.floor(s.created)), s.duration or 0, s.cmd,
        (s.job and s.job ~= vim.NIL) and ('  (job ' .. s.job .. ')') or ''))
      by_line[#lines] = s.id
    end
    if #list == 0 then
      table.insert(lines, '(no runs yet)')
    end
    local buf = rd()._scratch(lines, 'remote_dev://runs', 'remote_dev_runs')
    local function id_here()
      return by_line[vim.api.nvim_win_get_cursor(0)[1]]
    end
    local function map(lhs, f, desc)
      vim.keymap.set('n', lhs, function()
        local id = id_here()
        if id then
          f(id)
        end
      end, { buffer = buf, desc = desc })
    end
    local function attach(id)
      vim.cmd('close')
      rd().request('attach', { id = id })
    end
    map('<CR>', attach, 'attach')
    map('a', attach, 'attach')
    map('s', function(id) M.stop({ args = id }) end, 'stop')
    map('l', function(id) M.log({ args = id }) end, 'open log')
    vim.keymap.set('n', 'r', function() vim.cmd('close'); M.runs() end, { buffer = buf, desc = 'refresh' })
    vim.keymap.set('n', 'q', '<cmd>close<cr>', { buffer = buf, desc = 'close' })
  end)
end

--- VimLeavePre: with stop_runs_on_exit, stop this session's live runs (waits up to 15 s).
function M._on_exit()
  if not rd().options.stop_runs_on_exit then
    return
  end
  local done = false
  rd().request('stop_all', {}, function() done = true end)
  vim.wait(15000, function() return done end, 20)
end

function M.debug(o)
  local c = cmd_of(o)
  local port = c and c:match('^%-%-attach%s+(%d+)$')
  if port then
    require('remote_dev.dap').attach(port)
  else
    require('remote_dev.dap').debug(c)
  end
end

function M.forward(o)
  require('remote_dev.dap').forward(o.fargs)
end

return M
