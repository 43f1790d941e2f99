---@mod remote_dev  Edit locally, push/run/debug on a remote machine, container or Slurm job.
---
--- The public Lua API. It never blocks: every request goes to the Python host (rplugin)
--- and the answer comes back later (remote_dev.host). The modules behind it:
---   config    the option schema, setup() validation, the options in force
---   ui        messages, errors, events, scratch buffers
---   host      requests to the Python host; its answers and reports
---   sync      push, pull, push on save, the dry-run preview
---   run       run buffers, stop, the runs list, logs
---   quickfix  quickfix lists of conflicts and of runs
---   dap       :RemoteDebug and the nvim-dap glue
---   forwards  :RemoteForward
---   shell     :RemoteShell terminals on remote tmux sessions
---   kernel    :RemoteKernel, :RemoteSend and the kernel buffer
---   notebook  :RemoteNotebook
---   alloc     :RemoteAlloc (a held Slurm allocation)
---   services  shells, kernel and notebook in :RemoteStatus and :RemoteRuns
---   _cmds     the Ex commands' argument parsing (plugin/remote_dev.lua)

local M = {}

-- Submodules load on first use, so startup costs nothing until a command runs.
local lazy = setmetatable({}, {
  __index = function(_, key)
    return require('remote_dev.' .. key)
  end,
})

--- The options in force (read-only; change them with setup()).
---@type remote_dev.Options
M.options = lazy.config.options

--- Configure the plugin. Every field is optional; see |remote_dev-setup|.
---@param opts table?
function M.setup(opts)
  lazy.config.setup(opts)
end

--- What :RemoteStatus shows, for statuslines and tests: target, host, remote_root,
--- connected, python (remote version), agent (version), rtt_ms, last_push, runs, error,
--- services, alloc (a held Slurm allocation: job_id, state, nodes, time_left, ends_at), lines
--- (what :RemoteStatus prints, rendered by the host).
--- Instant: the last known state, refreshed by every request.
---@return table
function M.status()
  return vim.deepcopy(lazy.host.status_of(lazy.host.project_root()) or {})
end

--- :RemoteStatus: connect if needed, measure, and show the status.
function M.show_status()
  lazy.host.request('status', { refresh = true }, function(err, s)
    if err then
      lazy.ui.error(err)
      return
    end
    lazy.ui.echo(table.concat(s.lines or {}, '\n'), true)  -- rendered by the host (status.py)
  end)
end

--- Show the target, or switch to the one named.
---@param name string?
function M.target(name)
  lazy.host.request('target', { name = (name and name ~= '') and name or nil }, function(err, s)
    if err then
      lazy.ui.error(err)
      return
    end
    lazy.ui.notify(('target %s: %s:%s (%s)'):format(s.target, s.host, s.remote_root, s.runner))
  end)
end

--- Push the tree or paths: { paths = {...}, force = bool, dry_run = bool }.
---@param opts remote_dev.PushOpts?
function M.push(opts)
  lazy.sync.push(opts)
end

--- Pull the sync.pull folders or paths: { paths = {...}, force = bool }.
---@param opts remote_dev.PullOpts?
function M.pull(opts)
  lazy.sync.pull(opts)
end

--- Push, then run: { cmd = 'python train.py' } (default: run.command).
---@param opts remote_dev.RunOpts?
function M.run(opts)
  lazy.run.run(opts)
end

--- Push, then run under debugpy and attach nvim-dap: { cmd = ... }; or { attach = port }.
---@param opts remote_dev.DebugOpts?
function M.debug(opts)
  lazy.dap.debug(opts)
end

--- Stop a run (default: the latest live run of the target).
---@param id string?
function M.stop(id)
  lazy.run.stop(id)
end

--- List the target's runs in a buffer (attach, stop, log).
function M.runs()
  lazy.run.runs()
end

--- Open a run's full output (default: the latest run).
---@param id string?
function M.log(id)
  lazy.run.log(id)
end

--- Fill quickfix with a run's locations now (default: the latest run; also while it runs).
---@param id string?
function M.quickfix(id)
  lazy.run.quickfix(id)
end

--- Forward the remote's 127.0.0.1:port to localhost:local_port (a free port by default).
---@param port integer
---@param local_port integer?
function M.forward(port, local_port)
  lazy.forwards.forward(port, local_port)
end

--- A terminal on shell `name` (default "main") of the target, a tmux session in remote_root
--- that outlives Neovim: made when missing, reattached (screen and history) when it exists.
---@param opts remote_dev.ShellOpts?
function M.shell(opts)
  lazy.shell.open(opts)
end

--- End shell `name` on the remote (its tmux session and every process started in it).
---@param name string
function M.shell_kill(name)
  lazy.shell.kill(name)
end

--- The target's Jupyter kernel: 'start' (default; finds a running one), 'stop', 'restart',
--- 'interrupt'.
---@param what string?
function M.kernel(what)
  lazy.kernel.command(what)
end

--- Send code to the kernel: { line1, line2 } a range, { selection = true } the last visual
--- selection, none: the `# %%` cell at the cursor. Output in remote-dev://kernel/<target>.
---@param opts remote_dev.SendOpts?
function M.send(opts)
  lazy.kernel.send(opts)
end

--- A Jupyter server on the target's 127.0.0.1, forwarded; { stop = true } ends it.
---@param opts { stop: boolean? }?
function M.notebook(opts)
  lazy.notebook.notebook(opts)
end

--- Hold a Slurm allocation for the target ({ args = {...} }: sbatch/salloc arguments, default
--- the target's slurm.args), or find the one held; { stop = true } ends it with every step,
--- shell and kernel in it. User RemoteDevAlloc fires on every change of its state.
---@param opts { args: string[]?, stop: boolean? }?
function M.alloc(opts)
  lazy.alloc.alloc(opts)
end

--- Low-level: send an action to the Python host; cb(err, result) runs later.
---@param action string
---@param params table?
---@param cb fun(err: string?, result: any)?
function M.request(action, params, cb)
  lazy.host.request(action, params, cb)
end

--- Entry point of the Python host (rplugin/python3/remote_dev_rplugin.py): answers and reports.
function M._from_host(...)
  lazy.host.dispatch(...)
end

return M
