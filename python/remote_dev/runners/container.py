"""runner = "container": build (or take) an image on the remote and run inside it with
docker or podman, the remote tree bind-mounted at the workdir.

The whole thing is one detached run: a small shell script builds the image (its output
streams into the run buffer like any other), then execs `ENGINE run --rm --name rd-<id>`.
Stopping runs `ENGINE stop` / `ENGINE rm -f` for that name before the process tree is
signalled, so no container is left behind.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path
from typing import Any

from ..agent.protocol import RUN_ID_ENV
from ..config import Target
from ..engine import TargetSession
from ..errors import RemoteDevError
from .base import DIRECT, Launch, ProjectView, Runner


CONTAINER_SHELL = "if command -v bash >/dev/null 2>&1; then exec bash -l; else exec sh -l; fi"


def container_name(run_id: str) -> str:
    return f"rd-{run_id}"


def image_tag(local_root: Path, target: Target) -> str:
    base = re.sub(r"[^a-z0-9_.-]+", "-", f"{local_root.name}-{target.name}".lower()).strip("-.") or "project"
    return f"localhost/remote-dev-{base}:latest"


def gpu_args(engine: str, gpus: str) -> list[str]:
    """`gpus` in each engine's form: docker --gpus, podman CDI devices."""
    gpus = gpus.strip()
    if not gpus:
        return []
    if engine == "docker":
        return ["--gpus", "all" if gpus == "all" else f'"device={gpus}"']
    if gpus == "all":
        return ["--device", "nvidia.com/gpu=all"]
    return [arg for g in gpus.split(",") if g.strip() for arg in ("--device", f"nvidia.com/gpu={g.strip()}")]


def run_argv(engine: str, name: str, image: str, remote_root: str, target: Target, command: str,
             publish: list[int] | None = None, mounts: list[tuple[str, str]] | None = None,
             run_id: str = "", env_names: list[str] | None = None) -> list[str]:
    c = target.container
    argv = [engine, "run", "--rm", "--name", name, "--label", "remote-dev=1",
            "-v", f"{remote_root}:{c.workdir}", "-w", c.workdir, "-e", "PYTHONUNBUFFERED=1"]
    if run_id:  # lets the agent find the container's processes (debug port, stop)
        argv += ["-e", f"{RUN_ID_ENV}={run_id}"]
    for src, dst in mounts or []:
        argv += ["-v", f"{src}:{dst}:ro"]
    for key in [*target.env, *(env_names or [])]:   # values from the engine's environment: never on a command line
        argv += ["-e", key]
    for port in publish or []:
        argv += ["-p", f"127.0.0.1:{port}:{port}"]
    argv += gpu_args(engine, c.gpus)
    argv += list(c.args)
    argv += [image, "sh", "-c", command]
    return argv


def build_argv(engine: str, tag: str, dockerfile: str) -> list[str]:
    return [engine, "build", "-t", tag, "-f", dockerfile, "."]


def script(build: list[str] | None, run: list[str]) -> str:
    lines = []
    if build:
        q = " ".join(shlex.quote(a) for a in build)
        lines.append(f"echo '[remote_dev] {q}'")
        lines.append(f"{q} || {{ code=$?; echo \"[remote_dev] image build failed (exit $code)\"; exit 125; }}")
    lines.append("exec " + " ".join(shlex.quote(a) for a in run))
    return "\n".join(lines)


# Known engine failures -> one clear message each.
DIAGNOSES = [
    (re.compile(r"Cannot connect to the Docker daemon|Is the docker daemon running"),
     "{engine} on {host}: the daemon is not running (start it, e.g. `sudo systemctl start docker`, or set "
     "container.engine = \"podman\")"),
    (re.compile(r"permission denied while trying to connect to the Docker daemon socket", re.I),
     "{engine} on {host}: permission denied on the docker socket (add the user to the `docker` group: "
     "`sudo usermod -aG docker $USER`, then reconnect)"),
    (re.compile(r"image not known|Unable to find image|pull access denied|manifest unknown|repository does not exist",
                re.I),
     "{engine} on {host}: image {image} not found (not on the host, and it could not be pulled)"),
]


def diagnose(text: str, engine: str, host: str, image: str) -> str | None:
    for pattern, message in DIAGNOSES:
        if pattern.search(text):
            return message.format(engine=engine, host=host, image=image)
    return None


STEP = re.compile(r'building at STEP "(?P<podman>[^"]+)"|^ERROR[^\]]*\] (?P<docker>[A-Z]+ .*)$|Dockerfile:(?P<line>\d+)',
                  re.M)


def dockerfile_quickfix(text: str, dockerfile: Path) -> list[dict[str, Any]]:
    """A quickfix entry at the Dockerfile line of a failed build step, when the engine
    names the step (podman: `building at STEP "RUN x"`; docker: `Dockerfile:12`)."""
    if "image build failed" not in text:
        return []
    error = next((ln.strip() for ln in reversed(text.splitlines()) if ln.startswith(("Error:", "ERROR:", "error:"))),
                 "image build failed")
    for m in STEP.finditer(text):
        if m.group("line"):
            return [{"filename": str(dockerfile), "lnum": int(m.group("line")), "col": 0, "text": error, "type": "E"}]
        instruction = (m.group("podman") or m.group("docker") or "").strip()
        try:
            lines = dockerfile.read_text().splitlines()
        except OSError:
            return []
        for n, line in enumerate(lines, 1):
            if line.strip() and " ".join(line.split()) == " ".join(instruction.split()):
                return [{"filename": str(dockerfile), "lnum": n, "col": 0, "text": error, "type": "E"}]
    return [{"filename": str(dockerfile), "lnum": 1, "col": 0, "text": error, "type": "E"}]


