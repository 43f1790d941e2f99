"""The engine: one asyncio loop in its own thread owns every connection.

Front-ends (the pynvim plugin, the CLI) hand it requests with ``request()`` and get
answers through a callback; progress, output and events go out through ``report(kind,
payload)``.  Nothing here touches Neovim: the plugin turns reports into Lua calls.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import hashlib
import logging
import os
import threading
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Awaitable, Callable, Coroutine, Mapping, Protocol, TypeVar

import asyncssh

from . import __version__, library_warnings, ssh
from .config import ProjectConfig, RunnerCheck, Target, check_runner, find_config, load_config
from .errors import ConnectError, RemoteDevError
from .login import Challenge
from .rpc import AgentChannel

log = logging.getLogger("remote_dev")

Report = Callable[[str, dict], None]
# prompter(challenge payload, reply): shows the server's prompts to the person and calls
# reply(answers or None) later, from any thread.
Prompter = Callable[[dict, Callable[[Any], None]], None]
Action = Callable[..., Awaitable[Any]]
BACKOFF = (0.0, 0.5, 1.5)
T = TypeVar("T")


class RunView(Protocol):
    """What the engine and status need of a run (the runs feature defines RunRecord)."""
    id: str
    target: str
    state: str

    def summary(self) -> dict[str, Any]: ...


class FeatureState:
    """Per-object state of the features above the engine, one instance per class:
    ``obj.state(SyncState)`` makes it on first use.  The engine never looks inside."""

    def __init__(self) -> None:
        self._states: dict[type, Any] = {}

    def state(self, cls: type[T], factory: Callable[[], T] | None = None) -> T:
        obj = self._states.get(cls)
        if obj is None:
            obj = self._states[cls] = (factory or cls)()
        return obj

    def release_states(self) -> None:
        """When the engine closes, or drops a session whose target changed: each state
        that has a release() lets go of what it holds in this process (a kernel's client:
        its ZMQ sockets would reconnect to its ports for as long as the process lives,
        reaching whatever listens on them next)."""
        for obj in list(self._states.values()):
            release = getattr(obj, "release", None)
            if callable(release):
                try:
                    release()
                except Exception:  # noqa: BLE001 - one state's trouble never stops the rest
                    log.exception("releasing %s", type(obj).__name__)


def state_home() -> Path:
    base = os.environ.get("XDG_STATE_HOME") or os.path.expanduser("~/.local/state")
    return Path(base) / "remote-dev"


ENGINE_THREAD = "remote-dev-engine"


class _IntoOurLog(logging.Filter):
    """What asyncio and asyncssh log on the engine's thread (a write to a connection
    already reset, an exception nobody read) goes to remote-dev.log, never to the screen
    (a CLI's stderr, Neovim's messages); their records from other threads pass."""

    def filter(self, record: logging.LogRecord) -> bool:
        if threading.current_thread().name != ENGINE_THREAD:
            return True
        for handler in log.handlers:
            if getattr(handler, "_remote_dev", False) and record.levelno >= logging.INFO:
                handler.handle(record)
        return False


def setup_logging() -> Path:
    path = state_home() / "remote-dev.log"
    if not any(getattr(h, "_remote_dev", False) for h in log.handlers):
        path.parent.mkdir(parents=True, exist_ok=True)
        handler = logging.FileHandler(path)
        handler._remote_dev = True  # type: ignore[attr-defined]
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
        log.addHandler(handler)
        log.setLevel(logging.INFO)
    library_warnings.attach(log)
    for name in ("asyncio", "asyncssh"):
        lib = logging.getLogger(name)
        if not any(isinstance(f, _IntoOurLog) for f in lib.filters):
            lib.addFilter(_IntoOurLog())
    return path


def loop_error(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
    """The engine loop's exception handler: an error no one awaited (a task or future whose
    exception was never read) is logged with its traceback in remote-dev.log."""
    exc = context.get("exception")
    where = context.get("future") or context.get("task") or context.get("handle") or ""
    log.error("%s %s", context.get("message", "unhandled error in the engine loop"), where,
              exc_info=(type(exc), exc, exc.__traceback__) if isinstance(exc, BaseException) else None)


class TargetSession(FeatureState):
    """One SSH connection and one agent channel per target, reused by everything."""

    def __init__(self, project: "Project", target: Target) -> None:
        super().__init__()
        self.project = project
        self.target = target
        self.conn: asyncssh.SSHClientConnection | None = None
        self.agent: AgentChannel | None = None
        self.hello: dict[str, Any] = {}
        self.remote_root: str | None = None
        self.rtt_ms: float | None = None
        self.last_error: str | None = None
        self.lock = asyncio.Lock()
        self.on_reconnect: list[Callable[[], Coroutine[Any, Any, None]]] = []
        self.connected_once = False
        self.connected_since: float | None = None  # time.time() of the login now serving
        self.via: str | None = None   # how, when not a login of our own (an OpenSSH master)
        # The person cancelled a login prompt: reconnects in the background (output
        # followers, forwards) do not ask again until the person makes a request.
        self.login_declined = False
        # (remote folder, local folder) of the :RemoteEnv mirror (envmirror keeps them)
        self.library_roots: tuple[tuple[str, str], ...] = ()

    @property
    def connected(self) -> bool:
        # A closed connection whose agent channel has not yet read its end counts as lost
        # (a watcher looping on "alive" would otherwise never let that read happen).
        return self.agent is not None and self.agent.alive and not (self.conn is not None and self.conn.is_closed())

    async def ensure(self) -> AgentChannel:
        if self.connected:
            assert self.agent is not None
            return self.agent
        async with self.lock:
            if self.connected:
                assert self.agent is not None
                return self.agent
            why = ""
            if self.agent is not None and self.agent.closed is not None:
                why = f"{self.agent.closed.message}; logging in again"
            elif self.conn is not None and self.conn.is_closed():
                why = f"{self.target.host}: the connection was closed; logging in again"
            self.drop()
            last: ConnectError | None = None
            for delay in BACKOFF:
                if delay:
                    await asyncio.sleep(delay)
                try:
                    await self._connect(why)
                    break
                except ConnectError as e:
                    last = e
                    self.last_error = e.message
                    if not e.retry:
                        raise
            else:
                assert last is not None
                raise last
            self.last_error = None
            reconnect = self.connected_once
            self.connected_once = True
            if reconnect:
                for hook in list(self.on_reconnect):
                    asyncio.get_running_loop().create_task(hook())
            assert self.agent is not None
            return self.agent

    async def _connect(self, why: str = "") -> None:
        t = self.target
        self.conn = await ssh.connect(t, ask=self._ask if self.project.ask else None, why=why)
        try:
            self.agent = await AgentChannel.start(self.conn, t.host, t.python)
            self.hello = await self.agent.call("hello", __version__)
            self.remote_root = (await self.agent.call("stat_root", t.remote_root))["path"]
        except (asyncssh.Error, OSError) as e:
            self.drop()
            raise ConnectError(f"{t.host}: the remote agent failed to start: {e}", kind="agent", retry=True) from None
        except BaseException:
            self.drop()
            raise
        self.connected_since = time.time()
        self.via = self.conn.get_extra_info("remote_dev_via") if self.conn is not None else None
        log.info("connected to %s (agent %s, python %s)", t.host, self.hello.get("version"), self.hello.get("python"))

    async def _ask(self, challenge: Challenge) -> list[str] | None:
        if self.login_declined or self.project.ask is None:
            return None
        answers = await self.project.ask(challenge)
        self.login_declined = answers is None
        return answers

    def drop(self) -> None:
        self.connected_since = None
        if self.agent is not None:
            self.agent.close()
            self.agent = None
        if self.conn is not None:
            self.conn.close()
            self.conn = None

    async def call(self, method: str, *params: Any, retry: bool = True) -> Any:
        agent = await self.ensure()
        try:
            return await agent.call(method, *params)
        except ConnectError as e:
            if not (retry and e.retry):
                raise
        agent = await self.ensure()
        return await agent.call(method, *params)

    async def ping(self) -> float:
        agent = await self.ensure()
        t0 = time.perf_counter()
        await agent.call("ping")
        self.rtt_ms = (time.perf_counter() - t0) * 1000
        return self.rtt_ms


@dataclass
class Project(FeatureState):
    config: ProjectConfig
    mtime: float
    target_name: str
    sessions: dict[str, TargetSession] = field(default_factory=dict)
    last_push: dict[str, dict[str, Any]] = field(default_factory=dict)
    runs: dict[str, RunView] = field(default_factory=dict)   # by id: started or followed here
    ask: ssh.Ask | None = None   # the person's answers to login prompts (the front-end's)

    def __post_init__(self) -> None:
        FeatureState.__init__(self)

    @property
    def root(self) -> Path:
        return self.config.root

    @property
    def target(self) -> Target:
        return self.config.target(self.target_name)

    def state_dir(self) -> Path:
        digest = hashlib.sha1(str(self.root).encode()).hexdigest()[:12]
        return state_home() / "projects" / f"{self.root.name}-{digest}"

    def session(self, name: str | None = None) -> TargetSession:
        target = self.config.target(name or self.target_name)
        sess = self.sessions.get(target.name)
        if sess is None or sess.target != target:
            if sess is not None:
                sess.drop()
            sess = self.sessions[target.name] = TargetSession(self, target)
        return sess


class Engine(FeatureState):
    """The loop thread and the projects (and, as FeatureState, what features keep per
    engine: closed with it when they have a close()).  ``actions`` (name -> ``async def (engine, ctx,
    **args)``) and ``runners`` (the runner kinds, runners.RUNNERS: every target's runner is
    checked against them when a project's config is loaded) come from the front-end: the
    engine knows no action and no runner itself."""

    def __init__(self, report: Report | None = None, actions: dict[str, Action] | None = None,
                 prompter: Prompter | None = None, runners: Mapping[str, RunnerCheck] | None = None) -> None:
        super().__init__()
        self.report: Report = report or (lambda kind, payload: None)
        # The front-end's way to ask the person (Neovim's prompt, a terminal); None: nobody.
        self.prompter = prompter
        self.actions: dict[str, Action] = dict(actions or {})
        self.runners = dict(runners or {})
        self.loop = asyncio.new_event_loop()
        self.loop.set_exception_handler(loop_error)
        self.projects: dict[Path, Project] = {}
        self.log_path = setup_logging()
        self.started = threading.Event()
        self.thread = threading.Thread(target=self._run, name=ENGINE_THREAD, daemon=True)
        self.thread.start()
        self.started.wait()

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.call_soon(self.started.set)
        self.loop.run_forever()

    # -- entry points, callable from any thread
    def submit(self, coro: Coroutine[Any, Any, Any]) -> concurrent.futures.Future[Any]:
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def request(self, action: str, ctx: dict[str, Any], args: dict[str, Any],
                done: Callable[[str | None, Any], None] | None = None) -> concurrent.futures.Future[Any]:
        """Run an action; done(error_message, result) is called from the engine thread."""
        async def run() -> Any:
            for proj in self.projects.values():   # the person acts: a cancelled login may ask again
                for sess in proj.sessions.values():
                    sess.login_declined = False
            try:
                func = self.actions.get(action)
                if func is None:
                    raise RemoteDevError(f"unknown action {action!r}")
                result = await func(self, ctx or {}, **(args or {}))
            except RemoteDevError as e:
                log.info("%s: %s", action, e.message)
                if done:
                    done(e.message, None)
                return None
            except Exception as e:  # noqa: BLE001 - keep the traceback in the log, say it short
                log.error("%s failed:\n%s", action, traceback.format_exc())
                if done:
                    done(f"internal error in {action}: {type(e).__name__}: {e} (details in {self.log_path})", None)
                return None
            if done:
                done(None, result)
            return result
        return self.submit(run())

    def call_sync(self, action: str, ctx: dict[str, Any], args: dict[str, Any] | None = None,
                  timeout: float | None = None) -> Any:
        """For the CLI and tests: run an action and wait; raises RemoteDevError."""
        box: dict[str, Any] = {}

        def done(err: str | None, result: Any) -> None:
            box["err"], box["result"] = err, result
        self.request(action, ctx, args or {}, done).result(timeout)
        if box.get("err"):
            raise RemoteDevError(box["err"])
        return box.get("result")

    def close(self) -> None:
        async def shutdown() -> None:
            for proj in self.projects.values():
                for sess in proj.sessions.values():
                    sess.release_states()
                    sess.drop()
                proj.release_states()
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        try:
            self.submit(shutdown()).result(5)
        except Exception:  # noqa: BLE001
            pass
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.release_states()

    # -- projects (engine thread only)
    def project(self, ctx: dict[str, Any]) -> Project:
        start = ctx.get("file") or ctx.get("cwd") or os.getcwd()
        file = find_config(start)
        if file is None:
            raise RemoteDevError(f"no .remote-dev.toml in {start if os.path.isdir(start) else os.path.dirname(start)} "
                                 f"or any folder above it", kind="no-config")
        root = file.parent.resolve()
        mtime = file.stat().st_mtime
        proj = self.projects.get(root)
        if proj is None or proj.mtime != mtime:
            config = load_config(file)
            if self.runners:
                check_runner(config, self.runners)
            target_name = proj.target_name if proj and proj.target_name in config.targets else None
            if target_name is None:
                saved = Project(config, mtime, config.default_target).state_dir() / "target"
                name = saved.read_text().strip() if saved.exists() else ""
                target_name = name if name in config.targets else config.default_target
            new = Project(config, mtime, target_name, ask=self.ask if self.prompter else None)
            if proj is not None:
                for name, sess in proj.sessions.items():
                    if name in config.targets and config.targets[name] == sess.target:
                        new.sessions[name] = sess
                        sess.project = new
                    else:
                        sess.release_states()
                        sess.drop()
                new.last_push = proj.last_push
                new.runs = proj.runs
                new._states = proj._states
            self.projects[root] = proj = new
        return proj

    async def ask(self, challenge: Challenge) -> list[str] | None:
        """The person's answers to a login prompt, through the front-end's prompter (which
        calls back from any thread); None when cancelled.  Waits without blocking anyone."""
        assert self.prompter is not None
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[list[str] | None] = loop.create_future()

        def reply(answers: list[str] | None) -> None:
            def settle() -> None:
                if not fut.done():
                    fut.set_result([str(a) for a in answers] if isinstance(answers, (list, tuple)) else None)
            loop.call_soon_threadsafe(settle)
        try:
            self.prompter(challenge.payload(), reply)
        except Exception:  # noqa: BLE001 - a front-end that cannot ask: as if cancelled, traceback in the log
            log.error("asking for a login failed:\n%s", traceback.format_exc())
            return None
        return await fut

    def emit(self, name: str, data: dict[str, Any]) -> None:
        self.report("event", {"name": name, "data": data})

    def message(self, text: str, level: str = "info") -> None:
        self.report("message", {"text": text, "level": level})
