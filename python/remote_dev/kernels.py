""":RemoteKernel and :RemoteSend: a Jupyter kernel (ipykernel in the target's python) on
the remote, driven from the buffer.

The kernel is a service (services.py): started detached in remote_root, found again by
name after a restart of Neovim, its connection file in the service's folder on the remote.
It listens on the remote's 127.0.0.1; its five ports are reached through SSH forwards (which
keep their local ports across reconnects), and jupyter_client talks to it from here.

What the kernel prints goes to the ``remote-dev://kernel/<target>`` buffer (``kernel_output``
reports); rich outputs are saved as files under the project's state folder and named
there; an error's traceback becomes quickfix entries at local files (``kernel_error``):
IPython's frames are rewritten in Python's own format for tracebacks.py, and the frames of
sent code point at the lines of the file they were sent from.
"""

from __future__ import annotations

import asyncio
import base64
import json
import posixpath
import re
import textwrap
import time
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable

from . import runners, services, tracebacks
from .agent.protocol import KERNEL_FILE, RUNNING, STOPPED, is_live, service_dir
from .engine import Engine, Project, TargetSession, log
from .errors import RemoteDevError
from .forwards import Forward, forwards_of
from .services import KERNEL, remote_name
from .termtext import TerminalText, clean

PORTS = ("shell_port", "iopub_port", "stdin_port", "control_port", "hb_port")
START_TIMEOUT = 60.0
CHECK_EVERY = 3.0         # seconds without an answer after which we look whether the kernel lives
BeforeStart = Callable[[], Awaitable[Any]]   # what a new kernel waits for (the caller's push)
RICH = {"image/png": ".png", "image/jpeg": ".jpg", "image/svg+xml": ".svg", "text/html": ".html",
        "text/markdown": ".md", "text/latex": ".tex", "application/json": ".json",
        "application/pdf": ".pdf"}
BINARY = {"image/png", "image/jpeg", "application/pdf"}


def no_ipykernel(sess: TargetSession) -> RemoteDevError:
    t = sess.target
    return RemoteDevError(
        f"{t.host}: ipykernel is not installed for {t.python}: :RemoteKernel needs it; install it there with "
        f"`{t.python} -m pip install ipykernel` (or set targets.{t.name}.python to an interpreter that has it)",
        kind="no-ipykernel")


# --------------------------------------------------------------------------- tracebacks

_CELL = re.compile(r"^\s*Cell In\[(?P<count>\d+)\], line (?P<line>\d+)(?:, in (?P<func>.+))?$")
_FILE = re.compile(r"^\s*File (?P<path>.+?):(?P<line>\d+)(?:, in (?P<func>.+))?$")
_ARROW = re.compile(r"^-*>\s*(?P<line>\d+)\s?(?P<source>.*)$")
# IPython 7: "<ipython-input-3-abc> in <module>" / "~/x.py in f(a)", the line in the arrow
_OLD = re.compile(r"^(?P<path><ipython-input-(?P<count>\d+)-\w+>|\S.*?\.py) in (?P<func>\S.*)$")


def _func(text: str | None) -> str:
    if not text:
        return "<module>"
    return text.split("(", 1)[0].strip() or "<module>"


