-- Login prompts of a server (a one-time code, a Duo choice, a password after the key): the
-- host sends the server's own prompt text and instructions (report "login"), we ask the
-- person, and hand the answers back through RemoteDevAnswer. Echo is off where the server
-- says so (inputsecret). Answers are never stored: they go to the host and are forgotten.
local M = {}

local queue = {} ---@type table[] challenges waiting for the one before them
local busy = false

local function reply(id, answers)
  pcall(vim.fn.RemoteDevAnswer, id, answers or vim.NIL)
end

--- One prompt: cb(answer) or cb(nil) when the person cancels (Esc, Ctrl-C, or an empty
--- answer to a prompt that does not echo).
local function ask_one(text, echo, cb)
  if echo then
    vim.ui.input({ prompt = text }, cb)
    return
  end
  local ok, answer = pcall(vim.fn.inputsecret, text)
  vim.cmd('redraw')
  cb((ok and answer ~= '') and answer or nil)
end

local next_challenge

--- The header above the first prompt: which host asks (a ProxyJump hop names its own),
--- why we log in (again), and the server's name and instructions.
local function header(p)
  local lines = { ('remote_dev: login to %s as %s'):format(p.host, p.user) }
  if p.why ~= '' then
    table.insert(lines, p.why)
  end
  for _, part in ipairs({ p.name, p.instructions }) do
    if part ~= '' then
      table.insert(lines, (part:gsub('\n$', '')))
    end
  end
  return table.concat(lines, '\n') .. '\n'
end

local function run(p)
  local answers = {}
  local function step(i)
    if i > #p.prompts then
      reply(p.id, answers)
      return next_challenge()
    end
    local prompt = p.prompts[i]
    ask_one((i == 1 and header(p) or '') .. prompt.text, prompt.echo, function(answer)
      if answer == nil then
        reply(p.id, nil)
        return next_challenge()
      end
      answers[i] = answer
      step(i + 1)
    end)
  end
  step(1)
end

next_challenge = function()
  local p = table.remove(queue, 1)
  busy = p ~= nil
  if p then
    vim.schedule(function()
      local ok, err = pcall(run, p)
      if not ok then -- a broken input UI: the login is cancelled, the next one still asks
        reply(p.id, nil)
        require('remote_dev.ui').error('login prompt failed: ' .. tostring(err))
        next_challenge()
      end
    end)
  end
end

--- A challenge from the host: { id, host, user, name, instructions, why, prompts = {{text, echo}} }.
--- Asked after the one on screen (two targets logging in at once take turns).
---@param p table
function M.ask(p)
  table.insert(queue, p)
  if not busy then
    next_challenge()
  end
end

return M
