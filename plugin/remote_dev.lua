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
local function cmds()
  return require('remote_dev._cmds')
end

cmd('RemotePush', function(o) cmds().push(o) end,
  { nargs = '*', bang = true, complete = 'file', desc = 'Push the tree (or paths); ! overwrites remote changes; --dry-run previews' })
cmd('RemotePull', function(o) cmds().pull(o) end,
  { nargs = '*', bang = true, complete = 'file', desc = 'Pull the sync.pull folders (or paths); ! overwrites local changes' })
cmd('RemoteRun', function(o) cmds().run(o) end,
  { nargs = '*', complete = 'shellcmd', desc = 'Push, then run on the target' })
cmd('RemoteDebug', function(o) cmds().debug(o) end,
  { nargs = '*', complete = 'shellcmd', desc = 'Push, then run under debugpy and attach nvim-dap; --attach {port}' })
cmd('RemoteStop', function(o) cmds().stop(o) end,
  { nargs = '?', complete = function() return cmds().complete_run_ids() end, desc = 'Stop a run (default: the latest live one)' })
cmd('RemoteRuns', function() require('remote_dev').runs() end, { nargs = 0, desc = 'List runs of the target' })
cmd('RemoteLog', function(o) cmds().log(o) end,
  { nargs = '?', complete = function() return cmds().complete_run_ids() end, desc = "Open a run's full output" })
cmd('RemoteStatus', function() require('remote_dev').show_status() end, { nargs = 0, desc = 'Target, connection, last push, runs' })
cmd('RemoteTarget', function(o) cmds().target(o) end,
  { nargs = '?', complete = function() return cmds().complete_targets() end, desc = 'Show or switch the target' })
cmd('RemoteForward', function(o) cmds().forward(o) end,
  { nargs = '+', desc = 'Forward a remote port to a local one: {port} [local]' })
cmd('RemoteShell', function(o) cmds().shell(o) end,
  { nargs = '*', bang = true, complete = function() return cmds().complete_shells() end,
    desc = 'A terminal on a remote tmux session in remote_root ([name]); ! lists; ! kill {name} ends one' })
cmd('RemoteKernel', function(o) cmds().kernel(o) end,
  { nargs = '?', complete = function() return { 'start', 'stop', 'restart', 'interrupt' } end,
    desc = 'The Jupyter kernel on the target: start (default), stop, restart, interrupt' })
cmd('RemoteSend', function(o) cmds().send(o) end,
  { range = true, desc = 'Send the range / selection / # %% cell to the kernel' })
cmd('RemoteNotebook', function(o) cmds().notebook(o) end,
  { nargs = '?', complete = function() return { 'stop' } end, desc = 'A Jupyter server on the target, forwarded; stop' })
cmd('RemoteAlloc', function(o) cmds().alloc(o) end,
  { nargs = '*', complete = function() return { 'stop' } end,
    desc = 'Hold a Slurm allocation for the target ([sbatch args]); runs, shells, kernels become its steps; stop' })
cmd('RemoteEnv', function(o) cmds().env(o) end,
  { nargs = '?', complete = function() return { 'refresh' } end,
    desc = "Mirror the target's libraries locally for language servers, quickfix and nvim-dap; refresh" })

local group = vim.api.nvim_create_augroup('remote_dev', { clear = true })
vim.api.nvim_create_autocmd('BufReadPost', {
  group = group,
  pattern = '*/remote-dev/projects/*/env/*',
  desc = 'remote_dev: :RemoteEnv mirror files are read-only',
  callback = function(args) require('remote_dev.env').on_read(args) end,
})
vim.api.nvim_create_autocmd('LspAttach', {
  group = group,
  desc = 'remote_dev: Python language servers see the :RemoteEnv mirror',
  callback = function(args) require('remote_dev.env').on_lsp_attach(args) end,
})
vim.api.nvim_create_autocmd('BufWritePost', {
  group = group,
  desc = 'remote_dev: push on save',
  callback = function(args) require('remote_dev.sync').on_write(args) end,
})
vim.api.nvim_create_autocmd('VimLeavePre', {
  group = group,
  desc = 'remote_dev: optionally stop live runs',
  -- no request was ever made: no run of this session to stop
  callback = function() if package.loaded['remote_dev.host'] then require('remote_dev.run').on_exit() end end,
})
