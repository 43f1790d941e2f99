"""The verbs front-ends call: ``async def name(engine, ctx, **args)``, registered in ACTIONS.

ctx carries where the request comes from: {"file": current buffer, "cwd": cwd}; from one of
the plugin's own buffers (a run or log buffer) {"cwd": its project root, "target": its
target}, the target naming where a run not known here is.  Each
handler resolves the project and hands the work to a feature module (sync, runs, debug,
forwards, health); the front-ends (rplugin, cli) give ACTIONS to the engine.
"""

from __future__ import annotations

from typing import Any

from . import alloc as alloc_mod, debug, envmirror, forwards, health as health_mod, kernels, \
    notebook as notebook_mod, runs as runs_mod, services, shells, sync, wiring  # noqa: F401 - wiring: registrations between features
from .engine import Action, Engine
from .errors import RemoteDevError
from .status import publish_status

ACTIONS: dict[str, Action] = {}


def action(name: str):  # noqa: ANN201 - a decorator
    def register(func: Action) -> Action:
        ACTIONS[name] = func
        return func
    return register


@action("status")
async def status(engine: Engine, ctx: dict[str, Any], refresh: bool = True) -> dict[str, Any]:
    """Connect if needed, measure the round trip, and describe the target."""
    proj = engine.project(ctx)
    sess = proj.session()
    if refresh:
        try:
            await sess.ping()
            await services.list_all(sess)
            if sess.target.runner == "slurm":
                await alloc_mod.refresh(sess, engine)
        except RemoteDevError as e:
            sess.last_error = e.message
            publish_status(engine, proj)
            raise
    return publish_status(engine, proj)


@action("target")
async def target(engine: Engine, ctx: dict[str, Any], name: str | None = None) -> dict[str, Any]:
    """Show the active target, or switch to another one (remembered per project)."""
    proj = engine.project(ctx)
    if name:
        proj.config.target(name)  # validates
        proj.target_name = name
        state = proj.state_dir()
        state.mkdir(parents=True, exist_ok=True)
        tmp = state / "target.tmp"
        tmp.write_text(name + "\n")
        tmp.replace(state / "target")
    return publish_status(engine, proj)


@action("health")
async def health(engine: Engine, ctx: dict[str, Any]) -> dict[str, Any]:
    return await health_mod.health_report(engine, ctx)


# -- sync

@action("push")
async def push(engine: Engine, ctx: dict[str, Any], paths: list[str] | None = None, force: bool = False,
               dry_run: bool = False) -> dict[str, Any]:
    proj = engine.project(ctx)
    return await sync.do_push(engine, proj, sync.rel_paths(proj, paths, ctx.get("cwd")), force, dry_run)


@action("save")
async def save(engine: Engine, ctx: dict[str, Any]) -> dict[str, Any] | None:
    return await sync.push_on_save(engine, engine.project(ctx), ctx.get("file") or "")


@action("pull")
async def pull(engine: Engine, ctx: dict[str, Any], paths: list[str] | None = None, force: bool = False,
               modified: list[str] | None = None) -> dict[str, Any]:
    proj = engine.project(ctx)
    return await sync.do_pull(engine, proj, sync.rel_paths(proj, paths, ctx.get("cwd")), force, set(modified or []))


# -- runs

@action("run")
async def run(engine: Engine, ctx: dict[str, Any], cmd: str | None = None) -> dict[str, Any]:
    """Push, then start the command (default: run.command) on the target's runner; when
    the push has nothing to send, its remote check and the start go in one request."""
    proj = engine.project(ctx)
    sess = proj.session()
    command = runs_mod.expand_command(proj, sess, cmd or None, ctx.get("file"))
    prepared = await runs_mod.prepare_run(proj, sess, command)
    await sync.do_push(engine, proj, None, quiet=True, then=prepared.request)
    rec = await runs_mod.start_run(engine, proj, sess, command, prepared=prepared)
    return rec.summary()


