"""runner = "slurm": the host is a login node; a run is a batch job.

The agent submits it with sbatch (the target's slurm.args) from remote_root; the job writes
its output and exit status into the run folder (a shared file system, as home is on
clusters), so nothing of ours stays on the login node.  The queue state (PENDING with its
reason, RUNNING on a node, the final state) comes from squeue/scontrol, at most once a second.

While an allocation is held (:RemoteAlloc, alloc.py) a run is a job step in it instead, with
no queue wait.  With a container table the command runs in a container on the job's node
(slurm_container.py).
"""

from __future__ import annotations

from typing import Any

from .. import alloc, slurm_errors
from ..engine import TargetSession
from ..errors import RemoteDevError
from ..config import Target
from .base import Launch, ProjectView, Runner
from .container import dockerfile_quickfix
from .slurm_container import container_command, engine_for


class SlurmRunner(Runner):
    name = "slurm"
    probes = ("sbatch", "squeue", "scancel")
    container_engines = ("docker", "podman", "pyxis")   # pyxis: srun --container-image

    @classmethod
    def check(cls, target: Target) -> tuple[str, str] | None:
        c = target.container
        if c.table and not (c.dockerfile or c.image):
            return "container", ("runner = \"slurm\" with a container table needs container.dockerfile or "
                                 "container.image")
        return super().check(target)

    def __init__(self, target: Target) -> None:
        super().__init__(target)
        self.engine: str | None = None    # pyxis, podman or docker for a container table, once found

    def in_container(self) -> bool:
        """With a container table naming an image or a Dockerfile, runs are in a container
        inside the job."""
        c = self.target.container
        return bool(c.image or c.dockerfile)

    def debug_mode(self) -> str:
        if self.in_container():
            raise RemoteDevError(f"targets.{self.target.name}: debugging in a container inside a Slurm job is not "
                                 f"supported; :RemoteRun works, or debug with a target without the container table")
        return self.debug

    async def spec(self, proj: ProjectView, sess: TargetSession, run_id: str, launch: Launch) -> dict[str, Any]:
        command = launch.command
        if self.in_container():
            self.engine = self.engine or await engine_for(sess)
            command = container_command(self.engine, proj, sess, run_id, command)
        held = await alloc.held(sess)
        if held is not None:
            return alloc.run_spec(sess, held, run_id, command, {**sess.target.env, **launch.env})
        return {"cmd": command, "env": {**sess.target.env, **launch.env}, "slurm": {"args": list(sess.target.slurm.args)},
                "meta": {}}

    def extra_quickfix(self, proj: ProjectView, sess: TargetSession, text: str) -> list[dict[str, Any]]:
        df = sess.target.container.dockerfile if self.in_container() else None
        return dockerfile_quickfix(text, proj.root / df) if df else []

    def diagnose(self, proj: ProjectView, sess: TargetSession, text: str) -> str | None:
        """Slurm refusing the job (naming the argument at fault), or the step finding its
        allocation gone."""
        problem = slurm_errors.diagnose(text, sess.target.slurm.args, sess.target.host)
        if problem and "allocation" in problem:
            alloc.forget(sess)
        return problem

    async def health(self, proj: ProjectView, sess: TargetSession, found: dict[str, Any]) -> list[dict[str, str]]:
        items = []
        for tool in ("sbatch", "squeue", "scancel"):
            if not found.get(tool):
                items.append({"level": "error", "text": f"{tool} not found on {sess.target.host} (runner = \"slurm\")"})
        if items:
            return items
        res = await sess.call("exec", ["sinfo", "-h", "-o", "%P|%a|%D|%T"], 60, sess.target.env)
        if res["code"] != 0:
            text = (res["stderr"] or res["stdout"]).decode(errors="replace").strip()
            return [{"level": "error", "text": f"sinfo failed on {sess.target.host}: {text[:300]}"}]
        parts = {}
        default = None
        for line in res["stdout"].decode(errors="replace").splitlines():
            name, avail, nodes, state = (line.split("|") + ["", "", "", ""])[:4]
            if name.endswith("*"):
                name = name[:-1]
                default = name
            parts.setdefault(name, []).append(f"{nodes} {state}")
        listing = "; ".join(f"{p} ({', '.join(v)})" for p, v in parts.items())
        items.append({"level": "ok", "text": f"slurm default partition: {default or 'none'}"})
        items.append({"level": "ok" if parts else "warn", "text": f"slurm partitions: {listing or 'none visible'}"})
        items.append(await alloc.health_item(sess))
        return items
