"""`.remote-dev.toml`: discovery and validation.  The only place that reads it.

One schema (``SCHEMA``: every table and key with its type and rules) drives the checks;
every problem is a ConfigError naming the file, the key and what to write instead.  The
fault suite generates malformed configs from the same schema.
"""

from __future__ import annotations

import datetime
import os
import posixpath
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Protocol

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

from .errors import ConfigError

CONFIG_NAME = ".remote-dev.toml"
ENGINES = ("docker", "podman")
TARGET_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")
ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
SLURM_ENGINES = ENGINES + ("pyxis",)   # runner = "slurm" also: srun --container-image (pyxis)


@dataclass(frozen=True)
class ContainerConfig:
    engine: str | None = None
    dockerfile: str | None = None
    image: str | None = None
    workdir: str = "/workspace"
    gpus: str = ""
    args: tuple[str, ...] = ()
    table: bool = False                # the file has a [targets.NAME.container] table


@dataclass(frozen=True)
class SlurmConfig:
    args: tuple[str, ...] = ()
    warn_before: tuple[float, ...] = (600.0, 60.0)   # seconds before a held allocation's end


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


@dataclass(frozen=True)
class SyncConfig:
    exclude: tuple[str, ...] = ()
    include: tuple[str, ...] = ()     # pushed although .gitignore leaves them out
    pull: tuple[str, ...] = ()
    push_on_save: bool = False
    max_file_size: int = 100 * 1000 * 1000


@dataclass(frozen=True)
class RunConfig:
    command: str = "{python} {file}"
    stop_grace: float = 3.0
    debug_wait: float = 600.0
    keep: int = 50            # ended runs kept on the remote per project and target


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


# --------------------------------------------------------------------------- the schema


@dataclass(frozen=True)
class Key:
    """One key of a table.  kind: "string", "integer", "number", "boolean", "strings" (an
    array of strings), "numbers" (an array of numbers), "env" (a table of strings), "table" (a sub-table, see SCHEMA).
    path: "inside" (relative, inside the project) or "absolute" (a container path)."""
    name: str
    kind: str
    required: bool = False
    nonempty: bool = False
    choices: tuple[str, ...] = ()
    low: float | None = None
    high: float | None = None
    path: str = ""


# Tables by their place: "targets.*" is each [targets.NAME].
SCHEMA: dict[str, tuple[Key, ...]] = {
    "": (Key("default_target", "string", nonempty=True), Key("targets", "table"),
         Key("sync", "table"), Key("run", "table")),
    "targets.*": (
        Key("host", "string", required=True, nonempty=True),
        Key("remote_root", "string", required=True, nonempty=True),
        Key("user", "string", nonempty=True), Key("port", "integer", low=1, high=65535),
        Key("identity_file", "string", nonempty=True), Key("ssh_config", "string", nonempty=True),
        Key("known_hosts", "string", nonempty=True),
        Key("runner", "string", nonempty=True), Key("python", "string", nonempty=True),
        Key("env", "env"), Key("container", "table"), Key("slurm", "table"),
    ),
    "targets.*.container": (
        Key("engine", "string", choices=SLURM_ENGINES), Key("dockerfile", "string", nonempty=True, path="inside"),
        Key("image", "string", nonempty=True), Key("workdir", "string", path="absolute"),
        Key("gpus", "string"), Key("args", "strings"),
    ),
    "targets.*.slurm": (Key("args", "strings"), Key("warn_before", "numbers", low=1)),
    "sync": (
        Key("exclude", "strings"), Key("include", "strings"), Key("pull", "strings", path="inside"), Key("push_on_save", "boolean"),
        Key("max_file_size", "integer", low=0),
    ),
    "run": (Key("command", "string", nonempty=True), Key("stop_grace", "number", low=0, high=3600),
            Key("debug_wait", "number", low=1, high=86400), Key("keep", "integer", low=1, high=100000)),
}


def toml_type(v: Any) -> str:
    """What a TOML value is, in TOML's words."""
    if isinstance(v, bool):
        return f"a boolean ({str(v).lower()})"
    if isinstance(v, int):
        return f"a whole number ({v})"
    if isinstance(v, float):
        return f"a number ({v})"
    if isinstance(v, str):
        return f"a string ({v!r})"
    if isinstance(v, list):
        return "an array of tables" if v and all(isinstance(x, dict) for x in v) else "an array"
    if isinstance(v, dict):
        return "a table"
    if isinstance(v, (datetime.date, datetime.time)):
        return f"a date/time ({v})"
    return type(v).__name__


