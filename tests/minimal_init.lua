-- Neovim for the tests: this repo on the runtimepath, the venv's Python as the host.
-- Not --clean: plugin/rplugin.vim must load for remote plugins to register.
local root = vim.fn.fnamemodify(debug.getinfo(1, 'S').source:sub(2), ':p:h:h')
vim.opt.runtimepath:prepend(root)
vim.g.python3_host_prog = os.getenv('REMOTE_DEV_PYTHON') or (root .. '/.venv/bin/python')
vim.opt.swapfile = false
vim.opt.shadafile = 'NONE'
vim.g.loaded_python_provider = 0
vim.g.loaded_ruby_provider = 0
vim.g.loaded_node_provider = 0
vim.g.loaded_perl_provider = 0
-- Collect remote_dev events for the tests to read.
_G.rd_events = {}
vim.api.nvim_create_autocmd('User', {
  pattern = 'RemoteDev*',
  callback = function(args)
    table.insert(_G.rd_events, { name = args.match, data = args.data })
  end,
})
_G.rd_messages = {}
local orig_notify = vim.notify
vim.notify = function(msg, level, opts)
  table.insert(_G.rd_messages, { msg = msg, level = level })
  return orig_notify(msg, level, opts)
end
-- The :RemoteEnv mirror is made in the background after connecting (the target's stdlib and
-- site-packages); tests about something else leave it off, also when they call setup() with
-- options of their own. Tests about it call _G.rd_setup, the plugin's own setup().
local config = require('remote_dev.config')
_G.rd_setup = config.setup
config.setup = function(opts)
  _G.rd_setup(opts)
  if not (type(opts) == 'table' and type(opts.env) == 'table' and opts.env.auto ~= nil) then
    config.options.env.auto = false
  end
end
config.options.env.auto = false
