-- The Ex commands of plugin/remote_dev.lua: their arguments (fargs, bang, flags) become the
-- typed parameters of the Lua API in require('remote_dev').
local M = {}

local function rd()
  return require('remote_dev')
end

local function fail(text)
  require('remote_dev.ui').error(text)
end

---@param args string
---@return string?
local function arg_or_nil(args)
  local a = vim.trim(args or '')
  return a ~= '' and a or nil
end

--- Split fargs into paths (expanded like file names) and --flags, which must be known.
---@return table<string, boolean>? flags, string[] paths
local function flags_and_paths(command, o, known)
  local flags, paths = {}, {}
  for _, a in ipairs(o.fargs or {}) do
    if vim.startswith(a, '--') then
      if not vim.tbl_contains(known, a) then
        local hint = #known > 0 and ('; known: ' .. table.concat(known, ' ')) or ''
        fail(('%s: unknown flag %s%s'):format(command, a, hint))
        return nil, paths
      end
      flags[a] = true
    else
      table.insert(paths, vim.fn.expand(a))
    end
  end
  return flags, paths
end

--- :RemotePush[!] [--dry-run] [path...]
function M.push(o)
  local flags, paths = flags_and_paths(':RemotePush', o, { '--dry-run' })
  if flags then
    rd().push({ paths = paths, force = o.bang, dry_run = flags['--dry-run'] or false })
  end
end

--- :RemotePull[!] [path...]
function M.pull(o)
  local flags, paths = flags_and_paths(':RemotePull', o, {})
  if flags then
    rd().pull({ paths = paths, force = o.bang })
  end
end

--- :RemoteRun [cmd]
function M.run(o)
  rd().run({ cmd = arg_or_nil(o.args) })
end

--- :RemoteDebug [cmd] | --attach {port}
function M.debug(o)
  if o.fargs[1] == '--attach' then
    local port = #o.fargs == 2 and tonumber(o.fargs[2])
    if not port then
      fail(':RemoteDebug --attach needs a port number: :RemoteDebug --attach {port}')
      return
    end
    rd().debug({ attach = port })
  else
    rd().debug({ cmd = arg_or_nil(o.args) })
  end
end

--- :RemoteStop [id]
function M.stop(o)
  rd().stop(arg_or_nil(o.args))
end

--- :RemoteLog [id]
function M.log(o)
  rd().log(arg_or_nil(o.args))
end

--- :RemoteTarget [name]
function M.target(o)
  rd().target(arg_or_nil(o.args))
end

--- :RemoteForward {port} [local]
function M.forward(o)
  local port, local_port = tonumber(o.fargs[1]), o.fargs[2] and tonumber(o.fargs[2])
  if not port or #o.fargs > 2 or (o.fargs[2] and not local_port) then
    fail(':RemoteForward needs port numbers: :RemoteForward {port} [local]')
    return
  end
  rd().forward(port, local_port)
end

--- :RemoteShell [name] | :RemoteShell! | :RemoteShell! kill {name}
function M.shell(o)
  local shell = require('remote_dev.shell')
  if o.bang then
    if #o.fargs == 0 then
      shell.list()
    elseif o.fargs[1] == 'kill' and #o.fargs == 2 then
      shell.kill(o.fargs[2])
    else
      fail(':RemoteShell! lists the shells; :RemoteShell! kill {name} ends one')
    end
    return
  end
  if #o.fargs > 1 then
    fail(':RemoteShell takes one name: :RemoteShell [name]')
    return
  end
  shell.open({ name = o.fargs[1], mods = o.mods })
end

--- :RemoteKernel [start|stop|restart|interrupt]
function M.kernel(o)
  local what = arg_or_nil(o.args) or 'start'
  if not vim.tbl_contains({ 'start', 'stop', 'restart', 'interrupt' }, what) then
    fail((':RemoteKernel %s: unknown; use start, stop, restart or interrupt'):format(what))
    return
  end
  rd().kernel(what)
end

--- :[range]RemoteSend: the range (a charwise or blockwise selection: its characters), else
--- the # %% cell at the cursor.
function M.send(o)
  if o.range == 0 then
    rd().send()
    return
  end
  local mode = vim.fn.visualmode()
  local s, e = vim.fn.getpos("'<"), vim.fn.getpos("'>")
  local from_visual = (mode == 'v' or mode == '\22') and o.range == 2 and s[2] == o.line1 and e[2] == o.line2
    and s[1] == 0
  if from_visual then
    rd().send({ selection = true })
  else
    rd().send({ line1 = o.line1, line2 = o.line2 })
  end
end

--- :RemoteNotebook [stop]
function M.notebook(o)
  local what = arg_or_nil(o.args)
  if what and what ~= 'stop' then
    fail((':RemoteNotebook %s: unknown; :RemoteNotebook starts or finds the server, :RemoteNotebook stop ends it'):format(what))
    return
  end
  rd().notebook({ stop = what == 'stop' })
end

--- :RemoteAlloc [sbatch/salloc arguments] | :RemoteAlloc stop
function M.alloc(o)
  if #o.fargs == 1 and o.fargs[1] == 'stop' then
    rd().alloc({ stop = true })
    return
  end
  if o.fargs[1] and not vim.startswith(o.fargs[1], '-') then
    fail((':RemoteAlloc %s: unknown; give sbatch/salloc arguments (:RemoteAlloc -p gpu --time=60), or stop')
      :format(o.args))
    return
  end
  rd().alloc({ args = o.fargs })
end

--- :RemoteEnv [refresh]
function M.env(o)
  local what = arg_or_nil(o.args)
  if what and what ~= 'refresh' then
    fail((':RemoteEnv %s: unknown; :RemoteEnv checks the mirror, :RemoteEnv refresh lists every file again'):format(what))
    return
  end
  rd().env({ refresh = what == 'refresh' })
end

--- Completion: the target's shells (from the last status).
function M.complete_shells()
  return require('remote_dev.shell').names()
end

--- Completion: ids of the runs this session knows.
function M.complete_run_ids()
  return require('remote_dev.run').run_ids()
end

--- Completion: the project's targets (from the last status).
function M.complete_targets()
  return rd().status().targets or {}
end

return M