def python_traceback(chunks: list[str], ename: str, evalue: str, home: str,
                     cells: dict[int, tuple[str, int]]) -> str:
    """IPython's formatted traceback (an error message's ``traceback``) in Python's format.
    Paths under ``~`` get the remote home; frames of sent code (``Cell In[N]``) get the
    local file and line their code came from (cells: execution count -> (file, first
    line)), else ``<cell N>``."""
    lines = clean("\n".join(chunks)).splitlines()
    frames: list[list[str]] = []
    syntax: list[str] | None = None

    def where(count: int | None, path: str | None, line: int) -> tuple[str, int]:
        if count is not None:
            if count in cells:
                file, first = cells[count]
                return file, first + line - 1
            return f"<cell {count}>", line
        assert path is not None
        if path.startswith("~/") or path == "~":
            path = home.rstrip("/") + path[1:]
        return path, line

    i = 0
    while i < len(lines):
        ln = lines[i]
        m = _CELL.match(ln) or _FILE.match(ln)
        if m:
            count = int(m.group("count")) if "count" in m.groupdict() else None
            path, line = where(count, m.groupdict().get("path"), int(m.group("line")))
            if m.group("func") is None and ename in ("SyntaxError", "IndentationError", "TabError"):
                syntax = [f'  File "{path}", line {line}'] + [x for x in lines[i + 1:] if not x.startswith(ename)]
                break
            source = ""
            j = i + 1
            while j < len(lines) and not (_CELL.match(lines[j]) or _FILE.match(lines[j])):
                a = _ARROW.match(lines[j])
                if a:
                    source = a.group("source").strip()
                j += 1
            frames.append([f'  File "{path}", line {line}, in {_func(m.group("func"))}'] +
                          ([f"    {source}"] if source else []))
            i = j
            continue
        m = _OLD.match(ln)
        if m:
            count = int(m.group("count")) if m.group("count") else None
            j, arrow = i + 1, None
            while j < len(lines) and not _OLD.match(lines[j]):
                a = _ARROW.match(lines[j])
                if a:
                    arrow = a
                j += 1
            if arrow is not None:
                path, line = where(count, None if count is not None else m.group("path"), int(arrow.group("line")))
                frames.append([f'  File "{path}", line {line}, in {_func(m.group("func"))}',
                               f"    {arrow.group('source').strip()}"])
            i = j
            continue
        i += 1
    message = f"{ename}: {evalue}" if evalue else ename
    if syntax is not None:
        return "\n".join(syntax + [message]) + "\n"
    out = ["Traceback (most recent call last):"] + [x for f in frames for x in f] + [message]
    return "\n".join(out) + "\n"


# --------------------------------------------------------------------------- executions


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


