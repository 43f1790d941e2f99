"""Runs through the engine against the real sshd: detached, streamed, stopped as a tree."""
from __future__ import annotations

import json

import pytest
from conftest import events, run_processes, wait_for

from remote_dev.errors import RemoteDevError


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


STUBBORN = r'''
import os, signal, subprocess, sys, time
signal.signal(signal.SIGINT, signal.SIG_IGN)
if len(sys.argv) == 1:
    # a child in its own session, and a double-forked grandchild: both ignore SIGINT
    subprocess.Popen([sys.executable, __file__, "child"], start_new_session=True)
    if os.fork() == 0:
        if os.fork() == 0:
            os.setsid()
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            time.sleep(300)
        os._exit(0)
print("started", flush=True)
time.sleep(300)
'''


def test_stop_leaves_no_process(engine, make_project):
    proj = make_project(config_extra="[run]\nstop_grace = 0.5\n")
    proj.write("stubborn.py", STUBBORN)
    res = engine.call_sync("run", {"cwd": str(proj.root)}, {"cmd": "python3 stubborn.py"}, timeout=60)
    wait_for(lambda: "started" in output_lines(engine, res["id"]), 20, what="program start")
    wait_for(lambda: len(run_processes(res["id"])) >= 4, 10, what="children")  # sh?, main, child, grandchild
    engine.call_sync("stop", {"cwd": str(proj.root)}, {"id": res["id"]}, timeout=60)
    ex = run_exit(engine, res["id"])
    assert ex["code"] != 0
    assert run_processes(res["id"]) == []


def messages(engine):
    return [p["text"] for kind, p in engine.reports if kind == "message"]


def test_stop_of_an_ended_run_says_so_and_the_live_run_goes_on(engine, make_project):
    """:RemoteStop in the log buffer of a run that ended: it says that run had ended and
    which run :RemoteStop would stop; the live run keeps running and can still be stopped."""
    proj = make_project()
    ctx = {"cwd": str(proj.root)}
    proj.write("quick.py", "print('done')\n")
    proj.write("slow.py", "import time\nprint('started', flush=True)\ntime.sleep(300)\n")
    ended = engine.call_sync("run", ctx, {"cmd": "python3 quick.py"}, timeout=60)
    assert run_exit(engine, ended["id"])["code"] == 0
    live = engine.call_sync("run", ctx, {"cmd": "python3 slow.py"}, timeout=60)
    wait_for(lambda: "started" in output_lines(engine, live["id"]), 20, what="the slow run to start")
    engine.call_sync("stop", ctx, {"id": ended["id"]}, timeout=60)
    said = messages(engine)[-1]
    assert said.startswith(f"run {ended['id']} had already ended (exited, exit 0)"), said
    assert f":RemoteStop {live['id']} stops the live run (python3 slow.py)" in said
    assert not any(m == f"run {ended['id']} stopped" for m in messages(engine))
    assert run_processes(live["id"]), "the live run still runs"
    engine.call_sync("stop", ctx, {}, timeout=60)
    assert run_exit(engine, live["id"])["code"] != 0
    assert messages(engine)[-1] == f"run {live['id']} stopped"


def test_run_survives_engine_restart_and_reattach_gets_everything(make_project, sshd):
    from remote_dev.actions import ACTIONS
    from remote_dev.engine import Engine

    proj = make_project()
    proj.write("slow.py", "import time\nfor i in range(30):\n    print('tick', i)\n    time.sleep(0.05)\n")
    eng1 = Engine(actions=ACTIONS)
    res = eng1.call_sync("run", {"cwd": str(proj.root)}, {"cmd": "python3 slow.py"}, timeout=60)
    eng1.close()  # like :qa!: the connection goes away mid-run
    reports = []
    eng2 = Engine(report=lambda k, p: reports.append((k, p)), actions=ACTIONS)
    try:
        listed = eng2.call_sync("runs", {"cwd": str(proj.root)}, timeout=60)
        assert any(r["id"] == res["id"] for r in listed)
        eng2.call_sync("attach", {"cwd": str(proj.root)}, {"id": res["id"]}, timeout=60)
        eng2.reports = reports
        ex = run_exit(eng2, res["id"])
        assert ex["code"] == 0
        assert output_lines(eng2, res["id"]) == [f"tick {i}" for i in range(30)]
    finally:
        eng2.close()