def inside_problem(value: str) -> str | None:
    """Why a path meant to be inside the project is not (None: it is)."""
    if value.startswith(("/", "~")) or re.match(r"^[A-Za-z]:[\\/]", value):
        return "must be a path inside the project, relative to its root (not absolute)"
    parts = [p for p in value.replace("\\", "/").split("/") if p not in ("", ".")]
    if ".." in parts:
        return "must be a path inside the project (no '..')"
    if not parts:
        return "must name a folder or file of the project, not its root"
    return None


class _Checker:
    def __init__(self, file: Path) -> None:
        self.file = str(file)

    def fail(self, key: str | None, problem: str) -> ConfigError:
        return ConfigError(self.file, key, problem)

    def table(self, value: Any, key: str, allowed: tuple[Key, ...]) -> dict[str, Any]:
        """The table at key, every known key checked; unknown keys are errors."""
        if not isinstance(value, dict):
            hint = " ([targets.NAME] tables)" if key == "targets" else (f" ([{key}])" if key else "")
            raise self.fail(key or None, f"must be a table{hint}, not {toml_type(value)}")
        names = {k.name: k for k in allowed}
        for k in value:
            if k not in names:
                raise self.fail(f"{key}.{k}" if key else k, f"unknown key (known: {', '.join(sorted(names))})")
        out = {}
        for spec in allowed:
            full = f"{key}.{spec.name}" if key else spec.name
            if spec.name not in value:
                if spec.required:
                    raise self.fail(full, "is required")
                continue
            out[spec.name] = self.value(spec, full, value[spec.name])
        return out

    def value(self, spec: Key, full: str, v: Any) -> Any:
        """v checked against spec: the value to use, or a ConfigError naming full."""
        kind = spec.kind
        if kind == "table":
            if not isinstance(v, dict):
                return self.table(v, full, ())   # the message for a wrong type
            return v
        if kind == "env":
            if not isinstance(v, dict) or not all(isinstance(x, str) for x in v.values()):
                raise self.fail(full, 'must be a table of strings, e.g. { CUDA_VISIBLE_DEVICES = "0" }')
            bad = [k for k in v if not ENV_NAME.match(k)]
            if bad:
                raise self.fail(f"{full}.{bad[0]}", "is not a variable name (letters, digits and _)")
            return dict(v)
        if kind == "strings":
            if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
                raise self.fail(full, f'must be an array of strings, e.g. ["a", "b"], not {toml_type(v)}')
            if spec.path == "inside":
                for item in v:
                    problem = inside_problem(item)
                    if problem:
                        raise self.fail(full, f"{item!r} {problem}")
            return tuple(v)
        if kind == "numbers":
            if not isinstance(v, list) or not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in v):
                raise self.fail(full, f"must be an array of numbers, e.g. [600, 60], not {toml_type(v)}")
            if any(x != x or x in (float("inf"), float("-inf")) for x in v):
                raise self.fail(full, "must hold finite numbers")
            if spec.low is not None and any(x < spec.low for x in v):
                raise self.fail(full, f"must hold numbers of {spec.low:g} or more, not {min(v)}")
            return tuple(float(x) for x in v)
        if kind == "boolean":
            if not isinstance(v, bool):
                raise self.fail(full, f"must be true or false, not {toml_type(v)}")
            return v
        if kind in ("integer", "number"):
            whole = kind == "integer"
            if isinstance(v, bool) or not isinstance(v, (int, float)) or (whole and not isinstance(v, int)):
                raise self.fail(full, f"must be a {'whole ' if whole else ''}number, not {toml_type(v)}")
            if v != v or v in (float("inf"), float("-inf")):
                raise self.fail(full, f"must be a finite number, not {v}")
            if spec.low is not None and v < spec.low or spec.high is not None and v > spec.high:
                if spec.high is None:
                    raise self.fail(full, f"must be {spec.low:g} or more, not {v}")
                raise self.fail(full, f"must be between {spec.low:g} and {spec.high:g}, not {v}")
            return v if whole else float(v)
        if not isinstance(v, str):
            raise self.fail(full, f"must be a string, not {toml_type(v)}")
        if spec.nonempty and not v.strip():
            raise self.fail(full, "must not be empty")
        if "\0" in v or "\n" in v:
            raise self.fail(full, "must be one line without NUL characters")
        if spec.choices and v not in spec.choices:
            raise self.fail(full, f"must be one of {', '.join(map(repr, spec.choices))}, not {v!r}")
        if spec.path == "inside":
            problem = inside_problem(v)
            if problem:
                raise self.fail(full, f"{v!r} {problem}")
        if spec.path == "absolute" and (not posixpath.isabs(v) or posixpath.normpath(v) == "/"):
            raise self.fail(full, f"must be an absolute folder inside the container (not '/'), not {v!r}")
        return v


