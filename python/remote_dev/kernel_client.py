"""The client side of a Jupyter kernel (kernels.py starts, finds and stops the process): a
jupyter_client on the forwarded ports, the code sent (``Execution``), and what comes back,
dispatched by message type to ``on_<msg_type>`` as nvim-dap's session dispatches
``event_<name>``.  What the kernel prints goes to the ``remote-dev://kernel/<target>``
buffer (``kernel_output`` reports), rich outputs are saved as files under the project's
state folder, an error's traceback becomes quickfix entries at local files
(``kernel_error``; the format is tracebacks.ipython_traceback's).
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Awaitable, Callable

from . import runners, tracebacks
from .engine import Engine, Project, TargetSession, log
from .errors import RemoteDevError
from .termtext import TerminalText, clean

START_TIMEOUT = 60.0
RICH = {"image/png": ".png", "image/jpeg": ".jpg", "image/svg+xml": ".svg", "text/html": ".html",
        "text/markdown": ".md", "text/latex": ".tex", "application/json": ".json",
        "application/pdf": ".pdf"}
BINARY = {"image/png", "image/jpeg", "application/pdf"}


@dataclass
class Execution:
    msg_id: str
    file: str | None             # the local file the code came from
    line: int                    # its first line there
    code: str
    count: int | None = None
    idle: bool = False
    reply: dict[str, Any] | None = None
    error: dict[str, Any] | None = None
    text: TerminalText = field(default_factory=TerminalText)
    done: asyncio.Future[None] = field(default_factory=lambda: asyncio.get_running_loop().create_future())

    def check_done(self) -> None:
        if self.idle and self.reply is not None and not self.done.done():
            self.done.set_result(None)


def save_output(folder: Path, name: str, mime: str, value: Any) -> str:
    """A rich output (base64 for binary types, JSON, text) written atomically as folder/name."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    if mime in BINARY:
        payload = base64.b64decode(value if isinstance(value, str) else "".join(value))
    elif mime == "application/json" or not isinstance(value, (str, list)):
        payload = json.dumps(value, indent=1).encode()
    else:
        payload = (value if isinstance(value, str) else "".join(value)).encode()
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(payload)
    tmp.replace(path)
    return str(path)


