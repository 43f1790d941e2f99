-- Quickfix lists: sync conflicts, push previews, run locations.
local M = {}

--- Conflicts of a push or pull as quickfix entries at the local files.
function M.conflicts(data, kind)
  local details = data.conflict_details or {}
  local prefix = ('remote_dev %s %s'):format(kind, data.target)
  if #details == 0 then
    -- A clean push/pull empties a conflict list of ours that is still the current one.
    local cur = vim.fn.getqflist({ title = 1, id = 0 })
    if type(cur.title) == 'string' and vim.startswith(cur.title, prefix .. ':') then
      vim.fn.setqflist({}, 'r', { id = cur.id, items = {}, title = prefix .. ': no conflicts' })
    end
    return
  end
  local items = {}
  for _, c in ipairs(details) do
    table.insert(items, { filename = c['local'], lnum = 1, text = ('%s conflict: %s'):format(kind, c.reason), type = 'W' })
  end
  vim.fn.setqflist({}, ' ', {
    title = ('%s: %d conflict(s) — :Remote%s! overwrites'):format(prefix, #items, kind == 'push' and 'Push' or 'Pull'),
    items = items,
  })
end

--- A push preview (:RemotePush --dry-run) in a scratch buffer.
function M.preview(res)
  local lines = { ('remote_dev push preview for %s (nothing was written)'):format(res.target), '' }
  local function section(title, list, fmt)
    table.insert(lines, ('%s (%d)'):format(title, #list))
    for _, item in ipairs(list) do
      table.insert(lines, '  ' .. fmt(item))
    end
    table.insert(lines, '')
  end
  section('send', res.send or {}, function(p) return p end)
  section('delete on the remote', res.delete or {}, function(p) return p end)
  section('conflicts (not overwritten without !)', res.conflict_details or {}, function(c)
    return c.path .. ': ' .. c.reason
  end)
  section('too large (sync.max_file_size)', res.skipped or {}, function(s) return ('%s (%d bytes)'):format(s.path, s.size) end)
  return require('remote_dev')._scratch(lines, 'remote_dev://push-preview', 'remote_dev_preview')
end

return M
