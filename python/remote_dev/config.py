"""`.remote-dev.toml`: discovery and validation.  The only place that reads it.

Every problem is a ConfigError naming the file, the key and what is wrong.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

from .errors import ConfigError

CONFIG_NAME = ".remote-dev.toml"
RUNNERS = ("process", "container", "slurm")
ENGINES = ("docker", "podman")
SLURM_ENGINES = ENGINES + ("pyxis",)   # runner = "slurm" also: srun --container-image (pyxis)


@dataclass(frozen=True)
class ContainerConfig:
    engine: str | None = None
    dockerfile: str | None = None
    image: str | None = None
    workdir: str = "/workspace"
    gpus: str = ""
    args: tuple[str, ...] = ()


@dataclass(frozen=True)
class SlurmConfig:
    args: tuple[str, ...] = ()


@dataclass(frozen=True)
class Target:
    name: str
    host: str
    remote_root: str
    user: str | None = None
    port: int | None = None
    identity_file: str | None = None
    ssh_config: str | None = None
    known_hosts: str | None = None
    runner: str = "process"
    python: str = "python3"
    env: dict[str, str] = field(default_factory=dict)
    container: ContainerConfig = ContainerConfig()
    slurm: SlurmConfig = SlurmConfig()

    @property
    def in_container(self) -> bool:
        """Runs are in a container: runner "container", or "slurm" with a container table
        naming an image or a Dockerfile (the container runs inside the job)."""
        c = self.container
        return self.runner == "container" or (self.runner == "slurm" and bool(c.image or c.dockerfile))


@dataclass(frozen=True)
class SyncConfig:
    exclude: tuple[str, ...] = ()
    pull: tuple[str, ...] = ()
    push_on_save: bool = False
    max_file_size: int = 100 * 1000 * 1000


@dataclass(frozen=True)
class RunConfig:
    command: str = "{python} {file}"
    stop_grace: float = 3.0


@dataclass(frozen=True)
class ProjectConfig:
    file: Path
    root: Path
    targets: dict[str, Target]
    default_target: str
    sync: SyncConfig
    run: RunConfig

    def target(self, name: str | None = None) -> Target:
        name = name or self.default_target
        try:
            return self.targets[name]
        except KeyError:
            raise ConfigError(str(self.file), "default_target" if name == self.default_target else "target",
                              f"no target named {name!r} (targets: {', '.join(self.targets)})") from None


def find_config(start: str | os.PathLike[str] | None = None) -> Path | None:
    """The nearest .remote-dev.toml walking up from start (a file or folder)."""
    here = Path(start or os.getcwd()).expanduser()
    if not here.is_dir():
        here = here.parent
    here = here.resolve()
    for d in (here, *here.parents):
        candidate = d / CONFIG_NAME
        if candidate.is_file():
            return candidate
    return None


class _Checker:
    def __init__(self, file: Path) -> None:
        self.file = str(file)

    def fail(self, key: str | None, problem: str) -> ConfigError:
        return ConfigError(self.file, key, problem)

    def table(self, value: Any, key: str, allowed: set[str]) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise self.fail(key, f"must be a table, not {type(value).__name__}")
        for k in value:
            if k not in allowed:
                full = f"{key}.{k}" if key else k
                raise self.fail(full, f"unknown key (known: {', '.join(sorted(allowed))})")
        return value

    def str_(self, t: dict[str, Any], key: str, prefix: str, default: Any = None, required: bool = False,
             choices: tuple[str, ...] | None = None) -> Any:
        full = f"{prefix}.{key}" if prefix else key
        if key not in t:
            if required:
                raise self.fail(full, "is required")
            return default
        v = t[key]
        if not isinstance(v, str):
            raise self.fail(full, f"must be a string, not {type(v).__name__}")
        if required and not v.strip():
            raise self.fail(full, "must not be empty")
        if choices and v not in choices:
            raise self.fail(full, f"must be one of {', '.join(map(repr, choices))}, not {v!r}")
        return v

    def list_(self, t: dict[str, Any], key: str, prefix: str) -> tuple[str, ...]:
        full = f"{prefix}.{key}" if prefix else key
        v = t.get(key, [])
        if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
            raise self.fail(full, "must be a list of strings")
        return tuple(v)

    def bool_(self, t: dict[str, Any], key: str, prefix: str, default: bool) -> bool:
        v = t.get(key, default)
        if not isinstance(v, bool):
            raise self.fail(f"{prefix}.{key}", f"must be true or false, not {v!r}")
        return v

    def num(self, t: dict[str, Any], key: str, prefix: str, default: float, kind: type = float) -> Any:
        v = t.get(key, default)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or (kind is int and not isinstance(v, int)):
            raise self.fail(f"{prefix}.{key}", f"must be a {'whole ' if kind is int else ''}number, not {v!r}")
        if v < 0:
            raise self.fail(f"{prefix}.{key}", "must not be negative")
        return kind(v)


TARGET_KEYS = {"host", "user", "port", "identity_file", "ssh_config", "known_hosts", "remote_root",
               "runner", "python", "env", "container", "slurm"}
CONTAINER_KEYS = {"engine", "dockerfile", "image", "workdir", "gpus", "args"}


def _target(c: _Checker, name: str, raw: Any) -> Target:
    p = f"targets.{name}"
    t = c.table(raw, p, TARGET_KEYS)
    host = c.str_(t, "host", p, required=True)
    remote_root = c.str_(t, "remote_root", p, required=True)
    if remote_root.rstrip("/") in ("", "~") or remote_root.strip() in ("/", "~/"):
        raise c.fail(f"{p}.remote_root", f"{remote_root!r} is a whole home or root folder; name a project folder")
    port = t.get("port")
    if port is not None and (isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536):
        raise c.fail(f"{p}.port", f"must be a port number, not {port!r}")
    env = t.get("env", {})
    if not isinstance(env, dict) or not all(isinstance(v, str) for v in env.values()):
        raise c.fail(f"{p}.env", "must be a table of strings, e.g. { CUDA_VISIBLE_DEVICES = \"0\" }")
    container = ContainerConfig()
    if "container" in t:
        ct = c.table(t["container"], f"{p}.container", CONTAINER_KEYS)
        cp = f"{p}.container"
        container = ContainerConfig(
            engine=c.str_(ct, "engine", cp, choices=SLURM_ENGINES),
            dockerfile=c.str_(ct, "dockerfile", cp),
            image=c.str_(ct, "image", cp),
            workdir=c.str_(ct, "workdir", cp, default="/workspace"),
            gpus=c.str_(ct, "gpus", cp, default=""),
            args=c.list_(ct, "args", cp),
        )
        if container.dockerfile and container.image:
            raise c.fail(cp, "set either dockerfile or image, not both")
        if not container.workdir.startswith("/"):
            raise c.fail(f"{cp}.workdir", f"must be an absolute path inside the container, not {container.workdir!r}")
    runner = c.str_(t, "runner", p, default="process", choices=RUNNERS)
    if runner in ("container", "slurm") and "container" in t and not (container.dockerfile or container.image):
        raise c.fail(f"{p}.container", f"runner = \"{runner}\" with a container table needs container.dockerfile "
                                       f"or container.image")
    if runner == "container" and not (container.dockerfile or container.image):
        raise c.fail(f"{p}.container", "runner = \"container\" needs container.dockerfile or container.image")
    if container.engine == "pyxis" and runner != "slurm":
        raise c.fail(f"{p}.container.engine", "\"pyxis\" runs containers in Slurm jobs only (runner = \"slurm\")")
    if container.engine == "pyxis" and container.dockerfile:
        raise c.fail(f"{p}.container.dockerfile", "pyxis runs an image, not a Dockerfile: set container.image")
    slurm = SlurmConfig()
    if "slurm" in t:
        st = c.table(t["slurm"], f"{p}.slurm", {"args"})
        slurm = SlurmConfig(args=c.list_(st, "args", f"{p}.slurm"))
    return Target(
        name=name, host=host, remote_root=remote_root,
        user=c.str_(t, "user", p), port=port,
        identity_file=c.str_(t, "identity_file", p), ssh_config=c.str_(t, "ssh_config", p),
        known_hosts=c.str_(t, "known_hosts", p),
        runner=runner, python=c.str_(t, "python", p, default="python3"),
        env=dict(env), container=container, slurm=slurm,
    )


def load_config(file: str | os.PathLike[str]) -> ProjectConfig:
    file = Path(file).resolve()
    c = _Checker(file)
    try:
        with open(file, "rb") as f:
            raw = tomllib.load(f)
    except OSError as e:
        raise c.fail(None, f"cannot read: {e.strerror}") from None
    except tomllib.TOMLDecodeError as e:
        raise c.fail(None, f"not valid TOML: {e}") from None
    c.table(raw, "", {"default_target", "targets", "sync", "run"})
    targets_raw = c.table(raw.get("targets", {}), "targets", set(raw.get("targets", {}) or {}))
    if not targets_raw:
        raise c.fail("targets", "no target defined; add a [targets.NAME] table with host and remote_root")
    targets = {name: _target(c, name, t) for name, t in targets_raw.items()}
    default = c.str_(raw, "default_target", "", default=next(iter(targets)))
    if default not in targets:
        raise c.fail("default_target", f"no target named {default!r} (targets: {', '.join(targets)})")
    st = c.table(raw.get("sync", {}), "sync", {"exclude", "pull", "push_on_save", "max_file_size"})
    sync = SyncConfig(
        exclude=c.list_(st, "exclude", "sync"),
        pull=c.list_(st, "pull", "sync"),
        push_on_save=c.bool_(st, "push_on_save", "sync", False),
        max_file_size=c.num(st, "max_file_size", "sync", SyncConfig.max_file_size, int),
    )
    rt = c.table(raw.get("run", {}), "run", {"command", "stop_grace"})
    run = RunConfig(
        command=c.str_(rt, "command", "run", default=RunConfig.command),
        stop_grace=c.num(rt, "stop_grace", "run", RunConfig.stop_grace),
    )
    return ProjectConfig(file=file, root=file.parent, targets=targets, default_target=default, sync=sync, run=run)
