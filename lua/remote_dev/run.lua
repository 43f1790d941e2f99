-- Runs: run buffers following their output, :RemoteRun / :RemoteStop / :RemoteRuns / :RemoteLog.
local M = {}

local config = require('remote_dev.config')
local host = require('remote_dev.host')
local ui = require('remote_dev.ui')

--- States of a run that has not ended, as the agent names them ("pending": a queued Slurm job).
M.LIVE_STATES = { starting = true, running = true, pending = true }

---@param state string
---@return boolean
function M.is_live(state)
  return M.LIVE_STATES[state] == true
end

local runs = {} ---@type table<string, {buf: integer, summary: table, has_partial: boolean}>
local run_win = nil ---@type integer?
local started_from = {} ---@type table<string, integer> the window each run was started from, by run id

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
  vim.keymap.set('n', '<C-c>', function() M.stop(s.id) end, { buffer = buf, desc = 'remote_dev: stop this run' })
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
function M.on_output(p)
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
    local max = config.options.run_buffer_lines + 1
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
function M.on_state(s)
  local r = buffer_for(s)
  r.summary = s
  if s.new and not started_from[s.id] then
    started_from[s.id] = vim.api.nvim_get_current_win()
  end
  if s.new or s.show then
    show(r.buf)
  end
  with_modifiable(r.buf, function()
    vim.api.nvim_buf_set_lines(r.buf, 0, 1, false, { state_line(s) })
  end)
  if s.final then
    require('remote_dev.quickfix').run_list({ id = s.id, cmd = s.cmd, win = started_from[s.id] }, s.quickfix or {},
      { final = true, failed = s.code ~= 0 })
  end
end

--- Ids of the runs this session knows, sorted (for completion).
---@return string[]
function M.run_ids()
  local out = vim.tbl_keys(runs)
  table.sort(out)
  return out
end

---@class remote_dev.RunOpts
---@field cmd string?  the command (default: run.command of .remote-dev.toml)

--- Push, then start a run on the target's runner.
---@param opts remote_dev.RunOpts?
function M.run(opts)
  local win = vim.api.nvim_get_current_win()
  host.request('run', { cmd = opts and opts.cmd or nil }, function(err, res)
    if err then
      ui.error(err)
    else
      started_from[res.id] = win
    end
  end)
end

--- Stop a run (default: the latest live run of the target).
---@param id string?
function M.stop(id)
  host.request('stop', { id = id })
end

--- Open a run's full output (default: the latest run).
---@param id string?
function M.log(id)
  host.request('log', { id = id }, function(err, res)
    if err then
      ui.error(err)
      return
    end
    vim.cmd('botright split ' .. vim.fn.fnameescape(res.path))
    vim.bo.filetype = 'remote_dev_log'
    vim.cmd('normal! G')
  end)
end

--- Set a run's locations in its list now (also while it runs).
---@param id string?
function M.quickfix(id)
  host.request('quickfix', { id = id }, function(err, res)
    if err then
      ui.error(err)
      return
    end
    require('remote_dev.quickfix').run_list({ id = res.id, cmd = res.cmd, win = started_from[res.id] }, res.quickfix)
  end)
end

--- :RemoteRuns: a list of the target's runs with keys to attach, stop and open the log.
function M.runs()
  host.request('runs', {}, function(err, list)
    if err then
      ui.error(err)
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
    local buf = ui.scratch(lines, 'remote_dev://runs', 'remote_dev_runs')
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
      host.request('attach', { id = id })
    end
    map('<CR>', attach, 'attach')
    map('a', attach, 'attach')
    map('s', M.stop, 'stop')
    map('l', M.log, 'open log')
    vim.keymap.set('n', 'r', function() vim.cmd('close'); M.runs() end, { buffer = buf, desc = 'refresh' })
    vim.keymap.set('n', 'q', '<cmd>close<cr>', { buffer = buf, desc = 'close' })
    require('remote_dev.services').append_to_runs(buf)
  end)
end

--- VimLeavePre: with stop_runs_on_exit, stop this session's live runs (waits up to 15 s).
function M.on_exit()
  if not config.options.stop_runs_on_exit then
    return
  end
  local done = false
  host.request('stop_all', {}, function() done = true end)
  vim.wait(15000, function() return done end, 20)
end

return M