class Kernel:
    """The kernel of one project's target, as this Neovim reaches it."""

    def __init__(self, engine: Engine, proj: Project, sess: TargetSession) -> None:
        self.engine = engine
        self.proj = proj
        self.sess = sess
        self.name = remote_name(sess, KERNEL)
        self.client: Any = None
        self.info: dict[str, Any] = {}
        self.conn_seen: Any = None
        self.forwards: list[Forward] = []
        self.readers: list[asyncio.Task[None]] = []
        self.pending: dict[str, Execution] = {}
        self.cells: dict[int, tuple[str, int]] = {}
        self.lock = asyncio.Lock()
        self.outputs = 0
        self.last_seen = 0.0
        self.alloc_job: str | None = None   # the Slurm allocation it runs in, as a job step

    # -- reports
    def out(self, lines: list[str], partial: str = "", show: bool = False) -> None:
        self.engine.report("kernel_output", {"target": self.sess.target.name, "root": str(self.proj.root),
                                             "lines": lines, "partial": partial, "show": show})

    def say(self, text: str) -> None:
        self.out([f"[remote_dev] {text}"])

    # -- lifecycle
    @property
    def connected(self) -> bool:
        return self.client is not None

    async def ensure(self, start: bool = True, before_start: BeforeStart | None = None) -> bool:
        """Connected to the kernel: the running one, else (with start) a new one, after
        before_start (the caller's push: it imports the tree as it is).  True when it was
        found running."""
        async with self.lock:
            if self.client is not None and not self.reconnected:
                return True   # a kernel that died is noticed while code waits (execute)
            if self.client is not None:
                # after a reconnect the forwards are back on their ports: a new client
                # that is sure to receive (the old one may have lost its subscription)
                await self.sess.ensure()
                self.close_client(f"the connection to {self.sess.target.host} dropped")
                await self.open_client()
                return True
            info = await self.sess.call("service_info", self.name)
            if info is not None and is_live(info.get("state")):
                await self.connect(info.get("meta") or {})
                self.say(f"connected to the running kernel on {self.sess.target.host} (its state is kept)")
                return True
            if not start:
                raise RemoteDevError(f"no kernel running on {self.sess.target.name} (:RemoteKernel start)")
            await self.start(before_start)
            return False

    async def start(self, before_start: BeforeStart | None = None) -> None:
        sess, t = self.sess, self.sess.target
        mods = await services.python_modules(sess, ["ipykernel"])
        if not mods["modules"]["ipykernel"]:
            raise no_ipykernel(sess)
        if before_start is not None:
            await before_start()
        conn_file = posixpath.join(service_dir(sess.hello["cache_dir"], self.name), KERNEL_FILE)
        launcher = await services.launcher_for(sess)
        argv = services.python_argv(t.python, ["-m", "ipykernel_launcher", "-f", conn_file, f"--ip={launcher.listen}"])
        launch = launcher.launch(sess, argv, self.name)
        spec = {"name": self.name, "root": sess.remote_root or t.remote_root, "argv": launch.argv,
                "env": {**t.env, "PYTHONUNBUFFERED": "1", **launch.env},
                "meta": {"kind": KERNEL, "target": t.name, "local_root": str(self.proj.root),
                         "python": mods.get("python") or t.python, "host": launch.dest_host, **launch.meta}}
        t0 = time.perf_counter()
        info = await sess.call("service_start", spec)
        if not is_live(info.get("state")):
            raise await self.failed("the kernel did not start")
        await self.connect(spec["meta"])
        where = f" {launcher.where()}" if launcher.where() else ""
        self.say(f"kernel started on {t.host} in {spec['root']}{where} ({mods.get('python')}, "
                 f"{(time.perf_counter() - t0):.1f} s)")
        log.info("kernel %s started", self.name)

    async def failed(self, what: str) -> RemoteDevError:
        tail = await services.service_log_tail(self.sess, self.name)
        if "No module named ipykernel" in tail:
            return no_ipykernel(self.sess)
        return RemoteDevError(f"{self.sess.target.host}: {what}" + (f":\n{tail}" if tail else ""))

    async def connect(self, meta: dict[str, Any]) -> None:
        """Forward the kernel's ports (on the host its meta names: a Slurm node for a
        kernel in an allocation) and open a client on them."""
        sess = self.sess
        info = await sess.call("service_file", self.name, KERNEL_FILE, START_TIMEOUT)
        if info is None:
            raise await self.failed("the kernel ended before it wrote its connection file")
        fwd = forwards_of(sess)
        host = meta.get("host") or "127.0.0.1"
        self.alloc_job = meta.get("alloc")
        self.forwards = [await fwd.add(host, int(info[p]), name=f"kernel {p}") for p in PORTS]
        self.info = dict(info, ip="127.0.0.1", transport="tcp")
        for p, f in zip(PORTS, self.forwards):
            self.info[p] = f.local_port
        await self.open_client()
        services.note(self.engine, sess, KERNEL, "kernel", RUNNING, info.get("kernel_name") or "")

    async def open_client(self) -> None:
        """A jupyter_client on the forwarded ports, ready (its iopub receives), and the
        readers of its replies and outputs."""
        from jupyter_client.asynchronous import AsyncKernelClient

        client = AsyncKernelClient()
        client.load_connection_info(self.info)
        client.start_channels()
        try:
            await asyncio.wait_for(client.wait_for_ready(timeout=START_TIMEOUT), START_TIMEOUT + 5)
        except (RuntimeError, asyncio.TimeoutError) as e:
            client.stop_channels()
            raise await self.failed(f"the kernel does not answer ({e})") from None
        self.client = client
        self.conn_seen = self.sess.conn
        self.last_seen = time.monotonic()
        loop = asyncio.get_running_loop()
        self.readers = [loop.create_task(self.read(client.get_iopub_msg, self.on_iopub)),
                        loop.create_task(self.read(client.get_shell_msg, self.on_shell))]

    def close_client(self, why: str) -> None:
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

    def disconnect(self) -> None:
        self.close_client("the kernel went away")
        for f in self.forwards:
            forwards_of(self.sess).close(f)
        self.forwards = []

    async def stop(self, quiet: bool = False) -> bool:
        """Shut the kernel down; no process of it is left.  False when none was running."""
        async with self.lock:
            if self.client is not None:
                try:
                    self.client.shutdown()
                except Exception:  # noqa: BLE001
                    pass
            self.disconnect()
            info = await self.sess.call("service_info", self.name)
            live = info is not None and is_live(info.get("state"))
            if live:
                deadline = time.monotonic() + 2
                while time.monotonic() < deadline:
                    await asyncio.sleep(0.1)
                    info = await self.sess.call("service_info", self.name)
                    if info is None or not is_live(info.get("state")):
                        break
                await self.sess.call("service_stop", self.name, self.proj.config.run.stop_grace)
            services.note(self.engine, self.sess, KERNEL, "kernel", None)
            self.cells.clear()
            if not quiet:
                self.say("kernel stopped" if live else "no kernel was running")
            return live

    async def interrupt(self) -> None:
        if self.alloc_job and self.client is not None:
            # a job step: the signal would reach srun here, not the kernel on the node
            msg = self.client.session.msg("interrupt_request", content={})
            self.client.control_channel.send(msg)
        else:
            await self.sess.call("service_signal", self.name, 2)
        self.say("interrupt sent")

    # -- messages
    async def read(self, get: Callable[..., Any], handle: Callable[[dict[str, Any]], None]) -> None:
        while True:
            msg = await get()
            self.last_seen = time.monotonic()
            try:
                handle(msg)
            except Exception:  # noqa: BLE001 - one bad message never stops the reader
                log.exception("kernel message %s", msg.get("msg_type"))

    def on_shell(self, msg: dict[str, Any]) -> None:
        ex = self.pending.get(msg.get("parent_header", {}).get("msg_id", ""))
        if ex is not None and msg["msg_type"] == "execute_reply":
            ex.reply = msg["content"]
            ex.check_done()

    def on_iopub(self, msg: dict[str, Any]) -> None:
        kind, content = msg["msg_type"], msg["content"]
        ex = self.pending.get(msg.get("parent_header", {}).get("msg_id", ""))
        if kind == "status":
            if ex is not None and content.get("execution_state") == "idle":
                self.flush(ex)
                ex.idle = True
                ex.check_done()
        elif kind == "execute_input":
            count = content.get("execution_count")
            if ex is not None:
                ex.count = count
                if ex.file:
                    self.cells[count] = (ex.file, ex.line)
            first = content.get("code", "").strip().splitlines() or [""]
            more = " …" if len(first) > 1 else ""
            self.out([f"In [{count}]: {first[0]}{more}"], show=True)
        elif kind == "stream":
            text = ex.text if ex is not None else TerminalText()
            lines = text.feed(content.get("text", "").encode())
            self.out(lines, text.current())
        elif kind in ("execute_result", "display_data", "update_display_data"):
            self.rich(content, content.get("execution_count") if kind == "execute_result" else None, ex)
        elif kind == "error":
            self.on_error(content, ex)

    def flush(self, ex: Execution) -> None:
        rest = ex.text.feed(b"", final=True)
        if rest:
            self.out(rest)

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
                path = self.save(mime, ext, data[mime], ex)
                lines.append(f"[{mime}: {path}]")
        if not lines:
            lines.append(f"[output of type {', '.join(sorted(data)) or '?'} not shown]")
        self.out(lines)

    def save(self, mime: str, ext: str, value: Any, ex: Execution | None) -> str:
        folder = self.proj.state_dir() / "kernel" / self.sess.target.name
        folder.mkdir(parents=True, exist_ok=True)
        self.outputs += 1
        count = ex.count if ex is not None and ex.count is not None else 0
        path = folder / f"out-{count}-{self.outputs}{ext}"
        if mime in BINARY:
            payload = base64.b64decode(value if isinstance(value, str) else "".join(value))
        elif mime == "application/json" or not isinstance(value, (str, list)):
            payload = json.dumps(value, indent=1).encode()
        else:
            payload = (value if isinstance(value, str) else "".join(value)).encode()
        tmp = path.with_suffix(ext + ".tmp")
        tmp.write_bytes(payload)
        tmp.replace(path)
        return str(path)

    def on_error(self, content: dict[str, Any], ex: Execution | None) -> None:
        chunks = content.get("traceback") or []
        ename, evalue = content.get("ename", "Error"), content.get("evalue", "")
        self.out(clean("\n".join(chunks)).splitlines() or [f"{ename}: {evalue}"], show=True)
        if ex is not None:
            ex.error = content
        text = python_traceback(chunks, ename, evalue, self.sess.hello.get("home", "~"), self.cells)
        local = {f for f, _ in self.cells.values()}
        mapping = runners.path_mapping(self.sess)
        items = tracebacks.parse(text, lambda p: p if p in local else mapping.to_local(p))
        count = ex.count if ex is not None else None
        self.engine.report("kernel_error", {"target": self.sess.target.name, "root": str(self.proj.root),
                                            "title": f"In [{count if count is not None else '?'}]: {ename}",
                                            "quickfix": items})

    # -- sending code
    async def execute(self, code: str, file: str | None, line: int,
                      before_start: BeforeStart | None = None) -> dict[str, Any]:
        await self.ensure(start=True, before_start=before_start)
        client = self.client
        assert client is not None
        msg_id = client.execute(code, store_history=True, allow_stdin=False)
        ex = Execution(msg_id, file, line, code)
        self.pending[msg_id] = ex
        try:
            while not ex.done.done():
                try:
                    await asyncio.wait_for(asyncio.shield(ex.done), CHECK_EVERY)
                except asyncio.TimeoutError:
                    if time.monotonic() - self.last_seen < CHECK_EVERY:
                        continue
                    if self.reconnected:
                        if ex.reply is not None:   # it ran; what it printed meanwhile is lost
                            self.say(f"the connection to {self.sess.target.host} dropped while In [{ex.count or '?'}] "
                                     f"ran: some of its output is lost")
                            break
                        raise RemoteDevError(f"the connection to {self.sess.target.host} dropped while the code was "
                                             f"sent or ran: its output is lost (the kernel and its state are kept; "
                                             f":RemoteSend again)")
                    info = await self.sess.call("service_info", self.name)
                    if info is None or not is_live(info.get("state")):
                        self.disconnect()
                        code_txt = f" (exit {info.get('code')})" if info and info.get("code") is not None else ""
                        tail = await services.service_log_tail(self.sess, self.name, 8)
                        raise RemoteDevError(f"the kernel on {self.sess.target.host} died{code_txt}"
                                             + (f":\n{tail}" if tail else "")) from None
        finally:
            self.pending.pop(msg_id, None)
        status = (ex.reply or {}).get("status", "?")
        result = {"count": ex.count, "status": status}
        if ex.error is not None:
            result["error"] = f"{ex.error.get('ename')}: {ex.error.get('evalue')}"
        return result


