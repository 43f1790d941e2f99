"""Fixtures of the fault suite: a remote as root and as an unprivileged user, projects on
it, engines closed once, and the figures table printed at the end of the session."""

from __future__ import annotations

import gc
import logging
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

from conftest import REPO, require
from support.remote import Remote, start_root_remote, start_user_remote, stop_remote
from support.sshd import SSHD

from .figures import FIGURES

REMOTE_KINDS = ["root", "user"]


def pytest_terminal_summary(terminalreporter: Any) -> None:
    text = FIGURES.table()
    if not text:
        return
    terminalreporter.section("remote_dev fault figures")
    terminalreporter.write_line(text)
    for path in FIGURES.write():
        terminalreporter.write_line(f"(written to {path})")


@pytest.fixture(scope="session", autouse=True)
def _figures_dir(tmp_path_factory: pytest.TempPathFactory) -> None:
    FIGURES.out_dir = tmp_path_factory.getbasetemp()


@pytest.fixture(scope="session")
def figures():
    return FIGURES


@pytest.fixture(scope="session")
def root_remote(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Remote]:
    require(os.path.exists(SSHD), f"OpenSSH server not installed ({SSHD}); scripts/setup installs it")
    r = start_root_remote(tmp_path_factory.mktemp("fault-root"))
    yield r
    stop_remote(r)


@pytest.fixture(scope="session")
def user_remote(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Remote]:
    require(os.path.exists(SSHD), f"OpenSSH server not installed ({SSHD}); scripts/setup installs it")
    require(os.geteuid() == 0, "the unprivileged remote user is made with useradd: run the tests as root")
    r = start_user_remote(tmp_path_factory.mktemp("fault-user"))
    yield r
    stop_remote(r)


@pytest.fixture(params=REMOTE_KINDS)
def remote(request: pytest.FixtureRequest) -> Iterator[Remote]:
    """The remote, as root and as an unprivileged user; whatever a failed test left on it
    is ended afterwards, so the next test starts clean."""
    r: Remote = request.getfixturevalue(f"{request.param}_remote")
    yield r
    r.kill_all()


@dataclass
class FaultProject:
    root: Path              # the local project
    remote_dir: Path        # its remote_root, on this machine
    remote_root: str        # as the config spells it
    remote: Remote

    def write(self, rel: str, data: str | bytes, mode: int | None = None) -> Path:
        p = self.root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(data, str):
            data = data.encode()
        p.write_bytes(data)
        if mode is not None:
            os.chmod(p, mode)
        return p

    def ctx(self) -> dict[str, str]:
        return {"cwd": str(self.root)}


@pytest.fixture
def fault_project(tmp_path: Path, remote: Remote) -> Callable[..., FaultProject]:
    def make(name: str = "proj", config_extra: str = "", target: dict[str, Any] | None = None) -> FaultProject:
        root = tmp_path / name
        root.mkdir()
        remote_root, remote_dir = remote.remote_root(f"{tmp_path.name}-{name}")
        (root / ".remote-dev.toml").write_text(remote.target_toml(remote_root, **(target or {})) + config_extra)
        return FaultProject(root, remote_dir, remote_root, remote)
    return make


class Engines:
    """Engines made by a test, each closed once (a second close waits for nothing)."""

    def __init__(self) -> None:
        self.open: list[Any] = []

    def new(self) -> Any:
        from remote_dev.actions import ACTIONS
        from remote_dev.engine import Engine
        from remote_dev.runners import RUNNERS

        reports: list[tuple[str, dict[str, Any]]] = []
        eng = Engine(report=lambda kind, payload: reports.append((kind, payload)), actions=ACTIONS, runners=RUNNERS)
        eng.reports = reports  # type: ignore[attr-defined]
        self.open.append(eng)
        return eng

    def close(self, eng: Any) -> None:
        if eng in self.open:
            self.open.remove(eng)
            eng.close()

    def close_all(self) -> None:
        for eng in list(self.open):
            self.close(eng)


@pytest.fixture
def engines() -> Iterator[Engines]:
    e = Engines()
    yield e
    e.close_all()


class Screen(logging.Handler):
    """What would reach the screen from the engine's process besides its messages: records
    of other loggers at WARNING and above (asyncio's "Future exception was never retrieved",
    "Task exception was never retrieved", unhandled loop errors)."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.records: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if not record.name.startswith("remote_dev"):
            self.records.append(f"{record.name}: {record.getMessage()}")

    def seen(self) -> list[str]:
        gc.collect()   # futures whose exception nobody read say so when collected
        return list(self.records)


@pytest.fixture
def screen() -> Iterator[Screen]:
    handler = Screen()
    root = logging.getLogger()
    root.addHandler(handler)
    yield handler
    root.removeHandler(handler)


def quit_nvim(nvim: Any) -> None:
    """:qa! as a user quits (the fixture's own quit after this finds it gone)."""
    try:
        nvim.command("qa!")
    except Exception:  # noqa: BLE001 - it exits while answering
        pass


def log_problems(state: Path) -> list[str]:
    """What remote-dev.log says went wrong unseen: errors no one awaited."""
    log = state / "remote-dev" / "remote-dev.log"
    text = log.read_text(errors="replace") if log.exists() else ""
    return sorted({ln[24:200] for ln in text.splitlines() if "never retrieved" in ln})


# Guarantees whose code another issue is changing now; a failure there is theirs to fix
# and is reported as an expected failure until their work has landed (see the report).
THEIRS: dict[str, str] = {}


def assert_guarantees(failed: list[str], theirs: dict[str, str] | None = None) -> None:
    """failed: problems found; those starting with a key of theirs are that owner's
    (reported, xfail), the others fail the test."""
    theirs = {**THEIRS, **(theirs or {})}
    owned = {p: next((o for k, o in theirs.items() if p.startswith(k)), None) for p in failed}
    mine = [p for p, o in owned.items() if o is None]
    assert not mine, "\n".join(mine)
    if failed:
        pytest.xfail("; ".join(sorted({o for o in owned.values() if o})) + ": " + " | ".join(failed[:6]))


CLI = str(Path(sys.executable).parent / "remote-dev")


def cli(proj: FaultProject, *args: str, state: Path, timeout: float = 120, **kw: Any) -> subprocess.CompletedProcess[str]:
    """`remote-dev -C ROOT ARGS` as a user types it, with the test's state folder."""
    env = {**os.environ, "XDG_STATE_HOME": str(state)}
    return subprocess.run([CLI, "-C", str(proj.root), *args], capture_output=True, text=True, timeout=timeout,
                          env=env, **kw)


def screen_problems(stderr: str) -> list[str]:
    """Lines of CLI stderr that are not one clear message: tracebacks, asyncio's
    complaints, more than one line."""
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    bad = [ln for ln in lines if any(w in ln for w in ("Traceback", "never retrieved", "Exception ignored",
                                                       "Error in", "internal error"))]
    if len(lines) > 1:
        bad.append(f"{len(lines)} lines on stderr: {lines[:5]}")
    return bad


__all__ = ["REPO", "FaultProject", "Engines", "Screen", "assert_guarantees", "cli", "log_problems", "quit_nvim",
           "screen_problems"]
