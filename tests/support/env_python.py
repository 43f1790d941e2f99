"""A remote's Python with a package the local side does not have: a venv (made once per
machine in the test bed's cache, beside the podman image) with more_itertools at a pinned
version, for :RemoteEnv.  The test venv running the tests lacks more_itertools, so a
definition that resolves, a breakpoint that binds, a frame that maps can only come through
the mirror.

`fresh_env(folder)` makes a venv without pip in a test's own folder (0.1 s), whose
site-packages a test may change as pip would.
"""
from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

from support.pythons import cached_venv

MORE_ITERTOOLS = "more-itertools==10.7.0"


def more_itertools_python() -> tuple[Path | None, str]:
    """(python of a venv with MORE_ITERTOOLS, "") or (None, why)."""
    key = f"env-more-itertools-{hashlib.sha256(MORE_ITERTOOLS.encode()).hexdigest()[:12]}"
    return cached_venv(key, Path(sys.executable), ["--no-deps", MORE_ITERTOOLS], timeout=300)


def site_packages(python: Path) -> Path:
    out = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                         capture_output=True, text=True, check=True, timeout=30)
    return Path(out.stdout.strip())


def fresh_env(folder: Path) -> Path:
    """A venv without pip at folder; its python."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(folder)], check=True, capture_output=True,
                   timeout=120)
    return folder / "bin" / "python"


def editable_install(python: Path, project: Path, dist: Path) -> None:
    """pip install -e project into python's venv, as pip does it: setuptools' PEP 660 hook
    builds the editable wheel (a flat layout: an import-hook finder, not a sys.path folder),
    then pip installs it."""
    subprocess.run([sys.executable, "-c", "import sys; from setuptools import build_meta; "
                    "build_meta.build_editable(sys.argv[1])", str(dist)], cwd=project, check=True,
                   capture_output=True, timeout=120)
    wheel = next(dist.glob("*.whl"))
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-index",
                    "--disable-pip-version-check", str(wheel)], check=True, capture_output=True, timeout=120)
