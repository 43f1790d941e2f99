-- Commands only: one-line wrappers into lua/remote_dev (loaded on first use).
if vim.g.loaded_remote_dev then
  return
end
vim.g.loaded_remote_dev = 1

-- The plugin's own venv (made by scripts/install-host) is the Python host unless the
-- user chose one.
if vim.g.python3_host_prog == nil then
  local here = debug.getinfo(1, 'S').source:sub(2)
  local venv_python = vim.fs.dirname(vim.fs.dirname(here)) .. '/.venv/bin/python'
  if vim.uv.fs_stat(venv_python) then
    vim.g.python3_host_prog = venv_python
  end
end

local cmd = vim.api.nvim_create_user_command
local function rd()
  return require('remote_dev')
end

cmd('RemotePush', function(o) rd().push(o) end,
  { nargs = '*', bang = true, complete = 'file', desc = 'Push the tree (or paths); ! overwrites remote changes; --dry-run previews' })
cmd('RemotePull', function(o) rd().pull(o) end,
  { nargs = '*', bang = true, complete = 'file', desc = 'Pull the sync.pull folders (or paths); ! overwrites local changes' })
cmd('RemoteRun', function(o) rd().run(o) end,
  { nargs = '*', complete = 'shellcmd', desc = 'Push, then run on the target' })
cmd('RemoteDebug', function(o) rd().debug(o) end,
  { nargs = '*', complete = 'shellcmd', desc = 'Push, then run under debugpy and attach nvim-dap' })
cmd('RemoteStop', function(o) rd().stop(o) end,
  { nargs = '?', complete = function() return rd().run_ids() end, desc = 'Stop a run (default: the latest live one)' })
cmd('RemoteRuns', function() rd().runs() end, { nargs = 0, desc = 'List runs of the target' })
cmd('RemoteLog', function(o) rd().log(o) end,
  { nargs = '?', complete = function() return rd().run_ids() end, desc = "Open a run's full output" })
cmd('RemoteStatus', function() rd().show_status() end, { nargs = 0, desc = 'Target, connection, last push, runs' })
cmd('RemoteTarget', function(o) rd().target(o.args) end, {
  nargs = '?',
  complete = function() return (rd().status().targets or {}) end,
  desc = 'Show or switch the target',
})
cmd('RemoteForward', function(o) rd().forward(o) end,
  { nargs = '+', desc = 'Forward a remote port to a local one: {port} [local]' })

local group = vim.api.nvim_create_augroup('remote_dev', { clear = true })
vim.api.nvim_create_autocmd('BufWritePost', {
  group = group,
  desc = 'remote_dev: push on save',
  callback = function(args) rd()._on_write(args) end,
})
vim.api.nvim_create_autocmd('VimLeavePre', {
  group = group,
  desc = 'remote_dev: optionally stop live runs',
  callback = function() if package.loaded['remote_dev'] then rd()._on_exit() end end,
})
