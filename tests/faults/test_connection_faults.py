"""Connections that go away under a run: sshd restarted (every connection cut, refused
for a moment) mid-run and mid-debug, Neovim killed mid-run, a debug run whose client never
comes.  Guarantees: the run goes on; no output line is lost or repeated; the debugger can
attach again; nothing is left running; one line per problem, nothing on screen."""
from __future__ import annotations

import os
import signal
import time

import pynvim

from conftest import MINIMAL_INIT, NVIM, events, wait_for

from .conftest import assert_guarantees, log_problems, quit_nvim

TICKS = 160
SLOW = f"import time\nfor i in range({TICKS}):\n    print('tick', i, flush=True)\n    time.sleep(0.05)\n"
RESTARTS = 3


def run_lines(eng, run_id: str) -> list[str]:
    return [ln for k, p in eng.reports if k == "run_output" and p["id"] == run_id for ln in p["lines"]]


def lost_and_repeated(lines: list[str], n: int = TICKS) -> tuple[int, int]:
    want = [f"tick {i}" for i in range(n)]
    seen = [ln for ln in lines if ln.startswith("tick ")]
    return len(set(want) - set(seen)), len(seen) - len(set(seen))


def test_sshd_restarted_mid_run(remote, fault_project, engines, screen, figures, isolated_state):
    proj = fault_project()
    proj.write("slow.py", SLOW)
    eng = engines.new()
    res = eng.call_sync("run", proj.ctx(), {"cmd": "python3 slow.py"}, timeout=60)
    failed: list[str] = []
    for i in range(RESTARTS):
        wait_for(lambda: len(run_lines(eng, res["id"])) >= 10 + 20 * i, 60, what="output before the restart")
        remote.restart_sshd(down=1.0)
    ex = wait_for(lambda: next((e for e in events(eng, "RemoteDevRunExit") if e["id"] == res["id"]), None), 120,
                  what="the run to end")
    lost, repeated = lost_and_repeated(run_lines(eng, res["id"]))
    if ex["code"] != 0:
        failed.append(f"exit {ex['code']}")
    if lost or repeated:
        failed.append(f"{lost} lines lost, {repeated} repeated")
    errors = [p["text"] for k, p in eng.reports if k == "message" and p["level"] == "error"]
    failed += [f"error message: {m}" for m in errors]
    failed += [f"on screen: {s}" for s in screen.seen()]
    failed += [f"in the log: {s}" for s in log_problems(isolated_state)]
    engines.close(eng)
    procs = remote.settle()
    figures.add("sshd restarted mid-run", remote.kind, RESTARTS, int(bool(failed)), len(procs),
                f"{TICKS} lines: {lost} lost, {repeated} repeated")
    assert not procs, remote.describe(procs)
    assert_guarantees(failed)


LOOP = '''\
import time


def work(i):
    return i * 2


for i in range(400):
    work(i)
    time.sleep(0.05)
print("done", flush=True)
'''


def test_sshd_restarted_mid_debug(remote, fault_project, nvim, dap, figures):
    """nvim-dap stopped at a breakpoint when every connection is cut: the program goes on
    without a debugger; once sshd is back, dap.run_last() attaches to the same run again."""
    proj = fault_project()
    main = proj.write("main.py", LOOP)
    dap.breakpoint(main, 5)
    nvim.open(proj.root, main)
    nvim.command("RemoteDebug python3 main.py")
    ready = nvim.wait_event("RemoteDevDebugReady", 120)
    assert dap.stopped(1)["run"] == ready["id"]
    before = int(dap.evaluate("i"))
    remote.restart_sshd(down=1.0)
    dap.wait_no_session(60)
    failed = []
    if [e for e in nvim.events("RemoteDevRunExit")]:
        failed.append("the run ended with the connection")
    time.sleep(0.5)
    dap.lua("require('dap').run_last()")
    frame = dap.stopped(2, timeout=120)
    if frame["run"] != ready["id"] or frame["line"] != 5:
        failed.append(f"attached again elsewhere: {frame}")
    elif int(dap.evaluate("i")) <= before:
        failed.append("the program did not go on without the debugger")
    dap.terminate()
    ex = nvim.wait_event("RemoteDevRunExit", 60, pred=lambda d: d["id"] == ready["id"])
    if ex["code"] == 0:
        failed.append("terminate did not stop the run")
    errors = [m for m in nvim.messages() if "error" in m.lower() or "Traceback" in m]
    failed += [f"message: {m}" for m in errors if "\n" in m.strip() or "internal error" in m]
    quit_nvim(nvim)
    procs = remote.settle()
    figures.add("sshd restarted mid-debug", remote.kind, 1, int(bool(failed)), len(procs),
                "stopped at a breakpoint; attached again with dap.run_last()")
    assert not procs, remote.describe(procs)
    assert_guarantees(failed)


def nvim_pid_of(api) -> int:
    return api.call("getpid")


