-- :RemoteAlloc: a Slurm allocation held for the target; while it is held, :RemoteRun,
-- :RemoteDebug, :RemoteShell and :RemoteKernel of that target are its job steps.
-- The host says what happens (messages; User RemoteDevAlloc on every change of state).
local M = {}

local host = require('remote_dev.host')
local ui = require('remote_dev.ui')

--- Hold an allocation ({ args = {...} }: sbatch/salloc arguments; default the target's
--- slurm.args), find the one held, or end it ({ stop = true }).
---@param opts { args: string[]?, stop: boolean? }?
function M.alloc(opts)
  opts = opts or {}
  host.request('alloc', { args = opts.args or {}, stop = opts.stop or false }, function(err)
    if err then
      ui.error(err)
    end
  end)
end

local function clock(seconds)
  local s = math.max(0, math.floor(seconds))
  local d = math.floor(s / 86400)
  s = s % 86400
  return ('%s%d:%02d:%02d'):format(d > 0 and (d .. '-') or '', math.floor(s / 3600), math.floor(s % 3600 / 60), s % 60)
end

--- Seconds the allocation has left now (nil: no time limit).
---@param a table  status().alloc
---@return number?
function M.time_left(a)
  if type(a.ends_at) ~= 'number' then
    return nil
  end
  return math.max(0, a.ends_at - os.time())
end

--- One line for an allocation: "job 12 RUNNING on node1 (0:59:30 left)", "job 12 PENDING (Resources)".
---@param a table?  status().alloc
---@return string
function M.describe(a)
  if type(a) ~= 'table' then
    return 'none'
  end
  if a.state ~= 'RUNNING' then
    return a.detail or ('job ' .. a.job_id .. ' ' .. a.state)
  end
  local left = M.time_left(a)
  return ('job %s RUNNING on %s (%s)'):format(a.job_id, table.concat(a.nodes or {}, ','),
    left and (clock(left) .. ' left') or 'no time limit')
end

return M