class KernelClient:
    """One jupyter_client on a kernel's forwarded ports (``info``: its connection file with
    the local ports), its readers, and the executions waiting for their answers.  cells
    (execution count -> (local file, first line)) outlives the client: the kernel keeps it."""

    def __init__(self, engine: Engine, proj: Project, sess: TargetSession, info: dict[str, Any],
                 cells: dict[int, tuple[str, int]]) -> None:
        self.engine = engine
        self.proj = proj
        self.sess = sess
        self.info = info
        self.cells = cells
        self.client: Any = None
        self.conn_seen: Any = None
        self.readers: list[asyncio.Task[None]] = []
        self.pending: dict[str, Execution] = {}
        self.outputs = 0
        self.last_seen = 0.0

    def out(self, lines: list[str], partial: str = "", show: bool = False) -> None:
        self.engine.report("kernel_output", {"target": self.sess.target.name, "root": str(self.proj.root),
                                             "lines": lines, "partial": partial, "show": show})

    async def open(self, failed: Callable[[str], Awaitable[RemoteDevError]]) -> None:
        """Ready (its iopub receives), with readers of replies and outputs; failed(what)
        names why the kernel does not answer."""
        from jupyter_client.asynchronous import AsyncKernelClient

        client = AsyncKernelClient()
        client.load_connection_info(self.info)
        client.start_channels()
        try:
            await asyncio.wait_for(client.wait_for_ready(timeout=START_TIMEOUT), START_TIMEOUT + 5)
        except (RuntimeError, asyncio.TimeoutError) as e:
            client.stop_channels()
            raise await failed(f"the kernel does not answer ({e})") from None
        self.client = client
        self.conn_seen = self.sess.conn
        self.last_seen = time.monotonic()
        loop = asyncio.get_running_loop()
        self.readers = [loop.create_task(self.read(client.get_iopub_msg)),
                        loop.create_task(self.read(client.get_shell_msg))]

    def close(self, why: str) -> None:
        for task in self.readers:
            task.cancel()
        self.readers = []
        if self.client is not None:
            try:
                self.client.stop_channels()
            except Exception:  # noqa: BLE001 - closing sockets of a gone kernel
                pass
            self.client = None
        for ex in self.pending.values():
            if not ex.done.done():
                ex.done.set_exception(RemoteDevError(why))
        self.pending.clear()

    @property
    def reconnected(self) -> bool:
        """The SSH connection dropped (or was made anew) since the client was opened:
        messages in flight then are lost, a subscription may be late."""
        return self.conn_seen is not self.sess.conn or not self.sess.connected

    def submit(self, code: str, file: str | None, line: int) -> Execution:
        msg_id = self.client.execute(code, store_history=True, allow_stdin=False)
        ex = self.pending[msg_id] = Execution(msg_id, file, line, code)
        return ex

    def shutdown(self) -> None:
        if self.client is not None:
            try:
                self.client.shutdown()
            except Exception:  # noqa: BLE001
                pass

    def interrupt(self) -> None:
        """An interrupt_request on the control channel (a kernel the agent cannot signal)."""
        self.client.control_channel.send(self.client.session.msg("interrupt_request", content={}))

    # -- messages: on_<msg_type>(content, the execution it answers or None)
    async def read(self, get: Callable[..., Any]) -> None:
        while True:
            msg = await get()
            self.last_seen = time.monotonic()
            try:
                self.dispatch(msg)
            except Exception:  # noqa: BLE001 - one bad message never stops the reader
                log.exception("kernel message %s", msg.get("msg_type"))

    def dispatch(self, msg: dict[str, Any]) -> None:
        handler = getattr(self, "on_" + msg.get("msg_type", ""), None)
        if handler is not None:
            handler(msg["content"], self.pending.get(msg.get("parent_header", {}).get("msg_id", "")))

    def on_execute_reply(self, content: dict[str, Any], ex: Execution | None) -> None:
        if ex is not None:
            ex.reply = content
            ex.check_done()

    def on_status(self, content: dict[str, Any], ex: Execution | None) -> None:
        if ex is not None and content.get("execution_state") == "idle":
            rest = ex.text.feed(b"", final=True)
            if rest:
                self.out(rest)
            ex.idle = True
            ex.check_done()

    def on_execute_input(self, content: dict[str, Any], ex: Execution | None) -> None:
        count = content.get("execution_count")
        if ex is not None:
            ex.count = count
            if ex.file:
                self.cells[count] = (ex.file, ex.line)
        first = content.get("code", "").strip().splitlines() or [""]
        more = " …" if len(first) > 1 else ""
        self.out([f"In [{count}]: {first[0]}{more}"], show=True)

    def on_stream(self, content: dict[str, Any], ex: Execution | None) -> None:
        text = ex.text if ex is not None else TerminalText()
        lines = text.feed(content.get("text", "").encode())
        self.out(lines, text.current())

    def on_execute_result(self, content: dict[str, Any], ex: Execution | None) -> None:
        self.rich(content, content.get("execution_count"), ex)

    def on_display_data(self, content: dict[str, Any], ex: Execution | None) -> None:
        self.rich(content, None, ex)

    on_update_display_data = on_display_data

    def rich(self, content: dict[str, Any], count: int | None, ex: Execution | None) -> None:
        data = content.get("data") or {}
        lines: list[str] = []
        text = data.get("text/plain")
        if text is not None:
            text_lines = clean(str(text)).splitlines() or [""]
            if count is not None:
                text_lines[0] = f"Out[{count}]: {text_lines[0]}"
            lines += text_lines
        for mime, ext in RICH.items():
            if mime in data:
                self.outputs += 1
                n = ex.count if ex is not None and ex.count is not None else 0
                folder = self.proj.state_dir() / "kernel" / self.sess.target.name
                lines.append(f"[{mime}: {save_output(folder, f'out-{n}-{self.outputs}{ext}', mime, data[mime])}]")
        if not lines:
            lines.append(f"[output of type {', '.join(sorted(data)) or '?'} not shown]")
        self.out(lines)

    def on_error(self, content: dict[str, Any], ex: Execution | None) -> None:
        chunks = content.get("traceback") or []
        ename, evalue = content.get("ename", "Error"), content.get("evalue", "")
        self.out(clean("\n".join(chunks)).splitlines() or [f"{ename}: {evalue}"], show=True)
        if ex is not None:
            ex.error = content
        text = tracebacks.ipython_traceback(chunks, ename, evalue, self.sess.hello.get("home", "~"), self.cells)
        local = {f for f, _ in self.cells.values()}
        mapping = runners.path_mapping(self.sess)
        items = tracebacks.parse(text, lambda p: p if p in local else mapping.to_local(p))
        count = ex.count if ex is not None else None
        self.engine.report("kernel_error", {"target": self.sess.target.name, "root": str(self.proj.root),
                                            "title": f"In [{count if count is not None else '?'}]: {ename}",
                                            "quickfix": items})
