-- Quickfix lists: sync conflicts, and each run's own list of locations (or location list).
local M = {}

local config = require('remote_dev.config')

--- Conflicts of a push or pull as quickfix entries at the local files.
function M.conflicts(data, kind)
  local details = data.conflict_details or {}
  local prefix = ('remote_dev %s %s'):format(kind, data.target)
  if #details == 0 then
    -- A clean push/pull empties a conflict list of ours that is still the current one.
    local cur = vim.fn.getqflist({ title = 1, id = 0 })
    if type(cur.title) == 'string' and vim.startswith(cur.title, prefix .. ':') then
      vim.fn.setqflist({}, 'r', { id = cur.id, items = {}, title = prefix .. ': no conflicts' })
    end
    return
  end
  local items = {}
  for _, c in ipairs(details) do
    table.insert(items, { filename = c['local'], lnum = 1, text = ('%s conflict: %s'):format(kind, c.reason), type = 'W' })
  end
  vim.fn.setqflist({}, ' ', {
    title = ('%s: %d conflict(s) — :Remote%s! overwrites'):format(prefix, #items, kind == 'push' and 'Push' or 'Pull'),
    items = items,
  })
end

-- The quickfix list, or the location list of one window, behind one small interface.
local function list_of(win)
  if win then
    return {
      get = function(what) return vim.fn.getloclist(win, what) end,
      set = function(action, what) vim.fn.setloclist(win, {}, action, what) end,
      open = function() vim.api.nvim_win_call(win, function() vim.cmd('lopen') end) end,
      key = 'loc' .. win,
    }
  end
  return {
    get = function(what) return vim.fn.getqflist(what) end,
    set = function(action, what) vim.fn.setqflist({}, action, what) end,
    open = function() vim.cmd('botright copen') end,
    key = 'qf',
  }
end

local own = {} ---@type table<string, { id: integer, win: integer? }> each run's list, by run id
local opened = {} ---@type table<string, integer> windows remote_dev opened, by list_of().key

local RUN_MIN_LINES = 8 -- a run's output window keeps this many lines beside quickfix

--- Windows of this tab showing a run's output or log: their heights and views.
local function run_windows()
  local out = {}
  for _, win in ipairs(vim.api.nvim_tabpage_list_wins(0)) do
    local owner = vim.b[vim.api.nvim_win_get_buf(win)].remote_dev
    if type(owner) == 'table' and owner.run then
      out[win] = { height = vim.api.nvim_win_get_height(win), view = vim.api.nvim_win_call(win, vim.fn.winsaveview) }
    end
  end
  return out
end

--- Give a run window that the list's window squeezed its height back (at least
--- RUN_MIN_LINES, or what it had when smaller), from the window above it, which keeps
--- RUN_MIN_LINES itself. Cursors stay where they were.
local function keep_run_heights(before)
  for win, was in pairs(before) do
    local want = was.height
    local now = vim.api.nvim_win_is_valid(win) and vim.api.nvim_win_get_height(win) or want
    if now < want then
      local above = vim.api.nvim_win_call(win, function() return vim.fn.win_getid(vim.fn.winnr('k')) end)
      if above ~= 0 and above ~= win then
        local spare = vim.api.nvim_win_get_height(above) - RUN_MIN_LINES
        local give = math.min(want - now, math.max(spare, 0))
        if now + give < math.min(want, RUN_MIN_LINES) then
          give = math.min(want, RUN_MIN_LINES) - now -- readable output beats a tall source window
        end
        if give > 0 then
          pcall(vim.api.nvim_win_set_height, above, math.max(vim.api.nvim_win_get_height(above) - give, 1))
        end
      end
    end
    if vim.api.nvim_win_is_valid(win) then
      vim.api.nvim_win_call(win, function() vim.fn.winrestview(was.view) end)
    end
  end
end

local function open_window(list)
  if list.get({ winid = 0 }).winid ~= 0 then
    return -- already shown (perhaps opened by the user: theirs to close)
  end
  local cur = vim.api.nvim_get_current_win()
  local cursor = vim.api.nvim_win_get_cursor(cur)
  local heights = run_windows()
  list.open()
  opened[list.key] = list.get({ winid = 0 }).winid
  keep_run_heights(heights)
  if vim.api.nvim_win_is_valid(cur) then
    vim.api.nvim_set_current_win(cur)
    pcall(vim.api.nvim_win_set_cursor, cur, cursor)
  end
end

local function close_window(list)
  local win = opened[list.key]
  opened[list.key] = nil
  if win and win == list.get({ winid = 0 }).winid then
    pcall(vim.api.nvim_win_close, win, false)
  end
end

---@class remote_dev.RunListOpts
---@field final boolean?  the run ended: open the window (failed or errors) or close it (nothing, or warnings of a run that ended well)
---@field failed boolean? the run ended with a non-zero code

--- Set a run's locations in its own list, titled with its id and command: the run's list when
--- that is the current one, else a new list (as :make does; older lists stay for :colder).
--- Another run's list is never touched: each run's list is known by its quickfix id.
--- With the `quickfix.loclist` option, the location list of the window the run was started from.
---@param run { id: string, cmd: string, win: integer? }  win: where the run was started
---@param items table[]  quickfix items (may be empty)
---@param opts remote_dev.RunListOpts?
function M.run_list(run, items, opts)
  opts = opts or {}
  local o = config.options.quickfix
  local win = nil
  if o.loclist then
    win = (run.win and vim.api.nvim_win_is_valid(run.win)) and run.win or vim.api.nvim_get_current_win()
  end
  local list = list_of(win)
  local title = ('%s: %s'):format(run.id, run.cmd)
  local mine = own[run.id]
  if mine and mine.win == win and list.get({ id = 0 }).id == mine.id then
    list.set('r', { id = mine.id, title = title, items = items })
  else
    list.set(' ', { title = title, items = items })
    own[run.id] = { id = list.get({ id = 0 }).id, win = win }
  end
  if opts.final then
    -- as :make with :cwindow: shown when the run failed or printed errors; a run that
    -- ended well with warnings only closes the window remote_dev opened
    local errors = false
    for _, item in ipairs(items) do
      errors = errors or item.type == 'E'
    end
    if #items == 0 or not (opts.failed or errors) then
      close_window(list)
    elseif o.open then
      open_window(list)
    end
  end
end

return M