@action("stop")
async def stop(engine: Engine, ctx: dict[str, Any], id: str | None = None) -> dict[str, Any]:  # noqa: A002
    return await runs_mod.stop_run(engine, engine.project(ctx), id, ctx.get("target"))


@action("stop_all")
async def stop_all(engine: Engine, ctx: dict[str, Any]) -> int:
    return await runs_mod.stop_all(engine)


@action("run_delete")
async def run_delete(engine: Engine, ctx: dict[str, Any], id: str) -> dict[str, Any]:  # noqa: A002
    return await runs_mod.delete_run(engine, engine.project(ctx), id)


@action("runs")
async def runs(engine: Engine, ctx: dict[str, Any]) -> list[dict[str, Any]]:
    return await runs_mod.list_runs(engine.project(ctx))


@action("attach")
async def attach(engine: Engine, ctx: dict[str, Any], id: str) -> dict[str, Any]:  # noqa: A002
    return await runs_mod.attach_run(engine, engine.project(ctx), id)


@action("log")
async def log(engine: Engine, ctx: dict[str, Any], id: str | None = None) -> dict[str, Any]:  # noqa: A002
    return await runs_mod.fetch_log(engine.project(ctx), id, ctx.get("target"))


@action("quickfix")
async def quickfix(engine: Engine, ctx: dict[str, Any], id: str | None = None) -> dict[str, Any]:  # noqa: A002
    return runs_mod.quickfix_of(engine.project(ctx), id)


# -- debugging and forwards

@action("debug")
async def debug_run(engine: Engine, ctx: dict[str, Any], cmd: str | None = None,
                    terminate_stops_run: bool = True, stop_on_entry: str = "") -> dict[str, Any]:
    """Push, then run under debugpy; nvim-dap attaches through a local listener per process."""
    proj = engine.project(ctx)
    sess = proj.session()
    command = runs_mod.expand_command(proj, sess, cmd or None, ctx.get("file"))
    await sync.do_push(engine, proj, None, quiet=True)
    return await debug.start_debug(engine, proj, sess, command, terminate_stops_run, stop_on_entry=stop_on_entry)


@action("debug_attach")
async def debug_attach(engine: Engine, ctx: dict[str, Any], id: str | None = None,  # noqa: A002
                       cmd: str | None = None, terminate_stops_run: bool = True, endpoint: str | None = None,
                       stop_on_entry: str = "") -> dict[str, Any]:
    """The nvim-dap adapter: the run's process a configuration names while the run goes on;
    once it has ended (dap.restart(), dap.run_last()), the same command debugged again:
    push, run, attach."""
    proj = engine.project(ctx)
    res = debug.attach_existing(proj, id, endpoint)
    if res is not None:
        return {**res, "restarted": False}
    command = debug.command_again(proj, id, cmd)
    await sync.do_push(engine, proj, None, quiet=True)
    res = await debug.start_debug(engine, proj, proj.session(), command, terminate_stops_run, announce=False,
                                  stop_on_entry=stop_on_entry)
    return {**res, "restarted": True}


@action("attach_port")
async def attach_port(engine: Engine, ctx: dict[str, Any], port: int) -> dict[str, Any]:
    return await debug.attach_port(engine, engine.project(ctx), port)


@action("forward")
async def forward(engine: Engine, ctx: dict[str, Any], port: int, local: int | None = None) -> dict[str, Any]:
    """:RemoteForward {port} [local]: the remote's 127.0.0.1:port on localhost:local."""
    sess = engine.project(ctx).session()
    fwd = await forwards.forwards_of(sess).add("127.0.0.1", int(port), int(local or 0), name=f"port {port}")
    engine.message(f"localhost:{fwd.local_port} -> {sess.target.host}:127.0.0.1:{port} (kept across reconnects)")
    return fwd.describe()


# -- shells, the kernel, the notebook server: long-lived remote processes found again by name