def _target(c: _Checker, name: str, raw: Any) -> Target:
    p = f"targets.{name}"
    if not TARGET_NAME.match(name):
        raise c.fail(p, "a target name is letters, digits, '_', '.' and '-' (it names files and buffers)")
    t = c.table(raw, p, SCHEMA["targets.*"])
    remote_root = t["remote_root"]
    if remote_root.rstrip("/") in ("", "~") or remote_root.strip() in ("/", "~/"):
        raise c.fail(f"{p}.remote_root", f"{remote_root!r} is a whole home or root folder; name a project folder")
    container = ContainerConfig()
    if "container" in t:
        cp = f"{p}.container"
        ct = c.table(t["container"], cp, SCHEMA["targets.*.container"])
        container = ContainerConfig(**{k: v for k, v in ct.items()}, table=True)
        if container.dockerfile and container.image:
            raise c.fail(cp, "set either dockerfile or image, not both")
    # what a runner kind needs of these tables is its own check (runners/, check_runner)
    if container.engine == "pyxis" and container.dockerfile:
        raise c.fail(f"{p}.container.dockerfile", "pyxis runs an image, not a Dockerfile: set container.image")
    slurm = SlurmConfig()
    if "slurm" in t:
        slurm = SlurmConfig(**c.table(t["slurm"], f"{p}.slurm", SCHEMA["targets.*.slurm"]))
    plain = {k: v for k, v in t.items() if k not in ("container", "slurm")}
    return Target(name=name, **plain, container=container, slurm=slurm)


class RunnerCheck(Protocol):
    def check(self, target: Target) -> tuple[str, str] | None: ...


def check_runner(config: ProjectConfig, runners: Mapping[str, RunnerCheck]) -> None:
    """Every target's runner is a known kind (runners.RUNNERS, handed down by the engine's
    front-end) and has what that kind needs (its ``check``: the key below the target and
    the problem), else one line naming the file, the key and the problem (for an unknown
    kind: the known kinds)."""
    for t in config.targets.values():
        kind = runners.get(t.runner)
        if kind is None:
            raise ConfigError(str(config.file), f"targets.{t.name}.runner",
                              f"unknown runner {t.runner!r} (known: {', '.join(map(repr, runners))})")
        problem = kind.check(t)
        if problem is not None:
            raise ConfigError(str(config.file), f"targets.{t.name}.{problem[0]}", problem[1])


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
    except UnicodeDecodeError as e:
        raise c.fail(None, f"not valid TOML: not UTF-8 text ({e.reason} at byte {e.start})") from None
    top = c.table(raw, "", SCHEMA[""])
    targets_raw = top.get("targets", {})
    if not targets_raw:
        raise c.fail("targets", "no target defined; add a [targets.NAME] table with host and remote_root")
    targets = {name: _target(c, name, t) for name, t in targets_raw.items()}
    default = top.get("default_target", next(iter(targets)))
    if default not in targets:
        raise c.fail("default_target", f"no target named {default!r} (targets: {', '.join(targets)})")
    sync = SyncConfig(**c.table(raw.get("sync", {}), "sync", SCHEMA["sync"]))
    run = RunConfig(**c.table(raw.get("run", {}), "run", SCHEMA["run"]))
    return ProjectConfig(file=file, root=file.parent, targets=targets, default_target=default, sync=sync, run=run)


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
