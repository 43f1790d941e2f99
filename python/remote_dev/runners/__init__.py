"""Runners: how a command becomes a detached run on the target.

A runner turns a run (its id and the command line to execute) into the spec the agent
starts (``spec``), may add quickfix entries of its own (``extra_quickfix``, a failed image
build), may name a known failure of itself in one line (``diagnose``) and adds its checks to
:checkhealth (``health``).  Runners know nothing of debugging: a feature that needs more
than the plain command (debugpy listening on a published port, a read-only mount) hands
them a ``Launch``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from ..config import Target
from ..engine import TargetSession

if TYPE_CHECKING:
    from pathlib import Path


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


class Runner(Protocol):
    name: str

    async def spec(self, proj: ProjectView, sess: TargetSession, run_id: str, launch: Launch) -> dict[str, Any]: ...
    def extra_quickfix(self, proj: ProjectView, sess: TargetSession, text: str) -> list[dict[str, Any]]: ...
    def diagnose(self, proj: ProjectView, sess: TargetSession, text: str) -> str | None: ...
    async def health(self, proj: ProjectView, sess: TargetSession, found: dict[str, Any]) -> list[dict[str, str]]: ...


class ProcessRunner:
    """runner = "process": the command runs as is, in remote_root, with the target's env."""
    name = "process"

    async def spec(self, proj: ProjectView, sess: TargetSession, run_id: str, launch: Launch) -> dict[str, Any]:
        return {"cmd": launch.command, "env": {**sess.target.env, **launch.env}, "meta": {}}

    def extra_quickfix(self, proj: ProjectView, sess: TargetSession, text: str) -> list[dict[str, Any]]:
        return []

    def diagnose(self, proj: ProjectView, sess: TargetSession, text: str) -> str | None:
        """One clear message for a known failure of the runner itself, if the output has one."""
        return None

    async def health(self, proj: ProjectView, sess: TargetSession, found: dict[str, Any]) -> list[dict[str, str]]:
        return []


def runner_for(target: Target) -> Runner:
    if target.runner == "container":
        from .container import ContainerRunner

        return ContainerRunner()
    if target.runner == "slurm":
        from .slurm import SlurmRunner

        return SlurmRunner()
    return ProcessRunner()
