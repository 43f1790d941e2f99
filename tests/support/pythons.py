"""The other Pythons of the test bed (pyenv keeps 3.6-3.13 beside the one running the tests):
a remote's `python` is set to one of them to try remote_dev on every Python it promises.

`python_env(minor)` makes (once per machine, in the test bed's cache, beside the podman
image) a venv of that Python with what a remote's users have installed for
:RemoteKernel -- ipykernel, at the versions of locks/remote-kernel.txt (hashes checked).
"""
from __future__ import annotations

import hashlib
import shutil
import subprocess
from pathlib import Path
from typing import Callable

from support.podman import _locked, cache_dir

REPO = Path(__file__).resolve().parent.parent.parent
KERNEL_LOCK = REPO / "locks" / "remote-kernel.txt"
PROMISED = (8, 9, 10, 11, 12, 13)     # the README's remote Pythons: 3.8 and newer


def pyenv_python(minor: int) -> Path | None:
    """The newest pyenv Python 3.minor of this machine, or None."""
    def patch(p: Path) -> int:
        last = p.parent.parent.name.split(".")[-1]
        return int(last) if last.isdigit() else -1
    found = sorted(Path.home().glob(f".pyenv/versions/3.{minor}.*/bin/python3"), key=patch)
    return found[-1] if found else None


def cached_venv(key: str, base_python: Path, pip_args: list[str], timeout: float = 600,
                check: Callable[[Path], str] | None = None) -> tuple[Path | None, str]:
    """(python of a venv of base_python with `pip install *pip_args` in it, "") or (None,
    why): made once per machine in the test bed's cache, in the folder key (name the
    contents in it: a new key makes a new venv).  check(python): "" when the new venv is
    usable, else why not (then it is made again next time)."""
    base = cache_dir() / key
    python, done = base / "bin" / "python", base / ".complete"
    if done.exists():
        return python, ""
    with _locked(cache_dir() / f"{key}.lock"):
        if done.exists():
            return python, ""
        shutil.rmtree(base, ignore_errors=True)   # an interrupted earlier attempt
        try:
            subprocess.run([str(base_python), "-m", "venv", str(base)], check=True, capture_output=True, timeout=120)
            res = subprocess.run([str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check", *pip_args],
                                 capture_output=True, text=True, timeout=timeout)
        except (OSError, subprocess.SubprocessError) as e:
            return None, f"making the venv {key} failed: {e}"
        if res.returncode != 0:
            return None, f"pip install {' '.join(pip_args)} into {key} failed: {(res.stderr or res.stdout)[-800:]}"
        why = check(python) if check else ""
        if why:
            return None, why
        done.write_text("ok")
    return python, ""


def python_env(minor: int) -> tuple[Path | None, str]:
    """(python of a venv of Python 3.minor with ipykernel, "") or (None, why)."""
    base_python = pyenv_python(minor)
    if base_python is None:
        return None, f"no Python 3.{minor} under ~/.pyenv/versions"
    digest = hashlib.sha256(KERNEL_LOCK.read_bytes()).hexdigest()[:12]
    return cached_venv(f"python-3.{minor}-{digest}", base_python, ["--require-hashes", "-r", str(KERNEL_LOCK)])
