"""runner = "process": the command runs as is, in remote_root, with the target's env."""

from __future__ import annotations

from typing import Any

from ..engine import TargetSession
from .base import Launch, ProjectView, Runner


class ProcessRunner(Runner):
    name = "process"

    async def spec(self, proj: ProjectView, sess: TargetSession, run_id: str, launch: Launch) -> dict[str, Any]:
        return {"cmd": launch.command, "env": {**sess.target.env, **launch.env}, "meta": {}}
