-- The options of require('remote_dev').setup(): one schema (type, default, description per
-- option) drives validation, the defaults and the option list in doc/remote_dev.txt.
local M = {}

---@class remote_dev.OptionSpec
---@field name string
---@field type 'boolean'|'number'|'string'|'table'
---@field default any
---@field description string
---@field fields remote_dev.OptionSpec[]?  a table with known keys, validated one by one
---@field check (fun(v: any): boolean)?   further rule, with `expects` saying it
---@field expects string?
---@field deprecated { replacement: string, apply: fun(opts: table, value: any) }?

---@type remote_dev.OptionSpec[]
M.schema = {
  { name = 'notify', type = 'boolean', default = true,
    description = 'Show messages with |vim.notify()|.' },
  { name = 'stop_runs_on_exit', type = 'boolean', default = false,
    description = "Stop this session's live runs when Neovim exits." },
  { name = 'run_buffer_lines', type = 'number', default = 10000,
    check = function(v) return v >= 1 and v <= 1000000 and v == math.floor(v) end,
    expects = 'a whole number from 1 to 1000000',
    description = 'Lines a run buffer keeps; the full log stays on the remote.' },
  { name = 'quickfix', type = 'table', description = 'Where the locations of an ended run go.',
    fields = {
      { name = 'open', type = 'boolean', default = true,
        description = 'Open the window when a run fails with locations.' },
      { name = 'loclist', type = 'boolean', default = false,
        description = 'Use the location list of the window the run was started from.' },
    } },
  { name = 'dap', type = 'table', default = {},
    description = 'Fields merged into the nvim-dap attach configuration, e.g. `{ justMyCode = false }`.' },
  { name = 'terminate_stops_run', type = 'boolean', default = true,
    description = 'Ending the nvim-dap session (terminate, disconnect) stops the run like |:RemoteStop|; off: those requests go to debugpy unchanged.' },
  { name = 'notebook_open', type = 'string', default = 'ask',
    check = function(v) return v == 'ask' or v == 'always' or v == 'never' end, expects = '"ask", "always" or "never"',
    description = 'What :RemoteNotebook does with the URL besides showing it: offer to open it, open it, or not.' },
  { name = 'stop_on_entry', type = 'table', default = {},
    check = function(v)
      for _, r in ipairs(v) do
        if not (r == 'all' or (type(r) == 'number' and r >= 0 and r == math.floor(r))) then
          return false
        end
      end
      return #v == vim.tbl_count(v)
    end,
    expects = "a list of ranks (whole numbers) or { 'all' }",
    description = "Debugged processes that stop at the program's first line, by rank (`{ 0 }`; a process without a rank is 0), or `{ 'all' }`. Not in containers with their own network." },
  { name = 'env', type = 'table', description = 'The :RemoteEnv mirror of the target\'s libraries.',
    fields = {
      { name = 'auto', type = 'boolean', default = true,
        description = 'Check it after the first connection to a target and after each run (one round trip when nothing changed), and bring it up to date in the background.' },
      { name = 'lsp', type = 'boolean', default = true,
        description = 'Give its folders to the Python language servers of the project (basedpyright, pyright, pylsp, jedi-language-server).' },
    } },
  { name = 'open_quickfix', type = 'boolean',
    description = 'Deprecated: use `quickfix = { open = ... }`.',
    deprecated = {
      replacement = 'quickfix.open',
      apply = function(opts, value)
        opts.quickfix = opts.quickfix or {}
        if opts.quickfix.open == nil then
          opts.quickfix.open = value
        end
      end,
    } },
}

local function defaults_of(specs)
  local out = {}
  for _, spec in ipairs(specs) do
    if spec.fields then
      out[spec.name] = defaults_of(spec.fields)
    elseif not spec.deprecated then
      out[spec.name] = vim.deepcopy(spec.default)
    end
  end
  return out
end

--- The options in force. One table for the whole session: setup() refills it in place.
---@class remote_dev.Options
---@field notify boolean
---@field stop_runs_on_exit boolean
---@field run_buffer_lines integer
---@field quickfix { open: boolean, loclist: boolean }
---@field dap table
---@field terminate_stops_run boolean
---@field notebook_open 'ask'|'always'|'never'
---@field stop_on_entry (integer|'all')[]
---@field env { auto: boolean, lsp: boolean }
M.options = defaults_of(M.schema)

local function by_name(specs)
  local out = {}
  for _, spec in ipairs(specs) do
    out[spec.name] = spec
  end
  return out
end

local function validate(specs, opts, prefix)
  local known = by_name(specs)
  for key, value in pairs(opts) do
    local name = prefix .. tostring(key)
    local spec = known[key]
    if not spec then
      local names = {}
      for _, s in ipairs(specs) do
        if not s.deprecated then
          table.insert(names, s.name)
        end
      end
      error(('remote_dev.setup: unknown option %s (known: %s)'):format(name, table.concat(names, ', ')), 0)
    end
    if type(value) ~= spec.type then
      error(('remote_dev.setup: option %s: expected %s, got %s'):format(name, spec.type, type(value)), 0)
    end
    if spec.check and not spec.check(value) then
      error(('remote_dev.setup: option %s: expected %s, got %s'):format(name, spec.expects, vim.inspect(value)), 0)
    end
    if spec.fields then
      validate(spec.fields, value, name .. '.')
    end
  end
end

--- Check opts against the schema (an error names the option) and make them the options.
---@param opts table?
function M.setup(opts)
  if opts ~= nil and type(opts) ~= 'table' then
    error(('remote_dev.setup: expected a table, got %s'):format(type(opts)), 0)
  end
  opts = vim.deepcopy(opts or {})
  validate(M.schema, opts, '')
  for _, spec in ipairs(M.schema) do
    if spec.deprecated and opts[spec.name] ~= nil then
      vim.notify_once(('remote_dev.setup: option %s is deprecated; use %s'):format(spec.name, spec.deprecated.replacement),
        vim.log.levels.WARN)
      spec.deprecated.apply(opts, opts[spec.name])
      opts[spec.name] = nil
    end
  end
  local merged = vim.tbl_deep_extend('force', defaults_of(M.schema), opts)
  for key in pairs(M.options) do
    M.options[key] = nil
  end
  for key, value in pairs(merged) do
    M.options[key] = value
  end
end

--- The option list of doc/remote_dev.txt (scripts/doc-options writes it there).
---@return string[]
function M.doc_lines()
  local lines = {}
  local function add(specs, indent)
    for _, spec in ipairs(specs) do
      local head = indent .. spec.name
      local col = 25
      local words = vim.split(spec.description, ' ', { plain = true })
      if not spec.fields and not spec.deprecated then
        table.insert(words, ('(default: %s)'):format(vim.inspect(spec.default)))
      end
      local line = head .. string.rep(' ', math.max(1, col - #head))
      local width = #line
      for i, word in ipairs(words) do
        if i > 1 and width + 1 + #word > 78 then
          table.insert(lines, line)
          line = string.rep(' ', col) .. word
          width = #line
        else
          line = line .. (i > 1 and ' ' or '') .. word
          width = width + (i > 1 and 1 or 0) + #word
        end
      end
      table.insert(lines, line)
      if spec.fields then
        add(spec.fields, indent .. '  ')
      end
    end
  end
  add(M.schema, '  ')
  return lines
end

return M
