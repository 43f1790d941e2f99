-- :RemoteKernel and :RemoteSend: a Jupyter kernel on the target, fed from the buffer; its
-- output in the remote-dev://kernel/<target> buffer, its errors in quickfix.
local M = {}

local config = require('remote_dev.config')
local host = require('remote_dev.host')
local ui = require('remote_dev.ui')

local CELL = '^%s*#%s*%%%%'   -- a `# %%` cell marker

local bufs = {} ---@type table<string, { buf: integer, has_partial: boolean }> by root .. '\0' .. target

local function key(root, target)
  return (root or '') .. '\0' .. target
end

local function show(buf)
  if #vim.fn.win_findbuf(buf) > 0 then
    return
  end
  local cur = vim.api.nvim_get_current_win()
  vim.cmd('botright 12split')
  vim.api.nvim_win_set_buf(0, buf)
  vim.wo.number = false
  vim.api.nvim_set_current_win(cur)
end

local function buffer_for(root, target)
  local b = bufs[key(root, target)]
  if b and vim.api.nvim_buf_is_valid(b.buf) then
    return b
  end
  local buf = vim.api.nvim_create_buf(false, true)
  vim.bo[buf].buftype = 'nofile'
  vim.bo[buf].bufhidden = 'hide'
  vim.bo[buf].swapfile = false
  vim.bo[buf].undolevels = -1
  vim.bo[buf].filetype = 'remote_dev_kernel'
  local name = 'remote-dev://kernel/' .. target
  if vim.fn.bufexists(name) == 1 then   -- a target of the same name in another project
    name = name .. ' (' .. vim.fs.basename(root or '?') .. ')'
  end
  pcall(vim.api.nvim_buf_set_name, buf, name)
  vim.b[buf].remote_dev_root = root
  vim.b[buf].remote_dev_target = target
  vim.bo[buf].modifiable = false
  vim.keymap.set('n', '<C-c>', function() M.command('interrupt') end, { buffer = buf, desc = 'remote_dev: interrupt the kernel' })
  vim.keymap.set('n', 'q', '<cmd>close<cr>', { buffer = buf, desc = 'close' })
  b = { buf = buf, has_partial = false, fresh = true }
  bufs[key(root, target)] = b
  return b
end

--- Host report: lines (and the unfinished last line) the kernel printed.
function M.on_output(p)
  local b = buffer_for(p.root, p.target)
  local buf = b.buf
  local follow = ui.followers(buf)
  local partial = p.partial or ''
  vim.bo[buf].modifiable = true
  local count = vim.api.nvim_buf_line_count(buf)
  local from = b.has_partial and count - 1 or count
  if b.fresh then
    from, b.fresh = 0, false
  end
  local new = vim.list_extend(vim.list_slice(p.lines or {}), partial ~= '' and { partial } or {})
  vim.api.nvim_buf_set_lines(buf, from, -1, false, new)
  b.has_partial = partial ~= ''
  local max = config.options.run_buffer_lines
  count = vim.api.nvim_buf_line_count(buf)
  if count > max then
    vim.api.nvim_buf_set_lines(buf, 0, count - max, false, {})
  end
  vim.bo[buf].modifiable = false
  if p.show then
    show(buf)
  end
  ui.follow(follow, buf)
end

--- Host report: an error's traceback as quickfix entries at local files.
function M.on_error(p)
  require('remote_dev.quickfix').run_list({ id = 'kernel ' .. p.target, cmd = p.title }, p.quickfix or {},
    { final = true, failed = true })
end

--- :RemoteKernel start|stop|restart|interrupt.
---@param what string?
function M.command(what)
  host.request('kernel', { what = what or 'start' }, function(err)
    if err then
      ui.error(err)
    end
  end)
end

--- The lines of the `# %%` cell around line `lnum` (after its marker, up to the next), or
--- just that line when the buffer has no cell markers.
---@return string[] lines, integer first
local function cell_at(buf, lnum)
  local all = vim.api.nvim_buf_get_lines(buf, 0, -1, false)
  local start, stop, marked = 1, #all, false
  for i = lnum, 1, -1 do
    if all[i]:match(CELL) then
      start, marked = i + 1, true
      break
    end
  end
  for i = math.max(lnum + 1, start), #all do
    if all[i]:match(CELL) then
      stop, marked = i - 1, true
      break
    end
  end
  if not marked then
    return { all[lnum] }, lnum
  end
  return vim.list_slice(all, start, stop), start
end

---@class remote_dev.SendOpts
---@field line1 integer?  first line of a range
---@field line2 integer?  last line of a range
---@field selection boolean?  the last visual selection (charwise: just the characters)

--- Send code to the target's kernel (started when none runs): the range, else the
--- selection, else the `# %%` cell at the cursor (the current line without markers).
---@param opts remote_dev.SendOpts?
function M.send(opts)
  opts = opts or {}
  local buf = vim.api.nvim_get_current_buf()
  local lines, first
  if opts.selection then
    local mode = vim.fn.visualmode()
    local s, e = vim.fn.getpos("'<"), vim.fn.getpos("'>")
    lines = vim.fn.getregion(s, e, { type = mode ~= '' and mode or 'v' })
    first = s[2]
  elseif opts.line1 then
    lines = vim.api.nvim_buf_get_lines(buf, opts.line1 - 1, opts.line2 or opts.line1, false)
    first = opts.line1
  else
    lines, first = cell_at(buf, vim.api.nvim_win_get_cursor(0)[1])
  end
  local ctx = host.context()
  host.request('send', { code = table.concat(lines, '\n'), file = ctx.file ~= '' and ctx.file or nil, line = first },
    function(err)
      if err then
        ui.error(err)
      end
    end, ctx)
end

return M