def test_dropped_connection_loses_and_repeats_no_line(engine, make_project):
    proj = make_project()
    proj.write("slow.py", "import time\nfor i in range(40):\n    print('tick', i)\n    time.sleep(0.05)\n")
    res = engine.call_sync("run", {"cwd": str(proj.root)}, {"cmd": "python3 slow.py"}, timeout=60)
    wait_for(lambda: len(output_lines(engine, res["id"])) >= 5, 20)

    async def cut():
        for p in engine.projects.values():
            for s in p.sessions.values():
                s.conn.abort()
    engine.submit(cut()).result(10)
    ex = run_exit(engine, res["id"])
    assert ex["code"] == 0
    assert output_lines(engine, res["id"]) == [f"tick {i}" for i in range(40)]


def test_progress_bars_collapse_and_ansi_is_stripped(engine, make_project):
    proj = make_project()
    proj.write("bar.py", "import sys\nfor i in range(5):\n    sys.stdout.write(f'\\r\\x1b[32m{i*25}%\\x1b[0m')\n"
                         "    sys.stdout.flush()\nprint()\nprint('\\x1b[1mdone\\x1b[0m')\n")
    res = engine.call_sync("run", {"cwd": str(proj.root)}, {"cmd": "python3 bar.py"}, timeout=60)
    run_exit(engine, res["id"])
    assert output_lines(engine, res["id"]) == ["100%", "done"]


EARLY_ERROR_THEN_WAIT = '''\
import time
import traceback


def load():
    raise ValueError("bad row")


try:
    load()
except ValueError:
    traceback.print_exc()
print("waiting", flush=True)
while True:
    time.sleep(0.05)
'''


def test_stopped_run_quickfix_has_what_it_printed_before_the_stop(engine, make_project):
    """A run stopped by the user: quickfix holds what the program printed before the stop,
    not the KeyboardInterrupt traceback the stop made it print."""
    proj = make_project()
    proj.write("main.py", EARLY_ERROR_THEN_WAIT)
    ctx = {"cwd": str(proj.root)}
    res = engine.call_sync("run", ctx, {"cmd": "python3 main.py"}, timeout=60)
    wait_for(lambda: "waiting" in output_lines(engine, res["id"]), 20, what="program waiting")
    engine.call_sync("stop", ctx, {"id": res["id"]}, timeout=60)
    run_exit(engine, res["id"])
    assert any("KeyboardInterrupt" in ln for ln in output_lines(engine, res["id"]))   # it was printed...
    final = next(p for k, p in engine.reports if k == "run_state" and p["id"] == res["id"] and p.get("final"))
    assert final["state"] == "stopped" and final["stopped_by"] == ":RemoteStop"
    assert [(e["lnum"], e["text"]) for e in final["quickfix"] if e.get("filename")] == [
        (10, "in <module>: load()"), (6, "ValueError: bad row (in load)")]   # ...but is not in quickfix


def test_cli_log_prints_the_output(engine, make_project, isolated_state, tmp_path):
    import os
    import subprocess
    import sys
    import tempfile
    from pathlib import Path

    proj = make_project()
    proj.write("main.py", "print('\\x1b[32mgreen\\x1b[0m')\nprint('last line')\n")
    res = engine.call_sync("run", {"cwd": str(proj.root)}, {"cmd": "python3 main.py"}, timeout=60)
    run_exit(engine, res["id"])
    before = set(os.listdir(tempfile.gettempdir()))
    exe = str(Path(sys.executable).parent / "remote-dev")
    out = subprocess.run([exe, "-C", str(proj.root), "log", res["id"]], capture_output=True, text=True, timeout=60,
                         env={**os.environ, "XDG_STATE_HOME": str(isolated_state)})
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].startswith(f"# remote_dev run {res['id']}: python3 main.py  (exited, exit 0)")
    assert lines[1:] == ["green", "last line"]
    assert not [n for n in set(os.listdir(tempfile.gettempdir())) - before if res["id"] in n]   # no file made