def kernel_of(engine: Engine, proj: Project) -> Kernel:
    sess = proj.session()
    kernel = sess.state(Kernel, lambda: Kernel(engine, proj, sess))
    kernel.proj = proj   # the project object is renewed when its config changes
    return kernel


def alloc_ended(engine: Engine, proj: Project, job: str) -> None:
    """Allocation `job` ends: a kernel that was its step ends with it (alloc.ON_END)."""
    kernel = kernel_of(engine, proj)
    if kernel.connected and kernel.alloc_job == job:
        kernel.disconnect()
        kernel.say(f"the kernel ends with allocation job {job}")
        services.note(engine, kernel.sess, KERNEL, "kernel", None)


async def kernel_command(engine: Engine, proj: Project, what: str,
                         before_start: BeforeStart | None = None) -> dict[str, Any]:
    """:RemoteKernel start|stop|restart|interrupt; before_start: what a new kernel waits for."""
    kernel = kernel_of(engine, proj)
    t = kernel.sess.target
    if what == "start":
        found = await kernel.ensure(start=True, before_start=before_start)
        engine.message(f"kernel on {t.name}: " + ("running (found again)" if found else "started"))
        return {"state": RUNNING, "found": found}
    if what == "stop":
        live = await kernel.stop()
        engine.message(f"kernel on {t.name} stopped" if live else f"no kernel was running on {t.name}")
        return {"state": STOPPED, "was_running": live}
    if what == "restart":
        await kernel.stop(quiet=True)
        await kernel.ensure(start=True, before_start=before_start)
        kernel.say("kernel restarted: its state is new")
        engine.message(f"kernel on {t.name} restarted")
        return {"state": RUNNING, "found": False}
    if what == "interrupt":
        await kernel.ensure(start=False)
        await kernel.interrupt()
        return {"state": RUNNING}
    raise RemoteDevError(f":RemoteKernel {what}: unknown; use start, stop, restart or interrupt")


async def send(engine: Engine, proj: Project, code: str, file: str | None, line: int,
               before_start: BeforeStart | None = None) -> dict[str, Any]:
    """Run code (from file's line `line` on) in the kernel, starting one (after
    before_start) when none runs."""
    code = textwrap.dedent(code)
    if not code.strip():
        raise RemoteDevError("nothing to send: the range is empty")
    return await kernel_of(engine, proj).execute(code, file, line, before_start)

