"""SSH local port forwards that survive reconnects (debugpy, TensorBoard, Jupyter).

Each forward keeps its local port: when the connection drops, a watcher reconnects with
backoff and reopens every forward on the same local port, so a browser tab or nvim-dap
configuration stays valid.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

import asyncssh

from .engine import TargetSession, log
from .errors import RemoteDevError
from .ssh import own_peer


@dataclass
class Forward:
    dest_host: str
    dest_port: int
    local_port: int
    name: str
    listener: Any = None

    def describe(self) -> dict[str, Any]:
        return {"local_port": self.local_port, "dest_host": self.dest_host, "dest_port": self.dest_port,
                "name": self.name, "open": self.listener is not None}


class Forwards:
    def __init__(self, sess: TargetSession) -> None:
        self.sess = sess
        self.items: list[Forward] = []
        self.watcher: asyncio.Task[None] | None = None
        sess.on_reconnect.append(self.rebuild)

    async def open(self, fwd: Forward) -> None:
        await self.sess.ensure()
        assert self.sess.conn is not None
        try:
            def mine(orig_host: str, orig_port: int) -> bool:   # no other local user gets through
                ok = own_peer((orig_host, orig_port), ("127.0.0.1", fwd.local_port))
                if not ok:
                    log.warning("forward localhost:%s: a connection of another local user refused", fwd.local_port)
                return ok
            fwd.listener = await self.sess.conn.forward_local_port("127.0.0.1", fwd.local_port,
                                                                   fwd.dest_host, fwd.dest_port, accept_handler=mine)
        except OSError as e:
            raise RemoteDevError(f"cannot listen on localhost:{fwd.local_port} for the forward to "
                                 f"{self.sess.target.host}:{fwd.dest_port}: {e.strerror or e}") from None
        except asyncssh.Error as e:
            raise RemoteDevError(f"{self.sess.target.host} refused the port forward: {e}") from None
        fwd.local_port = fwd.listener.get_port()

    async def add(self, dest_host: str, dest_port: int, local_port: int = 0, name: str = "") -> Forward:
        for fwd in self.items:
            if fwd.dest_host == dest_host and fwd.dest_port == dest_port and fwd.listener is not None \
                    and local_port in (0, fwd.local_port):
                return fwd
        fwd = Forward(dest_host, dest_port, local_port, name or f"{dest_host}:{dest_port}")
        await self.open(fwd)
        self.items.append(fwd)
        if self.watcher is None or self.watcher.done():
            self.watcher = asyncio.get_running_loop().create_task(self.watch())
        return fwd

    def close(self, fwd: Forward) -> None:
        if fwd.listener is not None:
            fwd.listener.close()
            fwd.listener = None
        if fwd in self.items:
            self.items.remove(fwd)

    async def rebuild(self) -> None:
        for fwd in list(self.items):
            if fwd.listener is not None:
                fwd.listener.close()
                fwd.listener = None
            try:
                await self.open(fwd)
                log.info("forward localhost:%s -> %s:%s reopened", fwd.local_port, fwd.dest_host, fwd.dest_port)
            except RemoteDevError as e:
                log.warning("forward %s not reopened: %s", fwd.name, e.message)

    async def watch(self) -> None:
        """While forwards exist, reconnect as soon as the connection is lost."""
        delay = 0.5
        while self.items:
            conn = self.sess.conn
            if conn is not None and self.sess.connected:
                await conn.wait_closed()
                delay = 0.5
                if not self.items:
                    return
            try:
                await self.sess.ensure()  # fires rebuild through on_reconnect
            except RemoteDevError:
                await asyncio.sleep(delay)
                delay = min(delay * 2, 30)


def forwards_of(sess: TargetSession) -> Forwards:
    return sess.state(Forwards, lambda: Forwards(sess))
