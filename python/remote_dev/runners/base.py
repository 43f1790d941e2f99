"""What every runner is: the ``Runner`` base with its capabilities (what call sites used to
branch on by the runner's name), the ``Launch`` a feature hands it, and what it needs of a
project."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from ..config import Target
from ..engine import TargetSession

if TYPE_CHECKING:
    from pathlib import Path

BOOTSTRAP = "bootstrap"   # debug runs: the command as typed, every Python process starts debugpy itself
DIRECT = "direct"         # debug runs: `python -m debugpy --listen` at a port published beforehand


@dataclass
class Launch:
    """What a run executes and what it needs from the runner besides."""
    command: str                                                   # the shell command line on the remote
    mounts: list[tuple[str, str]] = field(default_factory=list)     # (remote path, container path), read-only
    publish: list[int] = field(default_factory=list)               # ports published on the remote's 127.0.0.1
    env: dict[str, str] = field(default_factory=dict)              # secrets: in the environment, never argv


class ProjectView(Protocol):
    """What a runner needs of a project."""
    @property
    def root(self) -> Path: ...
    @property
    def config(self) -> Any: ...


class Runner:
    """A runner kind: turns a run id and a ``Launch`` into the spec the agent starts.  One
    per target connection (``runners.runner_of``): what it finds out (the container engine
    that answers) lives on it.  The class attributes and the ``in_container`` /
    ``debug_mode`` / ``shell`` methods are its capabilities; features ask them instead of
    comparing the runner's name."""

    name = ""
    debug = BOOTSTRAP                  # how a debug run starts (see debug_launch.py)
    honours_launch = False             # Launch.mounts and Launch.publish take effect (a container of its own)
    probes: tuple[str, ...] = ()       # remote programs it needs: :checkhealth warns when one is missing
    container_engines: tuple[str, ...] = ("docker", "podman")   # container.engine values it runs with

    @classmethod
    def check(cls, target: Target) -> tuple[str, str] | None:
        """What this kind needs of the target's tables: None, or (key below the target,
        problem) for config.check_runner's one line."""
        engine = target.container.engine
        if engine and engine not in cls.container_engines:
            return "container.engine", (f"{engine!r} is not a container engine of runner = \"{cls.name}\" "
                                         f"(it runs with {', '.join(map(repr, cls.container_engines))})")
        return None

    def __init__(self, target: Target) -> None:
        self.target = target

    def in_container(self) -> bool:
        """Runs see the tree at container.workdir, not at remote_root."""
        return False

    def container_root(self) -> str | None:
        return self.target.container.workdir if self.in_container() else None

    def debug_mode(self) -> str:
        """BOOTSTRAP or DIRECT; raises RemoteDevError (one line) where debugging is refused."""
        return self.debug

    async def shell(self, proj: ProjectView, sess: TargetSession, session: str) -> tuple[list[str] | None, list[list[str]]]:
        """The program of a :RemoteShell tmux session (None: the login shell) and the
        commands that clean up after it."""
        return None, []

    async def spec(self, proj: ProjectView, sess: TargetSession, run_id: str, launch: Launch) -> dict[str, Any]:
        raise NotImplementedError

    def extra_quickfix(self, proj: ProjectView, sess: TargetSession, text: str) -> list[dict[str, Any]]:
        return []

    def diagnose(self, proj: ProjectView, sess: TargetSession, text: str) -> str | None:
        """One clear message for a known failure of the runner itself, if the output has one."""
        return None

    async def health(self, proj: ProjectView, sess: TargetSession, found: dict[str, Any]) -> list[dict[str, str]]:
        return []
