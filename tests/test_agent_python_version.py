"""Everything that runs on the remote works on Python 3.8: checked by vermin (a real
tool reading the code), not by hand.  The check itself must fail on newer code."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import msgpack
import pytest
from conftest import require

from remote_dev import agent
from remote_dev.agent import MSGPACK_FILES

VERMIN = Path(sys.executable).with_name("vermin")
AGENT = Path(agent.__file__).resolve().parent


def vermin(*paths: Path) -> subprocess.CompletedProcess[str]:
    require(VERMIN.exists(), f"vermin (pip install -e .[test]) at {VERMIN}")
    # --eval-annotations: without `from __future__ import annotations` (3.7+) Python evaluates
    # them when a function is defined, so `list[int]` there fails on 3.8
    return subprocess.run([str(VERMIN), "-t=3.8-", "--violations", "--eval-annotations", "--no-tips",
                           *map(str, paths)],
                          capture_output=True, text=True, timeout=300)


def remote_sources(tmp_path: Path) -> list[Path]:
    """protocol.py, the remote package, the bootstrap (a string sent over ssh) and the
    msgpack files the zip carries."""
    bootstrap = tmp_path / "bootstrap.py"
    bootstrap.write_text(agent._BOOTSTRAP)
    msgpack_dir = Path(msgpack.__file__).parent
    return [AGENT / "protocol.py", AGENT / "remote", bootstrap, *(msgpack_dir / n for n in MSGPACK_FILES)]


def test_remote_code_needs_at_most_python_3_8(tmp_path):
    res = vermin(*remote_sources(tmp_path))
    assert res.returncode == 0, res.stdout + res.stderr
    assert "Target versions not met" not in res.stdout
    found = re.search(r"Minimum required versions: 3\.(\d+)", res.stdout)
    assert found and int(found.group(1)) <= 8, res.stdout
    # it looked at every module of the zip
    analyzed = re.search(r"Analyzing (\d+) files", res.stdout)
    assert analyzed and int(analyzed.group(1)) == len(list((AGENT / "remote").glob("*.py"))) + 2 + len(MSGPACK_FILES)


@pytest.mark.parametrize("code,version", [
    ("match x:\n    case 1:\n        pass\n", "3.10"),
    ("import math\nmath.lcm(2, 3)\n", "3.9"),
    ("def f(x: list[int]) -> None:\n    pass\nf([])\n", "3.9"),
    ("x = 'ab'.removeprefix('a')\n", "3.9"),
])
def test_the_check_fails_on_newer_python(tmp_path, code, version):
    bad = tmp_path / "bad.py"
    bad.write_text(code)
    res = vermin(bad)
    assert res.returncode == 1 and f"requires !2, {version}" in res.stdout, res.stdout
