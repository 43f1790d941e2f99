""":RemoteKernel and :RemoteSend: a Jupyter kernel (ipykernel in the target's python) on
the remote, driven from the buffer.

The kernel is a service (services.py): started detached in remote_root, found again by
name after a restart of Neovim, its connection file in the service's folder on the remote.
It listens on the remote's 127.0.0.1; its five ports are reached through SSH forwards (which
keep their local ports across reconnects), and jupyter_client talks to it from here.

Here the kernel process: started (after the caller's push), found again, stopped,
interrupted, its ports forwarded.  Talking to it -- code sent, outputs, errors as quickfix
-- is the client's (kernel_client.py), opened anew after a reconnect.
"""

from __future__ import annotations

import asyncio
import posixpath
import textwrap
import time
from typing import Any, Awaitable, Callable

from . import services
from .agent.protocol import KERNEL_FILE, RUNNING, STOPPED, is_live, service_dir
from .engine import Engine, Project, TargetSession, log
from .errors import RemoteDevError
from .forwards import Forward, forwards_of
from .kernel_client import START_TIMEOUT, Execution, KernelClient
from .services import KERNEL, remote_name

PORTS = ("shell_port", "iopub_port", "stdin_port", "control_port", "hb_port")
CHECK_EVERY = 3.0         # seconds without an answer after which we look whether the kernel lives
BeforeStart = Callable[[], Awaitable[Any]]   # what a new kernel waits for (the caller's push)


def no_ipykernel(sess: TargetSession) -> RemoteDevError:
    t = sess.target
    return RemoteDevError(
        f"{t.host}: ipykernel is not installed for {t.python}: :RemoteKernel needs it; install it there with "
        f"`{t.python} -m pip install ipykernel` (or set targets.{t.name}.python to an interpreter that has it)",
        kind="no-ipykernel")


class Kernel:
    """The kernel process of one project's target, as this Neovim reaches it: its forwards
    and, while connected, a client (kernel_client.KernelClient)."""

    def __init__(self, engine: Engine, proj: Project, sess: TargetSession) -> None:
        self.engine = engine
        self.proj = proj
        self.sess = sess
        self.name = remote_name(sess, KERNEL)
        self.client: KernelClient | None = None
        self.forwards: list[Forward] = []
        self.cells: dict[int, tuple[str, int]] = {}   # execution count -> (local file, first line)
        self.lock = asyncio.Lock()
        self.alloc_job: str | None = None   # the Slurm allocation it runs in, as a job step

    def say(self, text: str) -> None:
        self.engine.report("kernel_output", {"target": self.sess.target.name, "root": str(self.proj.root),
                                             "lines": [f"[remote_dev] {text}"], "partial": "", "show": False})

    @property
    def connected(self) -> bool:
        return self.client is not None

    async def ensure(self, start: bool = True, before_start: BeforeStart | None = None) -> bool:
        """Connected to the kernel: the running one, else (with start) a new one, started
        after before_start (the caller's push: it imports the tree as it is).  True when
        it was found running."""
        async with self.lock:
            if self.client is not None and not self.client.reconnected:
                return True   # a kernel that died is noticed while code waits (execute)
            if self.client is not None:
                # after a reconnect the forwards are back on their ports: a new client
                # that is sure to receive (the old one may have lost its subscription)
                await self.sess.ensure()
                await self.reopen(f"the connection to {self.sess.target.host} dropped")
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

    async def connect(self, meta: dict[str, Any]) -> KernelClient:
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
        local = dict(info, ip="127.0.0.1", transport="tcp")
        for p, f in zip(PORTS, self.forwards):
            local[p] = f.local_port
        client = KernelClient(self.engine, self.proj, sess, local, self.cells)
        await client.open(self.failed)
        self.client = client
        services.note(self.engine, sess, KERNEL, "kernel", RUNNING, info.get("kernel_name") or "")
        return client

    async def reopen(self, why: str) -> None:
        assert self.client is not None
        old, self.client = self.client, None
        old.close(why)
        client = KernelClient(self.engine, self.proj, self.sess, old.info, self.cells)
        await client.open(self.failed)
        self.client = client

    def disconnect(self) -> None:
        """The client (its sockets) and the forwards closed; the kernel goes on."""
        if self.client is not None:
            self.client.close("the kernel went away")
            self.client = None
        for f in self.forwards:
            forwards_of(self.sess).close(f)
        self.forwards = []

    release = disconnect   # FeatureState.release_states: the kernel outlives this client

    async def stop(self, quiet: bool = False) -> bool:
        """Shut the kernel down; no process of it is left.  False when none was running."""
        async with self.lock:
            if self.client is not None:
                self.client.shutdown()
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
            self.client.interrupt()   # a job step: a signal would reach srun here, not the kernel on the node
        else:
            await self.sess.call("service_signal", self.name, 2)
        self.say("interrupt sent")

    async def execute(self, code: str, file: str | None, line: int,
                      before_start: BeforeStart | None = None) -> dict[str, Any]:
        """Run code; answers when the kernel is idle again: {count, status[, error]}."""
        await self.ensure(start=True, before_start=before_start)
        client = self.client
        assert client is not None
        ex = client.submit(code, file, line)
        try:
            while not ex.done.done():
                try:
                    await asyncio.wait_for(asyncio.shield(ex.done), CHECK_EVERY)
                except asyncio.TimeoutError:
                    if time.monotonic() - client.last_seen >= CHECK_EVERY and await self.lost(client, ex):
                        break
        finally:
            client.pending.pop(ex.msg_id, None)
        result = {"count": ex.count, "status": (ex.reply or {}).get("status", "?")}
        if ex.error is not None:
            result["error"] = f"{ex.error.get('ename')}: {ex.error.get('evalue')}"
        return result

    async def lost(self, client: KernelClient, ex: Execution) -> bool:
        """Nothing heard for a while: True when the code ran but its output is lost; raises
        when the connection or the kernel went away before it answered."""
        host = self.sess.target.host
        if client.reconnected:
            if ex.reply is not None:   # it ran; what it printed meanwhile is lost
                self.say(f"the connection to {host} dropped while In [{ex.count or '?'}] ran: some of its output "
                         f"is lost")
                return True
            raise RemoteDevError(f"the connection to {host} dropped while the code was sent or ran: its output is "
                                 f"lost (the kernel and its state are kept; :RemoteSend again)")
        info = await self.sess.call("service_info", self.name)
        if info is None or not is_live(info.get("state")):
            self.disconnect()
            code_txt = f" (exit {info.get('code')})" if info and info.get("code") is not None else ""
            tail = await services.service_log_tail(self.sess, self.name, 8)
            raise RemoteDevError(f"the kernel on {host} died{code_txt}" + (f":\n{tail}" if tail else "")) from None
        return False


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