async def detect_engine(sess: TargetSession) -> str:
    """docker or podman: as configured, else the one that answers `info`."""
    c = sess.target.container
    candidates = [c.engine] if c.engine else ["docker", "podman"]
    found = await sess.call("which", candidates)
    problems = []
    for name in candidates:
        if not found.get(name):
            problems.append(f"{name} not installed")
            continue
        res = await sess.call("exec", [found[name], "info", "--format", "{{.Host.OCIRuntime.Name}}" if name == "podman"
                                       else "{{.ServerVersion}}"], 60, sess.target.env)
        if res["code"] == 0:
            return name
        text = (res["stderr"] or res["stdout"]).decode(errors="replace")
        problems.append(diagnose(text, name, sess.target.host, "") or f"{name} info failed: {text.strip()[:300]}")
    if c.engine:
        raise RemoteDevError(f"container engine on {sess.target.host}: {'; '.join(problems)}")
    raise RemoteDevError(f"no usable container engine on {sess.target.host}: {'; '.join(problems)} "
                         f"(install docker or podman, or set container.engine)")


class ContainerRunner(Runner):
    name = "container"
    debug = DIRECT
    honours_launch = True

    def __init__(self, target: Target) -> None:
        super().__init__(target)
        self.engine: str | None = None    # docker or podman, once found to answer

    @classmethod
    def check(cls, target: Target) -> tuple[str, str] | None:
        c = target.container
        if not (c.dockerfile or c.image):
            return "container", "runner = \"container\" needs container.dockerfile or container.image"
        return super().check(target)

    def in_container(self) -> bool:
        return True

    async def engine_name(self, sess: TargetSession) -> str:
        if self.engine is None:
            self.engine = await detect_engine(sess)
        return self.engine

    def image(self, proj: ProjectView, target: Target) -> str:
        return target.container.image or image_tag(proj.root, target)

    async def shell(self, proj: ProjectView, sess: TargetSession, session: str) -> tuple[list[str] | None, list[list[str]]]:
        """A container of the target's image (tree mounted at workdir, a login shell in it),
        and the command that removes the container."""
        eng = await self.engine_name(sess)
        t = sess.target
        image = self.image(proj, t)
        cname = f"rd-{session}"
        run = run_argv(eng, cname, image, sess.remote_root or t.remote_root, t, CONTAINER_SHELL, run_id=session)
        run.insert(2, "-it")
        build = build_argv(eng, image, t.container.dockerfile) if t.container.dockerfile else None
        remove = [eng, "rm", "-f", "-t", "0", cname] if eng == "podman" else [eng, "rm", "-f", cname]
        return ["/bin/sh", "-c", script(build, run)], [remove]

    async def spec(self, proj: ProjectView, sess: TargetSession, run_id: str, launch: Launch) -> dict[str, Any]:
        t = sess.target
        eng = await self.engine_name(sess)
        name = container_name(run_id)
        image = self.image(proj, t)
        build = build_argv(eng, image, t.container.dockerfile) if t.container.dockerfile else None
        argv = run_argv(eng, name, image, sess.remote_root or t.remote_root, t, launch.command, launch.publish,
                        launch.mounts, run_id, list(launch.env))
        return {
            "argv": ["/bin/sh", "-c", script(build, argv)],
            "env": {**t.env, **launch.env},
            "stop_commands": [[eng, "stop", "-t", str(max(1, int(proj.config.run.stop_grace))), name],
                              [eng, "rm", "-f", "-t", "0", name] if eng == "podman" else [eng, "rm", "-f", name]],
            "meta": {"container": name, "engine": eng, "image": image},
        }

    def extra_quickfix(self, proj: ProjectView, sess: TargetSession, text: str) -> list[dict[str, Any]]:
        df = sess.target.container.dockerfile
        return dockerfile_quickfix(text, proj.root / df) if df else []

    def diagnose(self, proj: ProjectView, sess: TargetSession, text: str) -> str | None:
        eng = self.engine or sess.target.container.engine or "docker"
        return diagnose(text, eng, sess.target.host, self.image(proj, sess.target))

    async def health(self, proj: ProjectView, sess: TargetSession, found: dict[str, Any]) -> list[dict[str, str]]:
        try:
            eng = await self.engine_name(sess)
        except RemoteDevError as e:
            return [{"level": "error", "text": e.message}]
        res = await sess.call("exec", [eng, "version", "--format", "{{.Client.Version}}"], 60, sess.target.env)
        version = res["stdout"].decode(errors="replace").strip() or "?"
        items = [{"level": "ok", "text": f"container engine: {eng} {version}"}]
        image = self.image(proj, sess.target)
        have = await sess.call("exec", [eng, "image", "inspect", image], 60, sess.target.env)
        if have["code"] != 0:
            how = "it is built on the first run" if sess.target.container.dockerfile else "it is pulled on the first run"
            items.append({"level": "info", "text": f"image {image} not on the host yet; {how}"})
            return items
        probe = await sess.call("exec", [eng, "run", "--rm", image, "true"], 120, sess.target.env)
        if probe["code"] == 0:
            items.append({"level": "ok", "text": f"{eng} can run a container from {image}"})
        else:
            text = (probe["stderr"] or probe["stdout"]).decode(errors="replace").strip()
            items.append({"level": "error", "text": f"{eng} cannot run a container from {image}: {text[:400]}"})
        return items
