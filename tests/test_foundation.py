"""Foundation: config, SSH + agent against a real sshd, status, errors."""
from __future__ import annotations

import statistics
import subprocess
import time

import pytest

from remote_dev.errors import RemoteDevError


def test_status_connects_and_reports(engine, make_project, sshd):
    proj = make_project()
    st = engine.call_sync("status", {"cwd": str(proj.root)}, timeout=60)
    assert st["connected"] is True
    assert st["target"] == "test" and st["host"] == sshd.alias
    assert st["remote_root"] == str(proj.remote_root)
    assert st["python"].startswith("3.")
    assert st["agent"] == "1"
    assert st["rtt_ms"] is not None and st["rtt_ms"] < 1000
