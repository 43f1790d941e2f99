""":RemoteShell: a Neovim terminal on a tmux session on the target.

The terminal is driven over the engine's own SSH connection (same host keys, same ssh
settings as everything else): a PTY channel runs ``tmux attach`` to the session, its bytes
go to a Neovim terminal made with nvim_open_term (``shell_output`` reports), keystrokes
come back with ``shell_input`` and window sizes with ``shell_resize``.  The session itself
lives in remote_dev's own tmux server on the remote, so it outlives Neovim, disconnects and
sleep; when the connection drops, the terminal reattaches by itself once it is back.

A new terminal first shows the session's history (tmux capture-pane) and then attaches:
tmux redraws the screen, and the earlier scrollback is in the buffer above it.

On the container runner the session's program is a container of the target's image with
the tree mounted (the run's argv, with a terminal), removed when the shell is killed.
"""

from __future__ import annotations

import asyncio
import shlex
from dataclasses import dataclass, field
from typing import Any

import asyncssh

from . import services
from .agent.protocol import RUNNING
from .engine import Engine, Project, TargetSession, log
from .errors import ConnectError, RemoteDevError
from .runners import runner_of
from .services import SHELL, remote_name

TERM_TYPE = "xterm-256color"
HISTORY_LINES = 5000     # scrollback a new terminal gets from tmux's history
READ_BYTES = 1 << 16


@dataclass
class Shell:
    term: int                 # the Neovim terminal's key (its buffer number): reports name it
    name: str                 # the user's name for it
    session: str              # the tmux session on the remote
    sess: TargetSession
    engine: Engine
    tmux: str
    cols: int
    rows: int
    proc: asyncssh.SSHClientProcess[bytes] | None = None
    task: asyncio.Task[None] | None = None
    detached: bool = False    # the terminal went away: do not reattach
    typed: bytearray = field(default_factory=bytearray)   # keys typed before the first attach
    attached_once: bool = False

    def report_state(self, state: str, message: str = "") -> None:
        self.engine.report("shell_state", {"id": self.term, "name": self.name, "state": state, "message": message,
                                           "target": self.sess.target.name})

    def attach_command(self) -> str:
        return f"exec {shlex.quote(self.tmux)} -u -L {services.TMUX_SOCKET} attach-session -t {shlex.quote('=' + self.session)}"

    async def relay(self, history: bytes) -> None:
        """Attach, relay output until tmux ends; reattach after a lost connection."""
        if history:
            self.engine.report("shell_output", {"id": self.term, "data": history.replace(b"\n", b"\r\n") + b"\r\n"})
        delay = 0.5
        while not self.detached:
            try:
                await self.sess.ensure()
                assert self.sess.conn is not None
                conn = self.sess.conn
                self.proc = await conn.create_process(self.attach_command(), term_type=TERM_TYPE,
                                                      term_size=(self.cols, self.rows), encoding=None)
            except (ConnectError, asyncssh.Error, OSError) as e:
                self.report_state("reconnecting", getattr(e, "message", str(e)))
                await asyncio.sleep(delay)
                delay = min(delay * 2, 15)
                continue
            delay = 0.5
            self.report_state("attached")
            self.attached_once = True
            if self.typed:
                self.proc.stdin.write(bytes(self.typed))
                self.typed.clear()
            tail = b""
            try:
                while True:
                    data = await self.proc.stdout.read(READ_BYTES)
                    if not data:
                        break
                    tail = (tail + data)[-200:]
                    self.engine.report("shell_output", {"id": self.term, "data": data})
            except (asyncssh.Error, OSError) as e:
                log.info("shell %s: %s", self.session, e)
            status = self.proc.exit_status if self.proc.exit_status is not None else None
            self.proc = None
            if self.detached:
                return
            if not conn.is_closed() and status is not None:
                # tmux ended on its own: the session ended, or a tmux detach
                ended = b"[detached" not in tail
                self.report_state("ended" if ended else "detached",
                                  f"shell {self.name} ended" if ended else f"detached from shell {self.name}")
                SHELLS.pop(self.term, None)
                return
            self.report_state("reconnecting", f"connection to {self.sess.target.host} lost")
            if conn is self.sess.conn:
                self.sess.drop()
            try:
                await self.sess.ensure()
            except RemoteDevError as e:
                self.report_state("reconnecting", e.message)
                await asyncio.sleep(delay)
                continue
            alive = await self.sess.call("service_list", self.session)
            if not any(s.get("name") == self.session for s in alive):
                self.report_state("ended", f"shell {self.name} is gone from {self.sess.target.host}")
                SHELLS.pop(self.term, None)
                return

    def write(self, data: bytes) -> None:
        if self.proc is None:
            if not self.attached_once:   # typed ahead of the first attach: sent then
                self.typed += data[:65536 - len(self.typed)]
            return   # while reconnecting keys go nowhere (never replayed blind later)
        try:
            self.proc.stdin.write(data)
        except (asyncssh.Error, OSError, BrokenPipeError):
            pass

    def resize(self, cols: int, rows: int) -> None:
        self.cols, self.rows = cols, rows
        if self.proc is not None:
            try:
                self.proc.change_terminal_size(cols, rows)
            except (asyncssh.Error, OSError):
                pass

    def detach(self) -> None:
        self.detached = True
        if self.proc is not None:
            self.proc.close()
        if self.task is not None and not self.task.done():
            self.task.cancel()


