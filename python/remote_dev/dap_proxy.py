"""The local end of a debug run: a listener on localhost that nvim-dap (or any DAP client)
connects to, each connection carried to the debuggee's debugpy through its own SSH
channel, with the Debug Adapter Protocol read on the way.

Reading the messages is how the run learns how a debug session ends, which no client event
tells reliably (debugpy sends no ``exited`` event to an attached client, and its
``terminated`` event comes before the answer to a ``terminate`` request):

* the client asks to end it (``terminate``, or ``disconnect`` not asking to keep the debuggee
  running): the request goes no further; the proxy answers it at once and calls ``on_end``,
  which stops the run like :RemoteStop.  The connection to debugpy stays open until the
  run has ended, so the paused program never resumes meanwhile;
* debugpy ends it (the program ended): nothing is done, the run ends by itself;
* the client goes away without asking (``dap.close()``, Neovim quits, a lost connection):
  the proxy tells debugpy (``disconnect`` keeping the debuggee), which lets the program go
  on; a client may attach again.

Several connections may be open at once (a debuggee's subprocesses, several ranks): each
is one session; ending any of them the first way ends the run.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from typing import Any, Callable

import asyncssh

from .engine import TargetSession
from .errors import RemoteDevError
from .ssh import own_peer

log = logging.getLogger("remote_dev")

HEADER_END = b"\r\n\r\n"
MAX_HEADER = 1 << 12
DETACH_SEQ = 1 << 30    # the seq of the disconnect the proxy sends for a client that went away
DETACH_WAIT = 5.0       # seconds to wait for debugpy to answer it


class DapStream:
    """Messages of one direction of a DAP connection: ``Content-Length`` framed JSON."""

    def __init__(self, reader: Any) -> None:
        self.reader = reader

    async def read(self) -> tuple[bytes, dict[str, Any] | None] | None:
        """The next message as (raw bytes, parsed body), or None at the end of the stream.
        A body that is not JSON is passed on as it is (parsed body None)."""
        try:
            head = await self.reader.readuntil(HEADER_END)
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, asyncssh.Error, OSError):
            return None
        length = None
        for line in head.split(b"\r\n"):
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                with contextlib.suppress(ValueError):
                    length = int(value.strip())
        if length is None or len(head) > MAX_HEADER:
            return None   # not DAP: give up on this connection
        try:
            body = await self.reader.readexactly(length)
        except (asyncio.IncompleteReadError, asyncssh.Error, OSError):
            return None
        try:
            msg = json.loads(body)
        except ValueError:
            msg = None
        return head + body, msg if isinstance(msg, dict) else None


def frame(msg: dict[str, Any]) -> bytes:
    body = json.dumps(msg).encode()
    return b"Content-Length: %d\r\n\r\n" % len(body) + body


def ends_debuggee(msg: dict[str, Any]) -> bool:
    """A client request that ends the session and the program with it: ``terminate``, or
    ``disconnect`` unless it asks to keep the debuggee running (``terminateDebuggee: false``
    without ``restart``)."""
    if msg.get("type") != "request":
        return False
    command = msg.get("command")
    if command == "terminate":
        return True
    if command == "disconnect":
        args = msg.get("arguments") or {}
        return not (args.get("terminateDebuggee") is False and not args.get("restart"))
    return False


class Connection:
    """One client connection (one debug session) and its channel to debugpy."""

    def __init__(self, proxy: "DapProxy", client_r: Any, client_w: asyncio.StreamWriter) -> None:
        self.proxy = proxy
        self.client_r = client_r
        self.client_w = client_w
        self.up_w: Any = None
        self.ended_by_client = False   # the client asked to end the program
        self.ended_by_adapter = False  # debugpy said the session is over (the program ended)
        self.client_gone = False
        self.detach_sent = False
        self.detached: asyncio.Future[None] | None = None   # our disconnect's answer
        self.upstream_closed = asyncio.Event()

    def to_client(self, data: bytes) -> None:
        if not self.client_w.is_closing():
            self.client_w.write(data)

    def to_debugpy(self, data: bytes) -> None:
        if self.up_w is not None:
            try:
                self.up_w.write(data)
            except (asyncssh.Error, OSError):
                self.close_upstream()

    async def client_to_debugpy(self) -> None:
        stream = DapStream(self.client_r)
        while (item := await stream.read()) is not None:
            raw, msg = item
            if msg is not None and self.proxy.intercept and ends_debuggee(msg):
                self.ended_by_client = True
                self.to_client(frame({"seq": 0, "type": "response", "request_seq": msg.get("seq"),
                                      "command": msg.get("command"), "success": True}))
                self.proxy.on_end(msg.get("command") or "terminate")
                continue
            if msg is not None and msg.get("command") == "disconnect":
                self.detach_sent = True   # a detach the client asked for (debugpy answers it)
            self.to_debugpy(raw)
        self.client_gone = True
        # The client is gone.  When it ended the program, debugpy stays connected until the
        # run has ended (closing now would let the program run on for a moment).  Else it
        # detached: debugpy is told so before the channel closes, so that the next client
        # can attach at once (debugpy serves one session at a time).
        if not self.ended_by_client:
            if not (self.ended_by_adapter or self.detach_sent):
                await self.detach()
            self.close_upstream()

    async def detach(self) -> None:
        if self.up_w is None:
            return
        self.detached = asyncio.get_running_loop().create_future()
        self.to_debugpy(frame({"seq": DETACH_SEQ, "type": "request", "command": "disconnect",
                               "arguments": {"terminateDebuggee": False}}))
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self.detached, DETACH_WAIT)

    async def debugpy_to_client(self, up_r: Any) -> None:
        stream = DapStream(up_r)
        while (item := await stream.read()) is not None:
            raw, msg = item
            if self.ended_by_client:
                continue   # the session is over for the client: it was answered already
            if msg is not None and msg.get("type") == "response" and msg.get("request_seq") == DETACH_SEQ:
                if self.detached is not None and not self.detached.done():
                    self.detached.set_result(None)
                continue
            if msg is not None and msg.get("type") == "event" and msg.get("event") == "terminated":
                self.ended_by_adapter = True
            self.to_client(raw)
        self.close_client()

    def close_upstream(self) -> None:
        if self.up_w is not None:
            with contextlib.suppress(Exception):
                self.up_w.close()
            self.up_w = None
        self.upstream_closed.set()

    def close_client(self) -> None:
        if not self.client_w.is_closing():
            with contextlib.suppress(Exception):
                self.client_w.close()

    def close(self) -> None:
        self.close_upstream()
        self.close_client()


class DapProxy:
    """A localhost listener forwarding DAP connections to dest_host:dest_port as the remote
    sees it; ``on_end(command)`` is called when a client ends the program (see the module
    docstring).  With intercept False, every request goes to debugpy unchanged."""

    def __init__(self, sess: TargetSession, dest_host: str, dest_port: int, on_end: Callable[[str], None],
                 intercept: bool = True, secret: str | None = None) -> None:
        self.sess = sess
        self.secret = secret    # sent first on each connection: the run's debuggee is on another host
        self.dest_host = dest_host
        self.dest_port = dest_port
        self.on_end = on_end
        self.intercept = intercept
        self.server: asyncio.AbstractServer | None = None
        self.local_port = 0
        self.connections: list[Connection] = []

    async def start(self) -> int:
        self.server = await asyncio.start_server(self.serve, "127.0.0.1", 0)
        self.local_port = self.server.sockets[0].getsockname()[1]
        return self.local_port

    @property
    def open(self) -> bool:
        return self.server is not None

    async def serve(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        peer, local = client_w.get_extra_info("peername"), client_w.get_extra_info("sockname")
        if not own_peer(peer, local):
            log.warning("debug listener of %s:%s: a connection of another local user refused", self.dest_host,
                        self.dest_port)
            client_w.close()
            return
        leaving = [c.upstream_closed.wait() for c in self.connections if c.client_gone and not c.ended_by_client]
        if leaving:   # a client that just detached: debugpy takes the next one once that is done
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(asyncio.gather(*leaving), DETACH_WAIT + 1)
        conn = Connection(self, client_r, client_w)
        self.connections.append(conn)
        try:
            try:
                await self.sess.ensure()
                assert self.sess.conn is not None
                up_r, conn.up_w = await self.sess.conn.open_connection(self.dest_host, self.dest_port)
                if self.secret:
                    conn.up_w.write(self.secret.encode() + b"\n")
            except (RemoteDevError, asyncssh.Error, OSError) as e:
                log.warning("debug connection to %s:%s on %s failed: %s", self.dest_host, self.dest_port,
                            self.sess.target.host, e)
                return
            await asyncio.gather(conn.client_to_debugpy(), conn.debugpy_to_client(up_r))
        finally:
            if not conn.ended_by_client:
                conn.close()
                if conn in self.connections:
                    self.connections.remove(conn)
            else:
                conn.close_client()   # debugpy's side closes with the run (close())

    def close(self) -> None:
        """Stop listening and close every connection (the run has ended)."""
        if self.server is not None:
            self.server.close()
            self.server = None
        for conn in self.connections:
            conn.close()
        self.connections.clear()
