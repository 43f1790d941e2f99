"""Runners: how a command becomes a detached run on the target.

Each runner turns a RunRecord into the spec the agent starts (``spec``), may refine the
state the agent reports (``refresh``, Slurm's queue), and may add quickfix entries of its
own (``extra_quickfix``, a failed image build).
"""

from __future__ import annotations

from typing import Any

from ..config import Target


class ProcessRunner:
    name = "process"

    async def spec(self, engine: Any, proj: Any, sess: Any, run: Any, debug: dict[str, Any] | None) -> dict[str, Any]:
        return {"cmd": run.exec_cmd, "env": dict(sess.target.env), "meta": {}}

    async def refresh(self, engine: Any, sess: Any, run: Any, info: dict[str, Any]) -> dict[str, Any]:
        return info

    def extra_quickfix(self, proj: Any, sess: Any, text: str) -> list[dict[str, Any]]:
        return []

    def diagnose(self, proj: Any, sess: Any, text: str) -> str | None:
        """One clear message for a known failure of the runner itself, if the output has one."""
        return None

    async def health(self, engine: Any, proj: Any, sess: Any, found: dict[str, Any]) -> list[dict[str, str]]:
        return []


def runner_for(target: Target) -> Any:
    if target.runner == "container":
        from .container import ContainerRunner

        return ContainerRunner()
    if target.runner == "slurm":
        from .slurm import SlurmRunner

        return SlurmRunner()
    return ProcessRunner()


async def runner_health(engine: Any, proj: Any, sess: Any, found: dict[str, Any]) -> list[dict[str, str]]:
    return await runner_for(sess.target).health(engine, proj, sess, found)
