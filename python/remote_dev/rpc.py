"""msgpack-RPC to the remote agent over one long-lived SSH channel."""

from __future__ import annotations

import asyncio
import collections
import itertools
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import asyncssh
import msgpack

from .agent import GREETING, NEED, OK, REMOTE_COMMAND, bootstrap_script, bundle
from .errors import AgentCallError, ConnectError


def consume(futs: Iterable[asyncio.Future[Any] | None]) -> None:
    """Futures of calls no longer waited for (a lost connection, a push that ended):
    cancelled, or their outcome retrieved -- never a warning of an exception never
    retrieved."""
    for f in futs:
        if f is None:
            continue
        if f.done() and not f.cancelled():
            f.exception()
        else:
            f.cancel()


class LostWrites(logging.Filter):
    """asyncio warns "socket.send() raised exception." for every write past the fifth to a
    connection already lost: asyncssh sends a large request as many packets in one go.  The
    lost connection is reported once, as ConnectError; these add nothing."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.msg != "socket.send() raised exception."


logging.getLogger("asyncio").addFilter(LostWrites())
log = logging.getLogger("remote_dev")
NOISE_LIMIT = 1 << 16   # bytes a login shell may print before the agent's greeting


@dataclass
class Followup:
    """A request to make in one message with a push's remote check when the push has
    nothing to send (protocol.IF_UNCHANGED): the agent makes it only when the check finds
    the remote as recorded.  note: the notification the request brings ((method, key),
    expected before the request goes out, into `notified`); outcome: [error, result] once
    the agent made it, None while not."""
    method: str
    params: list[Any]
    note: tuple[str, Any] | None = None
    outcome: list[Any] | None = None
    notified: asyncio.Future[Any] | None = None
    host: str = ""

    def result(self) -> Any:
        assert self.outcome is not None
        error, result = self.outcome
        if error is not None:
            raise AgentCallError(self.method, error.get("kind", "?"), f"{self.host}: {error.get('message', '')}")
        return result


class AgentChannel:
    """One agent process on the remote, started through the bootstrap command."""

    def __init__(self, process: asyncssh.SSHClientProcess, host: str) -> None:
        self.process = process
        self.host = host
        self.ids = itertools.count(1)
        self.pending: dict[int, asyncio.Future[Any]] = {}
        self.expected: dict[tuple[str, Any], asyncio.Future[Any]] = {}   # notifications awaited
        self.sent: collections.Counter[str] = collections.Counter()      # requests sent, per method
        self.closed: Exception | None = None
        self.packer = msgpack.Packer(use_bin_type=True, unicode_errors="surrogateescape")
        self.reader: asyncio.Task[None] | None = None
        self.noise_reader: asyncio.Task[None] | None = None

    @classmethod
    async def start(cls, conn: asyncssh.SSHClientConnection, host: str, python: str,
                    env: dict[str, str] | None = None) -> "AgentChannel":
        process = await conn.create_process(REMOTE_COMMAND, encoding=None)
        process.stdin.write(bootstrap_script(python, env))
        chan = cls(process, host)
        await chan._handshake(python)
        chan.reader = asyncio.get_running_loop().create_task(chan._read_loop())
        chan.noise_reader = asyncio.get_running_loop().create_task(chan._log_stderr())
        return chan

    async def _greeting(self) -> bytes:
        """The bootstrap's next line from its greeting on, past what the login shell printed
        first (that goes to the log); b"" when the greeting never came."""
        seen = 0
        while seen <= NOISE_LIMIT:
            line = await self.process.stdout.readline()
            at = line.find(GREETING)
            noise = line[:at] if at >= 0 else line
            seen += len(noise)
            if noise.strip():
                log.info("%s: the login shell printed before the agent: %r", self.host, noise[:2000])
            if at >= 0:
                return line[at:]
            if not line:
                break
        return b""

    async def _handshake(self, python: str) -> None:
        line = await self._greeting()
        if line == NEED:
            data = bundle().data
            self.process.stdin.write(b"%d\n" % len(data) + data)
            await self.process.stdin.drain()
            line = await self._greeting()
        if not line.startswith(OK):
            err = b""
            try:
                err = await asyncio.wait_for(self.process.stderr.read(4000), 5)
            except (asyncio.TimeoutError, asyncssh.Error):
                pass
            text = err.decode(errors="replace").strip()
            if "not found" in text or "No such file" in text:
                raise ConnectError(f"{self.host}: remote interpreter {python!r} not found; set "
                                   f"`python` of this target to a Python >= 3.8 ({text})", kind="python")
            raise ConnectError(f"{self.host}: the remote agent did not start: {text or 'it said nothing'}",
                               kind="agent")
        version = tuple(int(x) for x in line[len(OK):].strip().split(b"."))
        if version < (3, 8):
            raise ConnectError(f"{self.host}: remote {python} is Python {version[0]}.{version[1]}; "
                               f"remote_dev needs Python >= 3.8 (set `python` of this target)", kind="python")

    async def _log_stderr(self) -> None:
        """What the remote writes on stderr (a login banner, the agent's own last words) goes
        to the log, read as it comes so it never fills the channel's window."""
        try:
            while True:
                line = await self.process.stderr.readline()
                if not line:
                    return
                log.info("%s: agent stderr: %s", self.host, line.decode(errors="replace").rstrip())
        except (asyncssh.Error, OSError):
            return

    async def _read_loop(self) -> None:
        unpacker = msgpack.Unpacker(raw=False, unicode_errors="surrogateescape", max_buffer_size=512 << 20)
        try:
            while True:
                data = await self.process.stdout.read(1 << 20)
                if not data:
                    break
                unpacker.feed(data)
                for msg in unpacker:
                    if msg[0] == 1:
                        fut = self.pending.pop(msg[1], None)
                        if fut is not None and not fut.done():
                            if msg[2] is not None:
                                fut.set_exception(AgentCallError(getattr(fut, "method", "?"), msg[2].get("kind", "?"),
                                                                 f"{self.host}: {msg[2].get('message', '')}"))
                            else:
                                fut.set_result(msg[3])
                    elif msg[0] == 2:
                        self._notified(msg[1], msg[2])
        except (asyncssh.Error, OSError) as e:
            self._fail(e)
            return
        self._fail(None)

    def _notified(self, method: str, params: list[Any]) -> None:
        fut = self.expected.pop((method, params[0]), None)
        if fut is None:
            log.info("%s: agent notification %s %s not expected", self.host, method, params[0])
        elif not fut.done():
            fut.set_result(params[1])

    def _fail(self, exc: Exception | None) -> None:
        reason = f": {exc}" if exc else ""
        self.closed = ConnectError(f"{self.host}: connection to the agent lost{reason}", kind="lost", retry=True)
        for fut in [*self.pending.values(), *self.expected.values()]:
            if not fut.done():
                fut.set_exception(self.closed)
                fut.exception()  # marked retrieved: who awaits it still gets it, none is logged unawaited
        self.pending.clear()
        self.expected.clear()

    def expect(self, method: str, key: Any) -> asyncio.Future[Any]:
        """The future of the notification [2, method, [key, value]] (its value), to ask for
        before the request that brings it goes out."""
        if self.closed is not None:
            raise self.closed
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.expected[(method, key)] = fut
        return fut

    def unexpect(self, method: str, key: Any) -> None:
        """The request that would have brought it was not made."""
        fut = self.expected.pop((method, key), None)
        if fut is not None and not fut.done():
            fut.cancel()

    @property
    def alive(self) -> bool:
        return self.closed is None

    def send(self, method: str, *params: Any) -> asyncio.Future[Any]:
        """Queue a request without waiting; await the returned future for the answer."""
        if self.closed is not None:
            raise self.closed
        msgid = next(self.ids)
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        fut.method = method  # type: ignore[attr-defined]
        self.pending[msgid] = fut
        self.sent[method] += 1
        self.process.stdin.write(self.packer.pack([0, msgid, method, list(params)]))
        return fut

    async def drain(self) -> None:
        await self.process.stdin.drain()

    async def call(self, method: str, *params: Any) -> Any:
        fut = self.send(method, *params)
        await self.drain()
        return await fut

    def close(self) -> None:
        try:
            self.process.stdin.write_eof()
        except (asyncssh.Error, OSError):
            pass
        self.process.close()
        for task in (self.reader, self.noise_reader):
            if task:
                task.cancel()