def test_a_file_over_the_size_limit_is_told_once_per_change_and_in_status(engine, make_project):
    proj = make_project(config_extra="[sync]\nmax_file_size = 1000\n")
    ctx = {"cwd": str(proj.root)}
    proj.write("main.py", "print('ok')\n")
    proj.write("weights.bin", b"\0" * 5000)

    def run_told() -> list[str]:
        seen = len(messages(engine))
        res = engine.call_sync("run", ctx, {"cmd": "python3 main.py"}, timeout=60)
        assert run_exit(engine, res["id"])["code"] == 0
        return [m for m in messages(engine)[seen:] if "weights.bin" in m]

    first = run_told()
    assert len(first) == 1 and "over sync.max_file_size" in first[0]
    assert run_told() == [] and run_told() == []
    status = engine.call_sync("status", ctx, {"refresh": False}, timeout=30)
    assert status["last_push"]["too_large"] == [{"path": "weights.bin", "size": 5000}]
    assert "not pushed  weights.bin (0.0 MB): over sync.max_file_size" in status["lines"]
    proj.write("weights.bin", b"\0" * 6000)   # it changed: told again, once
    assert len(run_told()) == 1 and run_told() == []
    proj.write("weights.bin", b"\0" * 10)     # it fits now: pushed, no longer listed
    assert run_told() == []
    assert (proj.remote_root / "weights.bin").stat().st_size == 10
    status = engine.call_sync("status", ctx, {"refresh": False}, timeout=30)
    assert status["last_push"]["too_large"] == []


def run_folders(sshd, remote_root):
    """The run folders on the remote of the project at remote_root."""
    runs = sshd.remote_cache / "remote-dev" / "runs"
    out = []
    for d in runs.iterdir():
        try:
            spec = json.loads((d / "spec.json").read_text())
        except FileNotFoundError:   # a folder the keep rule is deleting as we look
            continue
        if spec["root"] == str(remote_root):
            out.append(d.name)
    return sorted(out)


def test_keep_leaves_that_many_ended_runs_and_never_a_live_one(engine, make_project, sshd):
    proj = make_project(config_extra="[run]\nkeep = 3\n")
    ctx = {"cwd": str(proj.root)}
    proj.write("main.py", "print('ok')\n")
    proj.write("slow.py", "import time\nprint('started', flush=True)\ntime.sleep(300)\n")
    live = engine.call_sync("run", ctx, {"cmd": "python3 slow.py"}, timeout=60)
    wait_for(lambda: "started" in output_lines(engine, live["id"]), 20, what="the slow run to start")
    ended = []
    for _ in range(7):
        res = engine.call_sync("run", ctx, {"cmd": "python3 main.py"}, timeout=60)
        assert run_exit(engine, res["id"])["code"] == 0
        ended.append(res["id"])
    wait_for(lambda: run_folders(sshd, proj.remote_root) == sorted([live["id"], *ended[-3:]]), 20,
             what=f"3 ended runs and the live one: {run_folders(sshd, proj.remote_root)}")
    listed = engine.call_sync("runs", ctx, {}, timeout=30)
    assert sorted(r["id"] for r in listed) == sorted([live["id"], *ended[-3:]])
    # :RemoteRuns D: an ended run's folder goes; a live one is refused
    engine.call_sync("run_delete", ctx, {"id": ended[-1]}, timeout=30)
    assert ended[-1] not in run_folders(sshd, proj.remote_root)
    with pytest.raises(RemoteDevError, match=f"run {live['id']} is running: stop it first"):
        engine.call_sync("run_delete", ctx, {"id": live["id"]}, timeout=30)
    assert live["id"] in run_folders(sshd, proj.remote_root)
    engine.call_sync("stop", ctx, {"id": live["id"]}, timeout=60)
