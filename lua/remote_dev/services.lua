-- Shells, the kernel and the notebook server in :RemoteRuns.
local M = {}

local host = require('remote_dev.host')

local actions = {
  shell = {
    open = function(item) require('remote_dev.shell').open({ name = item.name }) end,
    stop = function(item) require('remote_dev.shell').kill(item.name) end,
  },
  kernel = {
    open = function() require('remote_dev.kernel').command('start') end,
    stop = function() require('remote_dev.kernel').command('stop') end,
  },
  notebook = {
    open = function() require('remote_dev.notebook').notebook() end,
    stop = function() require('remote_dev.notebook').notebook({ stop = true }) end,
  },
}

--- Append the target's shells, kernel and notebook server to the :RemoteRuns list in buf;
--- on their lines <CR>/a opens one and s stops (kills) it, the keys of runs elsewhere.
---@param buf integer
function M.append_to_runs(buf)
  host.request('services', {}, function(err, list)
    if err or not vim.api.nvim_buf_is_valid(buf) or #(list or {}) == 0 then
      return
    end
    local by_line = {}
    local lines = { '', 'shells, kernel, notebook — <CR>/a open  s stop (kills a shell)' }
    local count = vim.api.nvim_buf_line_count(buf)
    for _, item in ipairs(list) do
      table.insert(lines, ('%-9s %-16s %-9s %s'):format(item.kind, item.name, item.state or '', item.detail or ''))
      by_line[count + #lines] = item
    end
    vim.bo[buf].modifiable = true
    vim.api.nvim_buf_set_lines(buf, count, count, false, lines)
    vim.bo[buf].modifiable = false
    for _, key in ipairs({ '<CR>', 'a', 's' }) do
      local previous = vim.api.nvim_buf_call(buf, function() return vim.fn.maparg(key, 'n', false, true) end)
      local fallback = type(previous) == 'table' and previous.callback or nil
      vim.keymap.set('n', key, function()
        local item = by_line[vim.api.nvim_win_get_cursor(0)[1]]
        if item then
          local f = actions[item.kind] and actions[item.kind][key == 's' and 'stop' or 'open']
          if f then
            vim.cmd('close')
            f(item)
          end
        elseif fallback then
          fallback()
        end
      end, { buffer = buf, desc = previous and previous.desc or key })
    end
  end)
end

return M
