-- :RemoteEnv in the editor: the mirror of the target's libraries (python/remote_dev/
-- envmirror.py) handed to Python language servers, its buffers read-only, and its files
-- counted as the user's code by debugpy when they hold breakpoints.
local M = {}

local config = require('remote_dev.config')
local host = require('remote_dev.host')
local ui = require('remote_dev.ui')

local mirrors = {} ---@type table<string, table<string, table>> RemoteDevEnv data by project root, target
local ours = {} ---@type table<integer, string[]> the mirror folders given to each client
local ours_before_restart = {} ---@type table<string, string[]> those given to a restarted client, by name

-- Where each server we know reads extra import folders (settings, as the server reads them
-- from workspace/configuration or workspace/didChangeConfiguration).
local servers = {
  basedpyright = { 'basedpyright', 'analysis', 'extraPaths' },
  pyright = { 'python', 'analysis', 'extraPaths' },
  pylsp = { 'pylsp', 'plugins', 'jedi', 'extra_paths' },
  jedi_language_server = { 'workspace', 'extraPaths' },   -- initializationOptions
}
-- A client's kind by its name (nvim-lspconfig's) or by its program.
local programs = {
  ['basedpyright-langserver'] = 'basedpyright',
  ['pyright-langserver'] = 'pyright',
  pylsp = 'pylsp',
  ['jedi-language-server'] = 'jedi_language_server',
}

--- The kind of server a client is (a key of `servers`), or nil when we do not know it.
---@param client vim.lsp.Client
---@return string?
function M.kind(client)
  local name = (client.name or ''):gsub('-', '_')
  if servers[name] then
    return name
  end
  local cmd = client.config and client.config.cmd
  if type(cmd) == 'table' and type(cmd[1]) == 'string' then
    return programs[vim.fs.basename(cmd[1])]
  end
  return nil
end

--- The folder that holds every project's mirrors (python/remote_dev/engine.py state_home()).
---@return string
function M.state_base()
  local state = vim.env.XDG_STATE_HOME
  if not state or state == '' then
    state = vim.fn.expand('~/.local/state')
  end
  return vim.fs.normalize(state) .. '/remote-dev/projects'
end

