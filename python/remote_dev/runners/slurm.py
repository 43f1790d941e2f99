"""runner = "slurm": the host is a login node; a run is a batch job.

The agent submits it with sbatch (the target's slurm.args) from remote_root; the job writes
its output and exit status into the run folder (a shared file system, as home is on
clusters), so nothing of ours stays on the login node.  The queue state (PENDING with its
reason, RUNNING on a node, the final state) comes from squeue/scontrol, at most once a second.
"""

from __future__ import annotations

from typing import Any

from ..engine import TargetSession
from . import Launch, ProcessRunner, ProjectView


class SlurmRunner(ProcessRunner):
    name = "slurm"

    async def spec(self, proj: ProjectView, sess: TargetSession, run_id: str, launch: Launch) -> dict[str, Any]:
        return {"cmd": launch.command, "env": dict(sess.target.env), "slurm": {"args": list(sess.target.slurm.args)},
                "meta": {}}

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
        return items
