-- :checkhealth remote_dev
local M = {}

local function show(items)
  for _, item in ipairs(items or {}) do
    local f = ({ ok = vim.health.ok, warn = vim.health.warn, error = vim.health.error, info = vim.health.info })[item.level]
      or vim.health.info
    f(item.text)
  end
end

function M.check()
  vim.health.start('remote_dev: local side')
  local v = vim.version()
  if vim.fn.has('nvim-0.11') == 1 then
    vim.health.ok(('Neovim %d.%d.%d'):format(v.major, v.minor, v.patch))
  else
    vim.health.error(('Neovim %d.%d.%d is too old: remote_dev needs 0.11 or newer (the version it is tested with)'):format(v.major, v.minor, v.patch))
  end
  if vim.fn.has('python3') ~= 1 then
    vim.health.error('no python3 provider', {
      'Install the plugin\'s Python side: scripts/install-host in the plugin folder (makes .venv)',
      'or set g:python3_host_prog to a Python that has pynvim, asyncssh, msgpack, debugpy, pathspec',
    })
    return
  end
  vim.health.ok('python3 provider: ' .. (vim.g.python3_host_prog or 'python3'))
  local ok, answer = pcall(vim.fn.RemoteDevPing)
  if not ok or answer ~= 'pong' then
    vim.health.error('the remote plugin is not registered in the rplugin manifest (' .. tostring(answer) .. ')', {
      'Run :UpdateRemotePlugins, then restart Neovim',
    })
    return
  end
  vim.health.ok('remote plugin registered')
  local done, report, err = false, nil, nil
  require('remote_dev').request('health', {}, function(e, r)
    done, report, err = true, r, e
  end)
  vim.wait(60000, function() return done end, 20)
  if not done then
    vim.health.error('the Python host did not answer within 60 s')
    return
  end
  if err then
    vim.health.error(err)
    return
  end
  show(report['local'])
  local ok_dap = pcall(require, 'dap')
  if ok_dap then
    vim.health.ok('nvim-dap found (:RemoteDebug)')
  else
    vim.health.warn('nvim-dap not found: :RemoteDebug needs it', { 'Install mfussenegger/nvim-dap with your plugin manager' })
  end
  vim.health.start('remote_dev: remote side')
  if report.remote == nil or report.remote == vim.NIL then
    vim.health.info('no project: ' .. tostring(report.project))
    return
  end
  vim.health.info('project ' .. report.project)
  show(report.remote)
end

return M
