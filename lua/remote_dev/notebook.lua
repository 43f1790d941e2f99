-- :RemoteNotebook: a Jupyter server on the target's 127.0.0.1, forwarded to a local port.
local M = {}

local config = require('remote_dev.config')
local host = require('remote_dev.host')
local ui = require('remote_dev.ui')

local function offer(url)
  local how = config.options.notebook_open
  if how == 'always' then
    vim.ui.open(url)
  elseif how == 'ask' then
    vim.ui.select({ 'Open in the browser', 'Copy the URL', 'Nothing' }, { prompt = 'Jupyter: ' .. url }, function(_, idx)
      if idx == 1 then
        vim.ui.open(url)
      elseif idx == 2 then
        vim.fn.setreg('"', url)
        pcall(vim.fn.setreg, '+', url)
      end
    end)
  end
end

--- Start (or find) the project's notebook server and show its URL; `User RemoteDevNotebook`
--- fires with data.url. With stop, stop it.
---@param opts { stop: boolean? }?
function M.notebook(opts)
  local stop = opts and opts.stop or false
  host.request('notebook', { stop = stop }, function(err, res)
    if err then
      ui.error(err)
      return
    end
    if not stop then
      ui.notify(('Jupyter (%s%s): %s'):format(res.server, res.found and ', running already' or '', res.url))
      vim.schedule(function() offer(res.url) end)
    end
  end)
end

return M
