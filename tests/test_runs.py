"""Runs through the engine against the real sshd: detached, streamed, stopped as a tree."""
from __future__ import annotations

import subprocess
import time

from conftest import events, wait_for


def run_exit(engine, run_id, timeout=30):
    return wait_for(lambda: next((e for e in events(engine, "RemoteDevRunExit") if e["id"] == run_id), None),
                    timeout, what=f"run {run_id} to exit")


def output_lines(engine, run_id):
    out = []
    for kind, p in engine.reports:
        if kind == "run_output" and p["id"] == run_id:
            out.extend(p["lines"])
    return out


def test_run_streams_output_and_exit_code(engine, make_project):
    proj = make_project()
    proj.write("main.py", "import sys\nfor i in range(3):\n    print('line', i)\nsys.exit(3)\n")
    res = engine.call_sync("run", {"cwd": str(proj.root)}, {"cmd": "python3 main.py"}, timeout=60)
    ex = run_exit(engine, res["id"])
    assert ex["code"] == 3
    assert output_lines(engine, res["id"]) == ["line 0", "line 1", "line 2"]
    assert (proj.remote_root / "main.py").exists()
