"""Runners: how a command becomes a detached run on the target (process, container, slurm)."""
from __future__ import annotations

from typing import Any


async def runner_health(engine: Any, proj: Any, sess: Any, found: dict[str, Any]) -> list[dict[str, str]]:
    return []
