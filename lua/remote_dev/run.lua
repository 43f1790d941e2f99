-- Runs: run buffers following their output, :RemoteRun / :RemoteStop / :RemoteRuns / :RemoteLog.
local M = {}

local config = require('remote_dev.config')
local host = require('remote_dev.host')
local ui = require('remote_dev.ui')

---@class remote_dev.RunBuffer
---@field buf integer
---@field summary table
---@field has_partial boolean  the buffer's last line is the unfinished one
---@field chunks {text: string, n: integer}[]  output not in the buffer yet (flush() writes it)
---@field queued integer  lines in chunks
---@field partial string  the unfinished line to show after them
---@field dirty boolean  pending or partial to write
---@field replace boolean  pending alone fills the buffer: its output is replaced
---@field flushed integer?  hrtime of the last flush
local runs = {} ---@type table<string, remote_dev.RunBuffer>
local run_win = nil ---@type integer?
local started_from = {} ---@type table<string, integer> the window each run was started from, by run id

local function state_line(s)
  local icon = ({ running = '●', starting = '…', pending = '…', exited = (s.code == 0 and '✓' or '✗'), stopped = '■', lost = '?' })[s.state]
    or '•'
  local what = s.state
  if type(s.stopped_by) == 'string' and s.stopped_by ~= '' then
    what = 'stopped by ' .. s.stopped_by
  end
  if s.code ~= nil and s.code ~= vim.NIL and not s.live then
    what = ('%s (exit %d)'):format(what, s.code)
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

--- The run a request made here is about: the given id, else the run of the current run or
--- log buffer (nil: the host picks the latest).
local function run_here(id)
  if id and id ~= '' then
    return id
  end
  local owner = vim.b.remote_dev
  return type(owner) == 'table' and owner.run or nil
end