--- For a file in a mirror: (the mirror's folder env/<target>, its library folder's name,
--- the path under it); nil otherwise.
---@param file string
local function mirror_parts(file)
  local base = M.state_base() .. '/'
  if file:sub(1, #base) ~= base then
    return nil
  end
  local proj, target, dir, rel = file:sub(#base + 1):match('^([^/]+)/env/([^/]+)/([^/]+)/(.+)$')
  if not rel then
    return nil
  end
  return base .. proj .. '/env/' .. target, dir, rel, target
end

local manifests = {} ---@type table<string, { mtime: integer, roots: table }> by mirror folder

--- The roots of a mirror's manifest (read again only when the file changed), or nil.
local function roots_of(folder)
  local path = folder .. '/manifest.json'
  local st = vim.uv.fs_stat(path)
  if not st then
    return nil
  end
  local cached = manifests[folder]
  if cached and cached.mtime == st.mtime.nsec + st.mtime.sec * 1e9 then
    return cached.roots
  end
  local f = io.open(path, 'r')
  if not f then
    return nil
  end
  local ok, manifest = pcall(vim.json.decode, f:read('*a'))
  f:close()
  if not ok or type(manifest) ~= 'table' or type(manifest.roots) ~= 'table' then
    return nil
  end
  manifests[folder] = { mtime = st.mtime.nsec + st.mtime.sec * 1e9, roots = manifest.roots }
  return manifest.roots
end

--- The remote path of a mirror file (from the mirror's manifest), or nil.
---@param file string
---@return string?, string?  remote path, target
function M.remote_of(file)
  local folder, _, _, target = mirror_parts(file)
  local roots = folder and roots_of(folder)
  if not roots then
    return nil
  end
  local best, best_len = nil, 0
  for remote, entry in pairs(roots) do   -- the folder holding it (an editable package's is deeper)
    local dir = folder .. '/' .. entry.dir .. '/'
    if file:sub(1, #dir) == dir and #dir > best_len then
      best, best_len = remote .. '/' .. file:sub(#dir + 1), #dir
    end
  end
  return best, best and target or nil
end

--- The project root of a buffer's file: the nearest .remote-dev.toml above it, or for a
--- mirror file, the project whose mirror holds it.
---@param file string
---@return string?
local function root_of(file)
  if file == '' then
    return nil
  end
  for root, targets in pairs(mirrors) do
    for _, data in pairs(targets) do
      for _, p in ipairs(data.paths or {}) do
        if file:sub(1, #p + 1) == p .. '/' then
          return root
        end
      end
    end
  end
  local found = vim.fs.find('.remote-dev.toml', { upward = true, path = vim.fs.dirname(file), type = 'file' })[1]
  return found and vim.fs.dirname(found) or nil
end

--- The mirror data in force for a project: its current target's, else any.
local function current(root)
  local t = mirrors[root]
  if not t then
    return nil
  end
  local s = host.status_of(root)
  return (s and s.target and t[s.target]) or select(2, next(t))
end

--- The mirror's local folders in sys.path order for the target (default: the current one
--- of the current buffer's project); {} before the first RemoteDevEnv of this session.
---@param target string?
---@return string[]
function M.env_paths(target)
  local root = host.project_root()
  local data = root and (target and (mirrors[root] or {})[target] or current(root))
  return vim.deepcopy(data and data.paths or {})
end

local function get(tbl, keys)
  for _, k in ipairs(keys) do
    if type(tbl) ~= 'table' then
      return nil
    end
    tbl = tbl[k]
  end
  return tbl
end

local function set(tbl, keys, value)
  for i = 1, #keys - 1 do
    if type(tbl[keys[i]]) ~= 'table' then
      tbl[keys[i]] = {}
    end
    tbl = tbl[keys[i]]
  end
  tbl[keys[#keys]] = value
end

--- The user's extra paths (without the mirror folders given before), then the mirror's.
local function merged(current, previous, paths)
  local out = {}
  for _, p in ipairs(current or {}) do
    if not vim.tbl_contains(previous, p) then
      table.insert(out, p)
    end
  end
  for _, p in ipairs(paths) do
    if not vim.tbl_contains(out, p) then
      table.insert(out, p)
    end
  end
  return out
end

--- Stop a client and start it again with its (changed) configuration for its buffers, as
--- :LspRestart does, once it has stopped; never waits.
local function restart(client)
  local bufs = vim.tbl_keys(client.attached_buffers or {})
  local cfg = client.config
  client:stop()
  local timer = assert(vim.uv.new_timer())
  local tries = 0
  timer:start(50, 50, vim.schedule_wrap(function()
    tries = tries + 1
    if not client:is_stopped() and tries < 100 then
      return
    end
    timer:stop()
    timer:close()
    for _, buf in ipairs(bufs) do
      if vim.api.nvim_buf_is_valid(buf) then
        vim.lsp.start(cfg, { bufnr = buf })
      end
    end
  end))
end

--- jedi-language-server reads its extra paths from initializationOptions only: a client
--- that started without the mirror's is restarted with them.
local function configure_by_init(client, paths)
  local init = client.config.init_options or {}
  local keys = { 'workspace', 'extraPaths' }
  local have = get(init, keys) or {}
  local missing = false
  for _, p in ipairs(paths) do
    missing = missing or not vim.tbl_contains(have, p)
  end
  ours[client.id] = vim.deepcopy(paths)
  if not missing then
    return
  end
  client.config.init_options = init
  set(init, keys, merged(have, ours_before_restart[client.name] or {}, paths))
  ours_before_restart[client.name] = vim.deepcopy(paths)
  restart(client)
end

--- Give a client the mirror's folders (the user's own extra paths first) and tell it.
---@param client vim.lsp.Client
---@param paths string[]
---@return boolean  whether the client is one we know
function M.configure(client, paths)
  local kind = M.kind(client)
  if not kind then
    return false
  end
  if vim.deep_equal(ours[client.id], paths) then
    return true
  end
  if kind == 'jedi_language_server' then
    configure_by_init(client, paths)
    return true
  end
  local keys = servers[kind]
  local settings = client.settings or (client.config and client.config.settings) or {}
  set(settings, keys, merged(get(settings, keys), ours[client.id] or {}, paths))
  client.settings = settings
  if client.config then
    client.config.settings = settings
  end
  ours[client.id] = vim.deepcopy(paths)
  client:notify('workspace/didChangeConfiguration', { settings = settings })
  return true
end

--- Whether a client serves a project: attached to one of its buffers (or the mirror's),
--- or rooted in it.
local function serves(client, root)
  if client.root_dir and (client.root_dir == root or vim.startswith(client.root_dir, root .. '/')) then
    return true
  end
  for buf in pairs(client.attached_buffers or {}) do
    if root_of(vim.api.nvim_buf_get_name(buf)) == root then
      return true
    end
  end
  return false
end

--- The Python language servers of a project, given its mirror.
---@param root string
function M.apply(root)
  local data = current(root)
  if not data or not config.options.env.lsp then
    return
  end
  for _, client in ipairs(vim.lsp.get_clients()) do
    if serves(client, root) then
      M.configure(client, data.paths or {})
    end
  end
end

--- Host event RemoteDevEnv (before the User autocmd fires).
function M.on_env(data)
  if type(data) ~= 'table' or not data.root then
    return
  end
  mirrors[data.root] = mirrors[data.root] or {}
  mirrors[data.root][data.target] = data
  M.apply(data.root)
end

local checked = {} ---@type table<string, boolean> root .. '\0' .. target: checked after connecting

--- A status report says the target is connected: the first time in this session, check the
--- mirror in the background (made when missing; one round trip when nothing changed).
---@param root string
---@param target string
function M.on_connected(root, target)
  local key = root .. '\0' .. target
  if checked[key] then
    return
  end
  checked[key] = true
  host.request('env', {}, function(err)
    if err then
      ui.notify(':RemoteEnv (in the background): ' .. err, vim.log.levels.WARN)
    end
  end, host.context_of(root, target))
end

--- Host event RemoteDevRunExit: a run may have installed packages (pip install): check the
--- environment's stamp again (one round trip when nothing changed).
function M.on_run_exit(data)
  if type(data) ~= 'table' or not data.target or not config.options.env.auto then
    return
  end
  local roots = {}
  for root, targets in pairs(mirrors) do
    if targets[data.target] then
      roots[root] = true
    end
  end
  -- a container target's first mirror: after its first run (the image exists by then)
  local here = host.project_root()
  local s = here and host.status_of(here)
  if s and s.target == data.target and s.runner == 'container' then
    roots[here] = true
  end
  for root in pairs(roots) do
    host.request('env', {}, function(err)
      if err then
        ui.notify(':RemoteEnv (in the background): ' .. err, vim.log.levels.WARN)
      end
    end, host.context_of(root, data.target))
  end
end

--- LspAttach: a client starting for a buffer of a project whose mirror is known.
function M.on_lsp_attach(args)
  local client = vim.lsp.get_client_by_id(args.data and args.data.client_id or -1)
  if not client or not config.options.env.lsp then
    return
  end
  local root = root_of(vim.api.nvim_buf_get_name(args.buf))
  local data = root and current(root)
  if data then
    M.configure(client, data.paths or {})
  end
end

--- BufReadPost of a mirror file: read-only, and :w says why (BufWriteCmd).
function M.on_read(args)
  local remote = M.remote_of(args.match ~= '' and args.match or vim.api.nvim_buf_get_name(args.buf))
  if not remote then
    return
  end
  vim.b[args.buf].remote_dev_mirror = remote
  vim.bo[args.buf].modifiable = false
  vim.bo[args.buf].readonly = false   -- else :w stops at E45 (the files are 0444) before saying why
  -- buftype stays '' (a file): language servers attach to it (definitions within libraries);
  -- a buffer-local BufWriteCmd answers :w all the same
  vim.api.nvim_create_autocmd('BufWriteCmd', {
    buffer = args.buf,
    desc = 'remote_dev: the :RemoteEnv mirror is read-only',
    callback = function()
      ui.error(('%s is the read-only :RemoteEnv mirror of %s on the target: change the library there '
        .. '(pip install, :RemoteShell); :RemoteEnv brings the change here'):format(
        vim.fn.fnamemodify(vim.api.nvim_buf_get_name(args.buf), ':~'), remote))
    end,
  })
end

--- debugpy's rules for a configuration: each mirror file with a breakpoint counts as the
--- user's code, so justMyCode does not hide its breakpoints.
---@param cfg table
---@return table cfg
function M.with_breakpoint_rules(cfg)
  if cfg.justMyCode == false then
    return cfg
  end
  local ok, breakpoints = pcall(require, 'dap.breakpoints')
  if not ok then
    return cfg
  end
  local rules = vim.deepcopy(cfg.rules or {})
  for buf in pairs(breakpoints.get()) do
    local remote = vim.api.nvim_buf_is_valid(buf) and M.remote_of(vim.api.nvim_buf_get_name(buf))
    if remote then
      table.insert(rules, { path = remote, include = true })
    end
  end
  if #rules > 0 then
    cfg.rules = rules
  end
  return cfg
end

local told = {} ---@type table<string, boolean> mirror files told about, by path

--- nvim-dap listener after setBreakpoints: a breakpoint put into a mirror file while a
--- session runs that started without it among its rules is hidden by justMyCode until the
--- next session; say so once per file.
function M.on_set_breakpoints(session, _, _, request)
  local cfg = session and session.config or {}
  local path = request and request.source and request.source.path
  if type(cfg.remote_dev) ~= 'table' or cfg.justMyCode == false or type(path) ~= 'string' or told[path] then
    return
  end
  local remote = M.remote_of(path)
  if not remote then
    return
  end
  for _, rule in ipairs(cfg.rules or {}) do
    if rule.path == remote then
      return
    end
  end
  told[path] = true
  ui.notify(('%s is library code (the :RemoteEnv mirror): debugpy\'s justMyCode hides its breakpoints in this '
    .. 'session; they bind from the next debug run (dap.restart()), or set dap = { justMyCode = false }'):format(
    vim.fn.fnamemodify(path, ':t')), vim.log.levels.WARN)
end

--- :RemoteEnv [refresh]
---@param opts { refresh: boolean? }?
function M.env(opts)
  opts = opts or {}
  host.request('env', { refresh = opts.refresh or nil }, function(err, data)
    if err then
      ui.error(err)
      return
    end
    ui.notify(('env %s: %d folders, %d files, %.1f MB mirrored (%d fetched, %d ms)'):format(
      data.target, #(data.paths or {}), data.files, data.bytes / 1e6, data.changed or 0, data.ms or 0))
  end)
end

--- For :checkhealth: lines about the Python language servers running now.
---@return { level: string, text: string }[]
function M.health()
  local out = {}
  for _, client in ipairs(vim.lsp.get_clients()) do
    local python = vim.tbl_contains(client.config and client.config.filetypes or {}, 'python')
    for buf in pairs(client.attached_buffers or {}) do
      python = python or (vim.api.nvim_buf_is_valid(buf) and vim.bo[buf].filetype == 'python')
    end
    if M.kind(client) then
      table.insert(out, { level = 'ok', text = ('language server %s gets the :RemoteEnv mirror (%s)'):format(
        client.name, (M.kind(client) == 'jedi_language_server' and 'initializationOptions ' or '')
          .. table.concat(servers[M.kind(client)], '.')) })
    elseif python then
      table.insert(out, { level = 'warn', text = ('language server %s is not one remote_dev knows (basedpyright, pyright, '
        .. 'pylsp, jedi-language-server): it gets no :RemoteEnv paths; add require("remote_dev").env_paths() '
        .. 'to its settings yourself'):format(client.name) })
    end
  end
  return out
end

return M
