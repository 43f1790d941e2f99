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

--- A read-only scratch buffer in a new window at the bottom, replacing one of the same name.
---@param lines string[]
---@param name string
---@param filetype string
---@return integer buf
function M.scratch(lines, name, filetype)
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

return M