--- :e in a run buffer: its state line and the whole log again (Neovim emptied it).
local function reload_run(buf, id)
  host.request('log', { id = id }, function(err, res)
    if err or not vim.api.nvim_buf_is_valid(buf) then
      return ui.error(err or 'the run buffer is gone')
    end
    local r = runs[id]
    local lines = { r and state_line(r.summary) or res.header[1] }
    local keep = config.options.run_buffer_lines
    vim.list_extend(lines, vim.list_slice(res.lines, math.max(1, #res.lines - keep + 1)))
    ui.set_lines(buf, 0, -1, lines)
    if r then
      r.has_partial, r.chunks, r.queued, r.partial, r.dirty, r.replace = false, {}, 0, '', false, false
    end
  end)
end

-- Output is coalesced by time: reports queue lines on their run (at most the last
-- run_buffer_lines of them). While no flush is pending, output for a shown buffer not
-- written for FLUSH_MS is written at once (a run's first line shows without delay);
-- otherwise a one-shot timer writes the queued lines of the shown buffers (waiting longest
-- first, at most FLUSH_BUDGET_MS per tick) and waits at least DUTY times what that took
-- before the next tick, so writing output takes at most about 1/(DUTY+1) of Neovim's time.
-- A buffer no window shows is written when a window shows it (BufWinEnter) and when its
-- run ends, so it is complete by RemoteDevRunExit.
local FLUSH_MS = 30
local FLUSH_BUDGET_MS = 15
local DUTY = 9
local flush_timer = nil ---@type uv.uv_timer_t?

--- The lines of queued chunks (texts of n lines each), the last `keep` of them at most.
local function chunk_lines(chunks, keep)
  local texts, n, first = {}, 0, #chunks + 1
  while first > 1 and n < keep do
    first = first - 1
    n = n + chunks[first].n
  end
  for i = first, #chunks do
    table.insert(texts, chunks[i].text)
  end
  local s, out, pos = table.concat(texts, '\n'), {}, 1
  if n == 0 then
    return out
  end
  while true do
    local e = s:find('\n', pos, true)
    if not e then
      table.insert(out, s:sub(pos))
      break
    end
    table.insert(out, s:sub(pos, e - 1))
    pos = e + 1
  end
  return #out > keep and vim.list_slice(out, #out - keep + 1) or out
end

--- Write a run's queued output into its buffer (the last run_buffer_lines lines).
local function flush(r)
  if not r.dirty then
    return
  end
  r.dirty = false
  local buf = r.buf
  local chunks, queued, partial = r.chunks, r.queued, r.partial or ''
  r.chunks, r.queued = {}, 0
  if not vim.api.nvim_buf_is_valid(buf) then
    r.replace = false
    return
  end
  local keep = config.options.run_buffer_lines
  local pending = chunk_lines(chunks, keep)
  local follow = ui.followers(buf)
  if partial ~= '' then
    table.insert(pending, partial)
  end
  if r.replace or queued + (partial ~= '' and 1 or 0) >= keep then
    -- the queue alone fills the buffer: replace its output, the state line stays
    ui.set_lines(buf, 1, -1, #pending > keep and vim.list_slice(pending, #pending - keep + 1) or pending)
  else
    local count = vim.api.nvim_buf_line_count(buf)
    ui.set_lines(buf, r.has_partial and count - 1 or count, -1, pending)
    count = vim.api.nvim_buf_line_count(buf)
    if count > keep + 1 then
      ui.set_lines(buf, 1, count - keep, {})
    end
  end
  r.replace = false
  r.has_partial = partial ~= ''
  r.flushed = vim.uv.hrtime()
  ui.follow(follow, buf)
end

local function shown(r)
  return vim.api.nvim_buf_is_valid(r.buf) and #vim.fn.win_findbuf(r.buf) > 0
end

local function flush_timed(r)
  local t0 = vim.uv.hrtime()
  flush(r)
  return (vim.uv.hrtime() - t0) / 1e6
end

local function schedule_flush(after_ms)
  if not flush_timer then
    flush_timer = assert(vim.uv.new_timer())
  end
  if not flush_timer:is_active() then
    flush_timer:start(math.max(FLUSH_MS, math.floor(DUTY * (after_ms or 0))), 0, vim.schedule_wrap(function()
      local due = {}
      for _, r in pairs(runs) do
        if r.dirty and shown(r) then
          table.insert(due, r)
        end
      end
      table.sort(due, function(a, b) return (a.flushed or 0) < (b.flushed or 0) end)
      local spent = 0
      for _, r in ipairs(due) do
        if spent > FLUSH_BUDGET_MS then
          break
        end
        spent = spent + flush_timed(r)
      end
      if #due > 0 then
        schedule_flush(spent)   -- more may come: the next tick after a pause; none due then: idle
      end
    end))
  end
end

local function buffer_for(s)
  local r = runs[s.id]
  if r and vim.api.nvim_buf_is_valid(r.buf) then
    return r
  end
  local buf = vim.api.nvim_create_buf(false, true)
  vim.bo[buf].bufhidden = 'hide'
  vim.bo[buf].undolevels = -1
  ui.plugin_buffer(buf, 'remote-dev://run/' .. s.id, { root = s.root, target = s.target, run = s.id }, {
    write_hint = (':RemoteLog %s opens its whole output; :w {file} writes a copy of this one'):format(s.id),
    reload = function(b) reload_run(b, s.id) end,
  })
  vim.bo[buf].filetype = 'remote_dev_run'
  ui.set_lines(buf, 0, -1, { state_line(s) })
  vim.b[buf].remote_dev_run = s.id
  vim.keymap.set('n', '<C-c>', function() M.stop(s.id) end, { buffer = buf, desc = 'remote_dev: stop this run' })
  vim.keymap.set('n', 'q', '<cmd>close<cr>', { buffer = buf, desc = 'close' })
  vim.api.nvim_create_autocmd('BufWinEnter', {
    group = vim.api.nvim_create_augroup('remote_dev_run_' .. buf, { clear = true }),
    buffer = buf,
    callback = function()
      if runs[s.id] then
        flush(runs[s.id])
      end
    end,
  })
  r = { buf = buf, summary = s, has_partial = false, chunks = {}, queued = 0, partial = '', dirty = false,
    replace = false }
  runs[s.id] = r
  return r
end

--- Host report: new output lines (one text of n lines, or lines) and the current
--- unfinished line of a run: queued, the oldest chunks dropped once newer ones fill the
--- buffer.
function M.on_output(p)
  local r = runs[p.id]
  if not r or not vim.api.nvim_buf_is_valid(r.buf) then
    return
  end
  local text, n = p.text or '', p.n or 0
  if p.lines then   -- a list of lines (the rplugin host sends one text)
    text, n = table.concat(p.lines, '\n'), #p.lines
  end
  if p.dropped and p.dropped > 0 then
    local note = ('[remote_dev: %d lines skipped here; :RemoteLog %s has them all]'):format(p.dropped, p.id)
    text, n = n > 0 and (note .. '\n' .. text) or note, n + 1
  end
  if n > 0 then
    table.insert(r.chunks, { text = text, n = n })
    r.queued = r.queued + n
  end
  local keep = config.options.run_buffer_lines
  while #r.chunks > 1 and r.queued - r.chunks[1].n >= keep do
    r.queued = r.queued - table.remove(r.chunks, 1).n
    r.replace = true
  end
  r.partial = p.partial or ''
  r.dirty = true
  if not shown(r) then
    return       -- BufWinEnter or the run's end writes it
  elseif flush_timer and flush_timer:is_active() then
    return       -- the pending tick writes it
  elseif vim.uv.hrtime() - (r.flushed or 0) >= FLUSH_MS * 1e6 then
    schedule_flush(flush_timed(r))   -- a quiet spell: at once, then a pause
  else
    schedule_flush()
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
  ui.set_lines(r.buf, 0, 1, { state_line(s) })
  if s.final then
    flush(r)
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

--- Stop a run (default: the run of the current run or log buffer, else the latest live run
--- of the target).
---@param id string?
function M.stop(id)
  host.request('stop', { id = run_here(id) })
end

--- A log buffer: the run's whole output, fetched again by :e.
local function log_buffer(res)
  local name = 'remote-dev://log/' .. res.id
  local buf = ui.find_buffer(name)
  if buf then
    local win = vim.fn.bufwinid(buf)
    if win ~= -1 then
      vim.api.nvim_set_current_win(win)
    else
      vim.cmd('botright split')
      vim.api.nvim_win_set_buf(0, buf)
    end
  else
    vim.cmd('botright split')
    buf = vim.api.nvim_create_buf(false, true)
    vim.api.nvim_win_set_buf(0, buf)
    vim.bo[buf].bufhidden = 'hide'
    ui.plugin_buffer(buf, name, { root = res.root, target = res.target, run = res.id }, {
      write_hint = ':w {file} writes a copy; :e fetches it again',
      reload = function(b)
        host.request('log', { id = res.id }, function(err, again)
          if err or not vim.api.nvim_buf_is_valid(b) then
            return ui.error(err or 'the log buffer is gone')
          end
          ui.set_lines(b, 0, -1, vim.list_extend(vim.list_slice(again.header), again.lines))
        end, host.context_of(res.root, res.target))
      end,
    })
    vim.bo[buf].filetype = 'remote_dev_log'
  end
  ui.set_lines(buf, 0, -1, vim.list_extend(vim.list_slice(res.header), res.lines))
  vim.cmd('normal! G')
  return buf
end

--- Open a run's full output in a log buffer (default: the run of the current run or log
--- buffer, else the latest run).
---@param id string?
function M.log(id)
  host.request('log', { id = run_here(id) }, function(err, res)
    if err then
      ui.error(err)
      return
    end
    log_buffer(res)
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
  local ctx = host.context()
  local owner = { root = host.project_root() or ctx.cwd, target = ctx.target }
  host.request('runs', {}, function(err, list)
    if err then
      ui.error(err)
      return
    end
    local lines = { 'remote_dev runs — <CR>/a attach  s stop  l log  D delete  r refresh  q close', '' }
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
    local buf = ui.scratch(lines, 'remote-dev://runs', 'remote_dev_runs', owner)
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
      host.request('attach', { id = id }, nil, host.context_of(owner.root, owner.target))
    end
    map('<CR>', attach, 'attach')
    map('a', attach, 'attach')
    map('s', M.stop, 'stop')
    map('l', M.log, 'open log')
    map('D', function(id)
      host.request('run_delete', { id = id }, function(e)
        if e then
          return ui.error(e)
        end
        if vim.api.nvim_buf_is_valid(buf) and vim.fn.bufwinid(buf) ~= -1 then
          vim.api.nvim_win_close(vim.fn.bufwinid(buf), false)
          M.runs()
        end
      end, host.context_of(owner.root, owner.target))
    end, 'delete (an ended run: its folder and output on the remote)')
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
