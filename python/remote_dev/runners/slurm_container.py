"""Containers inside Slurm jobs: runner = "slurm" with a [targets.X.container] table.

The run's command becomes one that runs it in a container on the job's node, the tree
(remote_root, on the cluster's shared file system) mounted at ``workdir``:

- pyxis (``srun --container-image``; detected by srun knowing that option, or
  ``engine = "pyxis"``): ``srun --nodes=1 --ntasks=1 --container-image=IMAGE
  --container-mounts=ROOT:WORKDIR --container-workdir=WORKDIR /bin/sh -c CMD``; the job's
  environment goes in as pyxis passes it.
- podman or docker inside the job (or step): the container runner's script (build from
  the Dockerfile when there is one, then ``ENGINE run --rm --name rd-<id>``) with every
  SLURM_* variable of the job passed in (``-e NAME``, read when the job runs), and the
  container removed when the job is cancelled or the step interrupted (a trap: the
  container's processes are the engine's children, not the job's).
"""

from __future__ import annotations

import shlex

from ..engine import TargetSession
from ..errors import RemoteDevError
from .base import ProjectView
from .container import build_argv, container_name, detect_engine, image_tag, run_argv, script

PASS_SLURM_ENV = ('set --; for v in $(env | sed -n "s/^\\(SLURM_[A-Za-z0-9_]*\\)=.*/\\1/p"); '
                  'do set -- "$@" -e "$v"; done')


async def engine_for(sess: TargetSession) -> str:
    """pyxis, podman or docker: as configured; else pyxis when srun has
    --container-image, else the engine that answers on the login node (the nodes are
    taken to have the same software)."""
    c = sess.target.container
    if c.engine:
        return c.engine
    res = await sess.call("exec", ["srun", "--help"], 30, sess.target.env)
    if b"--container-image" in res["stdout"] + res["stderr"]:
        return "pyxis"
    return await detect_engine(sess)


def pyxis_command(sess: TargetSession, command: str) -> str:
    t = sess.target
    c = t.container
    if c.dockerfile or not c.image:
        raise RemoteDevError(f"targets.{t.name}.container: pyxis runs an image (container.image), not a Dockerfile")
    root = sess.remote_root or t.remote_root
    argv = ["srun", "--nodes=1", "--ntasks=1", f"--container-image={c.image}",
            f"--container-mounts={root}:{c.workdir}", f"--container-workdir={c.workdir}", *c.args,
            "/bin/sh", "-c", command]
    return " ".join(shlex.quote(a) for a in argv)


def engine_script(eng: str, name: str, build: list[str] | None, run: list[str]) -> str:
    """The container runner's script with the job's SLURM_* variables passed in and the
    container removed on SIGTERM/SIGINT/SIGHUP (scancel, an interrupted step)."""
    image_at = len(run) - 4           # run_argv ends with: image, sh, -c, command
    q = lambda args: " ".join(shlex.quote(a) for a in args)  # noqa: E731
    remove = q([eng, "rm", "-f", "-t", "0", name] if eng == "podman" else [eng, "rm", "-f", name])
    traps = " ".join(f"trap '{remove} >/dev/null 2>&1; exit {code}' {sig};"
                     for sig, code in (("TERM", 143), ("INT", 130), ("HUP", 129)))
    lines = script(build, []).splitlines()[:-1]   # the build, without the final exec
    lines += [PASS_SLURM_ENV, traps,
              f'{q(run[:image_at])} "$@" {q(run[image_at:])} &',
              "wait $!"]
    return "\n".join(lines)


def container_command(eng: str, proj: ProjectView, sess: TargetSession, run_id: str, command: str) -> str:
    """The command line that runs ``command`` in a container of the target's image on the
    job's node, with eng (engine_for's answer)."""
    if eng == "pyxis":
        return pyxis_command(sess, command)
    t = sess.target
    image = t.container.image or image_tag(proj.root, t)
    name = container_name(run_id)
    build = build_argv(eng, image, t.container.dockerfile) if t.container.dockerfile else None
    run = run_argv(eng, name, image, sess.remote_root or t.remote_root, t, command, run_id=run_id)
    return engine_script(eng, name, build, run)
