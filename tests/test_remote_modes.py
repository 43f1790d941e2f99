"""What the plugin keeps on the remote is its user's alone: the cache folder and every run,
service, shell, allocation, debug and lock folder in it 0700, their files 0600 (0700 when
executable); what an earlier version left there (0755 folders, 0644 files) is tightened on
the first contact. (A second user trying to read them: tests/faults/test_attacker_faults.py.)"""
from __future__ import annotations

import shutil
import stat

from conftest import events, wait_for
from support.remote import loose_modes


def test_runs_are_private_and_older_folders_are_tightened_on_first_contact(engine, make_project, sshd):
    cache = sshd.remote_cache / "remote-dev"
    cache.mkdir(exist_ok=True)
    old = cache / "runs" / "0101-000000-old"
    old.mkdir(parents=True, exist_ok=True)
    (old / "spec.json").write_text('{"env": {"API_KEY": "x"}}')
    (old / "job.sh").write_text("#!/bin/sh\n")
    for p, mode in ((cache, 0o755), (cache / "runs", 0o755), (old, 0o755), (old / "spec.json", 0o644),
                    (old / "job.sh", 0o755)):
        p.chmod(mode)
    (cache / ".private-v1").unlink(missing_ok=True)   # as a version before this one left it
    try:
        proj = make_project()
        proj.write("main.py", "print('hi', flush=True)\n")
        res = engine.call_sync("run", {"cwd": str(proj.root)}, {"cmd": "python3 main.py"}, timeout=120)
        wait_for(lambda: any(e["id"] == res["id"] for e in events(engine, "RemoteDevRunExit")), 60)
        assert stat.S_IMODE(cache.stat().st_mode) == 0o700
        assert stat.S_IMODE((old / "job.sh").stat().st_mode) == 0o700       # still executable, by its owner only
        assert loose_modes(cache / "runs") == []
        assert (cache / ".private-v1").exists()
        assert all(r["id"] != old.name for r in engine.call_sync("runs", {"cwd": str(proj.root)}, timeout=60))
    finally:
        shutil.rmtree(old, ignore_errors=True)   # the cache is the session's