def test_neovim_killed_mid_run(remote, fault_project, nvim_env, monkeypatch, figures):
    """SIGKILL of Neovim while a run streams: its Python host and the remote agent go away,
    the run goes on; a new Neovim attaches and gets every line once."""
    for k, v in nvim_env.items():
        monkeypatch.setenv(k, v)
    proj = fault_project()
    main = proj.write("slow.py", SLOW)
    argv = [NVIM, "--embed", "--headless", "-u", MINIMAL_INIT, "-i", "NONE", "-n"]
    api = pynvim.attach("child", argv=argv)
    pid = nvim_pid_of(api)
    api.command(f"cd {proj.root}")
    api.command(f"edit {main}")
    api.command("RemoteRun python3 slow.py")
    start = wait_for(lambda: [e for e in api.exec_lua("return _G.rd_events") if e["name"] == "RemoteDevRunStart"],
                     60)[0]["data"]
    run_id = start["id"]
    host = [p for p in children(pid)]
    os.kill(pid, signal.SIGKILL)
    try:
        api.close()
    except Exception:  # noqa: BLE001 - the pipe is gone
        pass
    failed = []
    gone = wait_for_gone(host, 15)
    if gone:
        failed.append(f"Python host still running 15 s after Neovim died: {gone}")
    agents_left = wait_for_empty(remote.agents, 15)
    if agents_left:
        failed.append(f"remote agents still running 15 s after Neovim died: {remote.describe(agents_left)}")
    api = pynvim.attach("child", argv=argv)
    try:
        api.command(f"cd {proj.root}")
        api.command(f"edit {main}")
        api.exec_lua("require('remote_dev').request('attach', { id = ... })", run_id)
        ex = wait_for(lambda: [e for e in api.exec_lua("return _G.rd_events") if e["name"] == "RemoteDevRunExit"],
                      60)[0]["data"]
        buf = next(b for b in api.buffers if b.name.endswith(run_id))
        lost, repeated = lost_and_repeated(buf[1:])
        if ex["code"] != 0 or lost or repeated:
            failed.append(f"exit {ex['code']}, {lost} lines lost, {repeated} repeated")
    finally:
        quit_nvim(api)
    procs = remote.settle()
    figures.add("Neovim killed mid-run", remote.kind, 1, int(bool(failed)), len(procs) + len(gone),
                f"{TICKS} lines: {lost} lost, {repeated} repeated in the new Neovim")
    assert not procs, remote.describe(procs)
    assert_guarantees(failed)


def children(pid: int) -> list[int]:
    out = []
    for p in os.listdir("/proc"):
        if p.isdigit():
            try:
                if int(open(f"/proc/{p}/stat").read().rsplit(")", 1)[1].split()[1]) == pid:
                    out.append(int(p))
            except (OSError, ValueError, IndexError):
                pass
    return out


def alive(pid: int) -> bool:
    try:
        state = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def wait_for_gone(pids: list[int], timeout: float) -> list[int]:
    deadline = time.monotonic() + timeout
    while True:
        left = [p for p in pids if alive(p)]
        if not left or time.monotonic() > deadline:
            for p in left:
                os.kill(p, signal.SIGKILL)
            return left
        time.sleep(0.1)


def wait_for_empty(what, timeout: float) -> list[int]:
    deadline = time.monotonic() + timeout
    while True:
        left = what()
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.1)


DEBUG_WAIT = 3


def debug_run_left_alone(proj, engines) -> str:
    """A debug run whose Neovim went away before any debugger attached: its id."""
    eng = engines.new()
    res = eng.call_sync("debug", proj.ctx(), {"cmd": "python3 main.py"}, timeout=120)
    engines.close(eng)          # the client is gone before any debugger attached
    return res["id"]


def ended(eng, proj, run_id: str, timeout: float) -> dict:
    return wait_for(lambda: next((r for r in eng.call_sync("runs", proj.ctx(), timeout=30)
                                  if r["id"] == run_id and r["state"] not in ("running", "starting")), None),
                    timeout, 0.5, what="the debug run to end")


def test_debug_run_whose_client_never_comes(remote, fault_project, engines, figures):
    """A debugged process waits for its debugger at most run.debug_wait seconds, then ends
    with one line saying so (exit 124): nothing waits forever on the remote for a Neovim
    that died.  And :RemoteStop (from a new Neovim) ends one waiting at once."""
    proj = fault_project(config_extra=f"[run]\ndebug_wait = {DEBUG_WAIT}\nstop_grace = 1\n")
    proj.write("main.py", "print('ran')\n")
    failed = []
    notes = []
    for how in ("bound", "stop"):
        run_id = debug_run_left_alone(proj, engines)
        t0 = time.monotonic()
        eng = engines.new()
        if how == "stop":
            eng.call_sync("stop", proj.ctx(), {"id": run_id}, timeout=60)
        info = ended(eng, proj, run_id, DEBUG_WAIT + 30)
        waited = time.monotonic() - t0
        lines = eng.call_sync("log", proj.ctx(), {"id": run_id}, timeout=30)["lines"]
        if "ran" in lines:
            failed.append(f"{how}: the program ran without a debugger")
        if how == "bound":
            said = [ln for ln in lines if "debug_wait" in ln]
            if len(said) != 1 or info["code"] != 124:
                failed.append(f"bound: not one line saying why it ended (exit {info['code']}): {lines[-3:]}")
        elif info["state"] != "stopped" or waited > DEBUG_WAIT:
            failed.append(f"stop: {info['state']} after {waited:.1f} s")
        notes.append(f"{how}: ended in {waited:.1f} s, exit {info['code']}")
        engines.close(eng)
    procs = remote.settle()
    figures.add("debug run whose client never comes", remote.kind, 2, len(failed), len(procs),
                f"run.debug_wait = {DEBUG_WAIT}; " + "; ".join(notes))
    assert not procs, remote.describe(procs)
    assert_guarantees(failed)
