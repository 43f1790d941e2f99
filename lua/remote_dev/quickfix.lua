-- Quickfix lists: sync conflicts.
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

return M