@action("shell_open")
async def shell_open(engine: Engine, ctx: dict[str, Any], id: int, name: str = "main",  # noqa: A002
                     cols: int = 80, rows: int = 24) -> dict[str, Any]:
    """Attach terminal `id` (its buffer) to shell `name`, made in remote_root when missing."""
    return await shells.open_shell(engine, engine.project(ctx), int(id), name or "main", int(cols), int(rows))


@action("shell_input")
async def shell_input(engine: Engine, ctx: dict[str, Any], id: int, data: str) -> None:  # noqa: A002
    shells.shell_input(int(id), data)   # no await before the write: keystrokes stay in order


@action("shell_resize")
async def shell_resize(engine: Engine, ctx: dict[str, Any], id: int, cols: int, rows: int) -> None:  # noqa: A002
    shells.shell_resize(int(id), cols, rows)


@action("shell_detach")
async def shell_detach(engine: Engine, ctx: dict[str, Any], id: int) -> None:  # noqa: A002
    shells.shell_detach(int(id))


@action("shells")
async def shells_list(engine: Engine, ctx: dict[str, Any]) -> list[dict[str, Any]]:
    return await shells.list_shells(engine, engine.project(ctx))


@action("shell_kill")
async def shell_kill(engine: Engine, ctx: dict[str, Any], name: str) -> dict[str, Any]:
    return await shells.kill_shell(engine, engine.project(ctx), name)


@action("kernel")
async def kernel(engine: Engine, ctx: dict[str, Any], what: str = "start") -> dict[str, Any]:
    """:RemoteKernel start|stop|restart|interrupt; a new kernel starts after a push (it
    imports the tree as it is)."""
    proj = engine.project(ctx)
    return await kernels.kernel_command(engine, proj, what, lambda: sync.do_push(engine, proj, None, quiet=True))


@action("send")
async def send(engine: Engine, ctx: dict[str, Any], code: str, file: str | None = None,
               line: int = 1) -> dict[str, Any]:
    """Run code (from `file` at `line`) in the target's kernel; answers when it finished."""
    proj = engine.project(ctx)
    return await kernels.send(engine, proj, code, file or ctx.get("file") or None, int(line),
                              lambda: sync.do_push(engine, proj, None, quiet=True))


@action("notebook")
async def notebook(engine: Engine, ctx: dict[str, Any], stop: bool = False) -> dict[str, Any]:
    proj = engine.project(ctx)
    if stop:
        return await notebook_mod.stop_notebook(engine, proj)
    # pushed first, as runs and a new kernel are: the server lists the project as it is
    await sync.do_push(engine, proj, None, quiet=True)
    return await notebook_mod.open_notebook(engine, proj)


@action("services")
async def services_list(engine: Engine, ctx: dict[str, Any]) -> list[dict[str, Any]]:
    """The target's live shells, kernel and notebook server (for :RemoteRuns)."""
    return await services.list_all(engine.project(ctx).session(), engine)


# -- Slurm allocations

@action("alloc")
async def alloc(engine: Engine, ctx: dict[str, Any], args: list[str] | None = None, stop: bool = False) -> dict[str, Any]:
    """:RemoteAlloc [sbatch arguments] | stop: hold an allocation for the target (or find
    the one held); runs, debug runs, shells and kernels become its steps.  stop ends it."""
    return await alloc_mod.alloc_command(engine, engine.project(ctx), list(args or []), stop)


# -- the target's environment (:RemoteEnv)

@action("env")
async def env(engine: Engine, ctx: dict[str, Any], refresh: bool = False) -> dict[str, Any]:
    """:RemoteEnv [refresh]: bring the local mirror of what the target's python imports up to
    date (refresh: list every file again, not only when the environment's stamp changed)."""
    proj = engine.project(ctx)
    return await envmirror.refresh(engine, proj, proj.session(ctx.get("target")), force=bool(refresh))

