"""Extra agent channels for big pushes, per connection: each an SSH channel with an agent
of its own (another window in flight, the remote's writing spread over processes).

A push asks for them and starts at once on the main channel; the missing ones start in
the background and join the push as they come up (an agent's start costs the remote
login shell and an interpreter: ~0.2 s).  Afterwards they stay open IDLE_CLOSE seconds for
the next big push, then close.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import asyncssh

from ..engine import TargetSession, log
from ..errors import RemoteDevError
from ..rpc import AgentChannel

IDLE_CLOSE = 60.0


@dataclass
class ExtraChannels:
    """Per connection (the session's state): idle extra channels, and those starting."""
    idle: list[AgentChannel] = field(default_factory=list)
    starting: int = 0
    taker: Callable[[AgentChannel], bool] | None = None
    timer: asyncio.TimerHandle | None = None
    tasks: set[asyncio.Task[Any]] = field(default_factory=set)

    def take(self, sess: TargetSession, want: int, taker: Callable[[AgentChannel], bool]) -> list[AgentChannel]:
        """Up to want channels: the idle ones now; the missing ones start, and taker(chan)
        is offered each as it comes up (True: taken, else it waits idle)."""
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        alive = [c for c in self.idle if c.alive]
        ready, self.idle = alive[:want], alive[want:]
        self.taker = taker
        loop = asyncio.get_running_loop()
        for _ in range(max(0, want - len(ready) - self.starting)):
            self.starting += 1
            task = loop.create_task(self.start(sess))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)
        return ready

    async def start(self, sess: TargetSession) -> None:
        t = sess.target
        try:
            if sess.conn is None:
                return
            chan = await AgentChannel.start(sess.conn, t.host, t.python)
        except (RemoteDevError, asyncssh.Error, OSError) as e:
            log.info("push: no extra channel (%s)", e)
            return
        finally:
            self.starting -= 1
        if self.taker is None or not self.taker(chan):
            self.give_back([chan])

    def give_back(self, chans: list[AgentChannel]) -> None:
        """A push is done with these (or a late one came up): idle until IDLE_CLOSE."""
        self.taker = None
        self.idle += [c for c in chans if c.alive]
        if self.idle and self.timer is None:
            self.timer = asyncio.get_running_loop().call_later(IDLE_CLOSE, self.close)

    def close(self) -> None:
        self.timer = None
        for chan in self.idle:
            chan.close()
        self.idle.clear()
