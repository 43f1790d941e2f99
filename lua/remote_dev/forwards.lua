-- Port forwards the user asks for (:RemoteForward): the remote's 127.0.0.1:port to a local port.
local M = {}

local host = require('remote_dev.host')

--- Forward the remote's 127.0.0.1:port to localhost:local_port (a free port by default).
--- The forward keeps its local port across reconnects.
---@param port integer
---@param local_port integer?
function M.forward(port, local_port)
  host.request('forward', { port = port, ['local'] = local_port })
end

return M
