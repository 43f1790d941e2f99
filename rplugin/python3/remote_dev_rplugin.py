"""Thin pynvim handlers: every request goes to the engine; answers and reports come back
as notifications to lua/remote_dev (never waiting on Neovim, never making it wait)."""

import os
import sys

import pynvim

_PYTHON_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "python")
if os.path.isdir(_PYTHON_DIR) and _PYTHON_DIR not in sys.path:
    sys.path.insert(0, _PYTHON_DIR)


@pynvim.plugin
class RemoteDevPlugin:
    def __init__(self, nvim):
        self.nvim = nvim
        self._engine = None  # created on the first request: nothing runs at import time
        self._replies = {}   # login prompt id -> reply(answers): the person answers in Lua
        self._next_prompt = 0

    @property
    def engine(self):
        if self._engine is None:
            from remote_dev.actions import ACTIONS
            from remote_dev.engine import Engine
            from remote_dev.runners import RUNNERS

            self._engine = Engine(report=self._report, actions=ACTIONS, prompter=self._prompt, runners=RUNNERS)
        return self._engine

    def _to_lua(self, *args):
        def send():
            self.nvim.exec_lua("require('remote_dev')._from_host(...)", *args, async_=True)
        self.nvim.async_call(send)

    def _report(self, kind, payload):
        if kind == "run_output" and isinstance(payload.get("lines"), list):
            # one string, not a list: Neovim decodes one object instead of one per line
            # and splits only what it shows (lua/remote_dev/run.lua)
            lines = payload["lines"]
            payload = {k: v for k, v in payload.items() if k != "lines"}
            payload.update(text="\n".join(lines), n=len(lines))
        self._to_lua("report", kind, payload)

    def _prompt(self, challenge, reply):
        """A server's login prompts, to the person in Neovim (lua/remote_dev/login.lua)."""
        self._next_prompt += 1
        self._replies[self._next_prompt] = reply
        self._report("login", {**challenge, "id": self._next_prompt})

    @pynvim.function("RemoteDevAnswer", sync=False)
    def answer(self, args):
        """The person's answers (or nil: cancelled), handed on and forgotten."""
        reply = self._replies.pop(args[0], None) if args else None
        if reply is not None:
            reply(args[1] if len(args) > 1 and isinstance(args[1], list) else None)

    @pynvim.function("RemoteDevRequest", sync=False)
    def request(self, args):
        req_id, action, ctx, params = args
        if not isinstance(params, dict):
            params = {}

        def done(err, result):
            self._to_lua("resolve", req_id, err, result)
        self.engine.request(action, ctx if isinstance(ctx, dict) else {}, params, done)

    @pynvim.function("RemoteDevPing", sync=True)
    def ping(self, args):
        return "pong"

    @pynvim.shutdown_hook
    def shutdown(self):
        if self._engine is not None:
            self._engine.close()