SHELLS: dict[int, Shell] = {}   # attached terminals of this Neovim, by terminal key
# keys typed into a terminal whose shell is still being opened (ensured, made on the remote):
# handed to its Shell, which sends them once tmux has attached, as :terminal keeps typeahead
TYPED_AHEAD: dict[int, bytearray] = {}
TYPEAHEAD_MAX = 65536


async def open_shell(engine: Engine, proj: Project, term: int, name: str, cols: int, rows: int) -> dict[str, Any]:
    """Attach terminal `term` to shell `name` of the project's target, made when missing;
    keys typed meanwhile go to the shell once attached."""
    TYPED_AHEAD.setdefault(term, bytearray())
    try:
        return await _open_shell(engine, proj, term, name, cols, rows)
    finally:
        TYPED_AHEAD.pop(term, None)


async def _open_shell(engine: Engine, proj: Project, term: int, name: str, cols: int, rows: int) -> dict[str, Any]:
    services.check_name(name)
    sess = proj.session()
    await sess.ensure()
    session = remote_name(sess, SHELL, name)
    t = sess.target
    argv, stop = await runner_of(sess).shell(proj, sess, session)
    launcher = await services.launcher_for(sess)
    argv = launcher.shell(sess, argv, session)
    spec = {"name": session, "root": sess.remote_root or t.remote_root, "argv": argv, "env": {**t.env, **launcher.env},
            "cols": cols, "rows": rows, "stop_commands": stop,
            "meta": {"kind": SHELL, "target": t.name, "local_root": str(proj.root), "runner": t.runner,
                     **launcher.meta}}
    made = await sess.call("shell_ensure", spec)   # an agent's error names the host
    history = b"" if made["created"] else await sess.call("shell_capture", session, HISTORY_LINES)
    old = SHELLS.pop(term, None)
    if old is not None:
        old.detach()
    shell = Shell(term, name, session, sess, engine, made["tmux"], max(cols, 2), max(rows, 1),
                  typed=TYPED_AHEAD.pop(term, bytearray()))
    SHELLS[term] = shell
    shell.task = asyncio.get_running_loop().create_task(shell.relay(history))
    services.note(engine, sess, SHELL, name, RUNNING, "attached")
    where = f"{t.host}:{spec['root']}" + (" (in a container)" if argv else "") + (
        f" ({launcher.where()})" if launcher.where() else "")
    return {"id": term, "name": name, "session": session, "created": made["created"], "target": t.name,
            "where": where}


def shell_input(term: int, data: str | bytes) -> None:
    raw = data.encode("utf-8", "surrogateescape") if isinstance(data, str) else data
    shell = SHELLS.get(term)
    if shell is not None:
        shell.write(raw)
    elif term in TYPED_AHEAD:   # its shell_open is still under way
        ahead = TYPED_AHEAD[term]
        ahead += raw[:TYPEAHEAD_MAX - len(ahead)]


def shell_resize(term: int, cols: int, rows: int) -> None:
    shell = SHELLS.get(term)
    if shell is not None:
        shell.resize(max(int(cols), 2), max(int(rows), 1))


def shell_detach(term: int) -> None:
    shell = SHELLS.pop(term, None)
    if shell is not None:
        shell.detach()


async def list_shells(engine: Engine, proj: Project) -> list[dict[str, Any]]:
    sess = proj.session()
    return [s for s in await services.list_all(sess, engine) if s["kind"] == SHELL]


async def kill_shell(engine: Engine, proj: Project, name: str) -> dict[str, Any]:
    """End shell `name`: its tmux session and every process started in it."""
    services.check_name(name)
    sess = proj.session()
    session = remote_name(sess, SHELL, name)
    for term, shell in list(SHELLS.items()):
        if shell.session == session and shell.sess.target.name == sess.target.name:
            shell.detach()
            SHELLS.pop(term, None)
            shell.report_state("ended", f"shell {name} killed")
    existed = await sess.call("shell_kill", session, proj.config.run.stop_grace)
    if not existed:
        raise RemoteDevError(f"no shell named {name!r} on {sess.target.name} (:RemoteShell! lists them)")
    services.note(engine, sess, SHELL, name, None)
    engine.message(f"shell {name} killed on {sess.target.host}")
    return {"name": name, "killed": True}
