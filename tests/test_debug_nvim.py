""":RemoteDebug with the REAL nvim-dap (../shared/vendor/nvim-dap) in real headless Neovim,
runner = "process": every user flow, driven through nvim-dap's Lua API (support/nvim_dap.py).
The container and Slurm runners run a representative subset (test_container.py,
test_slurm.py) with the same helpers."""
from __future__ import annotations

import socket

from conftest import run_processes, wait_for

from test_debug import FAILING_UTIL, UTIL, debug_project, listening_addresses


def start(nvim, proj, main, command="python3 main.py"):
    nvim.open(proj.root, main)
    nvim.command(f"RemoteDebug {command}")


def run_exit(nvim, run_id, timeout=90):
    return nvim.wait_event("RemoteDevRunExit", timeout, pred=lambda d: d["id"] == run_id)


def run_buffer(nvim, run_id):
    return wait_for(lambda: next((b for b in nvim.buffers if b.name == f"remote-dev://run/{run_id}"), None), 10)


def run_quickfix(nvim, run_id):
    """The quickfix list of the run (titled with its id), once it is set."""
    def find():
        for nr in range(1, nvim.call("getqflist", {"nr": "$"})["nr"] + 1):
            qf = nvim.call("getqflist", {"nr": nr, "title": 1, "items": 1})
            if qf["title"].startswith(run_id):
                return qf
        return None
    return wait_for(find, 10, what=f"the quickfix list of {run_id}")


def local_listener_closed(port):
    try:
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
        return False
    except OSError:
        return True


def assert_no_debugger_text(items):
    for item in items:
        text = item["text"]
        assert not any(w in text for w in ("debugpy", "pydevd", "runpy", "threading.py", "KeyboardInterrupt")), item


def test_breakpoint_step_evaluate_and_natural_end(nvim, dap, make_project):
    proj, main, util = debug_project(make_project)
    dap.breakpoint(main, 7)                         # total = util.add(total, i)
    start(nvim, proj, main)
    ready = nvim.wait_event("RemoteDevDebugReady", 120)
    frame = dap.stopped(1)
    assert (frame["path"], frame["line"], frame["run"]) == (str(main), 7, ready["id"])
    assert dap.evaluate("i") == "0"
    dap.step_into()
    frame = dap.stopped(2)
    assert (frame["path"], frame["line"], frame["name"]) == (str(util), 2, "add")
    dap.step_over()
    frame = dap.stopped(3)
    assert (frame["path"], frame["line"]) == (str(util), 3)
    assert dap.evaluate("result") == "0"
    assert dap.evaluate("a + b + 100") == "100"
    dap.clear_breakpoints()
    dap.continue_()
    ex = run_exit(nvim, ready["id"])
    assert ex["code"] == 0                          # the program's own exit: nothing signalled it
    buf = run_buffer(nvim, ready["id"])
    assert buf[0].startswith("✓ exited (exit 0)") and "total 3" in buf[:]
    assert not any("KeyboardInterrupt" in ln for ln in buf[:])
    assert run_quickfix(nvim, ready["id"])["items"] == []
    dap.wait_no_session()
    assert local_listener_closed(ready["port"])


def flow_breakpoint_evaluate_natural_end(nvim, dap, proj, main, util, timeout=120, command="python3 main.py"):
    """A breakpoint on the local file is hit, evaluate works, continue runs to the end: the
    program's own exit code 0, no quickfix entry, the session and the listener gone."""
    dap.breakpoint(util, 2)
    start(nvim, proj, main, command)
    ready = nvim.wait_event("RemoteDevDebugReady", timeout)
    frame = dap.stopped(1, timeout)
    assert (frame["path"], frame["line"], frame["run"]) == (str(util), 2, ready["id"])
    assert dap.evaluate("a + b + 100") == "100"
    dap.clear_breakpoints()
    dap.continue_()
    ex = run_exit(nvim, ready["id"], timeout)
    assert ex["code"] == 0
    buf = run_buffer(nvim, ready["id"])
    assert "✓ exited (exit 0)" in buf[0] and "total 3" in buf[:]
    assert run_quickfix(nvim, ready["id"])["items"] == []
    dap.wait_no_session()
    assert local_listener_closed(ready["port"])
    return ready


def flow_terminate(nvim, dap, proj, main, util, timeout=120):
    """dap.terminate() while stopped at a breakpoint stops the run like :RemoteStop: shown as
    stopped by the debugger, no quickfix entry (not the interrupt's traceback), the session
    and the listener gone."""
    dap.breakpoint(util, 2)
    start(nvim, proj, main)
    ready = nvim.wait_event("RemoteDevDebugReady", timeout)
    dap.stopped(1, timeout)
    dap.terminate()
    ex = run_exit(nvim, ready["id"], timeout)
    assert ex["code"] != 0
    buf = run_buffer(nvim, ready["id"])
    assert "■ stopped by dap terminate (exit " in buf[0], buf[0]
    assert run_quickfix(nvim, ready["id"])["items"] == []
    dap.wait_no_session()
    assert local_listener_closed(ready["port"])
    return ready


def test_terminate_from_nvim_dap_stops_the_run(nvim, dap, make_project):
    proj, main, util = debug_project(make_project)
    ready = flow_terminate(nvim, dap, proj, main, util)
    wait_for(lambda: run_processes(ready["id"]) == [], 30, what="no process of the run left")


def test_remote_stop_during_a_session(nvim, dap, make_project):
    proj, main, util = debug_project(make_project)
    dap.breakpoint(util, 2)
    start(nvim, proj, main)
    ready = nvim.wait_event("RemoteDevDebugReady", 120)
    dap.stopped(1)
    nvim.command("RemoteStop")
    ex = run_exit(nvim, ready["id"])
    assert ex["code"] != 0
    assert run_buffer(nvim, ready["id"])[0].startswith("■ stopped by :RemoteStop (exit ")
    assert run_quickfix(nvim, ready["id"])["items"] == []
    dap.wait_no_session()
    wait_for(lambda: run_processes(ready["id"]) == [], 30, what="no process of the run left")
    assert local_listener_closed(ready["port"])


def flow_restart(nvim, dap, proj, main, util, timeout=120):
    """dap.restart() while stopped: the run is stopped, the tree pushed (an edit made
    meanwhile is in), the same command debugged again and attached, stopping at the same
    breakpoint; the new run then ends on its own with 0."""
    dap.breakpoint(util, 2)
    start(nvim, proj, main)
    first = nvim.wait_event("RemoteDevDebugReady", timeout)
    assert dap.stopped(1, timeout)["run"] == first["id"]
    util.write_text(UTIL.replace("result = a + b", "result = a + b + 1000"))   # edited before restarting
    dap.restart()
    assert run_exit(nvim, first["id"], timeout)["code"] != 0      # the first run was stopped...
    assert "■ stopped by dap terminate" in run_buffer(nvim, first["id"])[0]
    frame = dap.stopped(2, timeout)                                # ...and the same command runs again, attached
    second = frame["run"]
    assert second and second != first["id"]
    starts = [e["data"] for e in nvim.events("RemoteDevRunStart")]
    assert [s["cmd"] for s in starts] == ["python3 main.py", "python3 main.py"] and starts[1]["id"] == second
    assert (frame["path"], frame["line"]) == (str(util), 2)
    dap.step_over()
    dap.stopped(3, timeout)
    assert dap.evaluate("result") == "1000"                        # the restart pushed the edit
    dap.clear_breakpoints()
    dap.continue_()
    assert run_exit(nvim, second, timeout)["code"] == 0
    assert "total 3003" in run_buffer(nvim, second)[:]
    assert run_quickfix(nvim, first["id"])["items"] == [] and run_quickfix(nvim, second)["items"] == []
    dap.wait_no_session()
    return first["id"], second


def test_restart_runs_the_command_again_and_attaches(nvim, dap, make_project):
    proj, main, util = debug_project(make_project)
    flow_restart(nvim, dap, proj, main, util)


def test_conditional_breakpoint_and_logpoint(nvim, dap, make_project):
    proj, main, util = debug_project(make_project)
    dap.breakpoint(util, 2, condition="b == 2")
    dap.breakpoint(util, 3, log="sum={result}")
    start(nvim, proj, main)
    ready = nvim.wait_event("RemoteDevDebugReady", 120)
    frame = dap.stopped(1)
    assert (frame["path"], frame["line"]) == (str(util), 2)
    assert dap.evaluate("(a, b)") == "(1, 2)"               # only the call the condition picks
    dap.continue_()
    assert run_exit(nvim, ready["id"])["code"] == 0
    assert dap.lua("return T.stops") == 1
    logged = "".join(dap.outputs())
    assert "sum=0\n" in logged and "sum=1\n" in logged and "sum=3\n" in logged, dap.outputs()
    assert run_quickfix(nvim, ready["id"])["items"] == []


def flow_uncaught_exception(nvim, dap, proj, main, util, timeout=120):
    """An uncaught exception stops the session where it was raised (exception breakpoints);
    continuing ends the program with Python's own code 1; quickfix holds the program's
    frames only (no runpy/debugpy/pydevd frame), at the local files."""
    dap.lua("require('dap').defaults.remote_dev.exception_breakpoints = { 'uncaught' }")
    start(nvim, proj, main)
    ready = nvim.wait_event("RemoteDevDebugReady", timeout)
    frame = dap.stopped(1, timeout)
    assert frame["reason"] == "exception"
    assert (frame["path"], frame["line"]) == (str(util), 3)
    assert dap.evaluate("b") == "2"
    dap.continue_()
    ex = run_exit(nvim, ready["id"], timeout)
    assert ex["code"] == 1
    qf = run_quickfix(nvim, ready["id"])
    located = [(nvim.call("bufname", i["bufnr"]), i["lnum"]) for i in qf["items"] if i["valid"]]
    assert [(nvim.call("fnamemodify", f, ":p"), n) for f, n in located] == [
        (str(main), 11), (str(main), 7), (str(util), 3)]
    assert "ValueError: cannot add 2" in qf["items"][-1]["text"]
    assert_no_debugger_text(qf["items"])
    dap.wait_no_session()
    return qf


def test_uncaught_exception_stops_and_quickfix_holds_only_the_program(nvim, dap, make_project):
    proj, main, util = debug_project(make_project, util=FAILING_UTIL)
    qf = flow_uncaught_exception(nvim, dap, proj, main, util)
    assert len(qf["items"]) == 3      # nothing but the program's three frames


def test_remote_debug_without_nvim_dap_says_how_to_install(nvim, make_project):
    proj = make_project()
    proj.write("main.py", "")
    nvim.open(proj.root, proj.root / "main.py")
    try:
        nvim.command("RemoteDebug")
    except Exception:  # noqa: BLE001 - the error message is also raised to the client
        pass
    err = nvim.wait_event("RemoteDevError", 10)
    assert "nvim-dap is not installed" in err["message"] and "mfussenegger/nvim-dap" in err["message"]


LOOP = '''\
import time


def work(i):
    return i * 2


for i in range(600):
    work(i)
    time.sleep(0.05)
print("done", flush=True)
'''


def test_close_detaches_and_run_last_attaches_again(nvim, dap, make_project):
    """dap.close() leaves the program running without a debugger; dap.run_last() attaches
    to the same run again while it goes on."""
    proj = make_project()
    main = proj.write("main.py", LOOP)
    dap.breakpoint(main, 5)
    start(nvim, proj, main)
    ready = nvim.wait_event("RemoteDevDebugReady", 120)
    assert dap.stopped(1)["run"] == ready["id"]
    before = int(dap.evaluate("i"))
    dap.lua("require('dap').close()")
    dap.wait_no_session()
    assert not [e for e in nvim.events("RemoteDevRunExit")]      # it goes on
    dap.lua("require('dap').run_last()")
    frame = dap.stopped(2)
    assert (frame["run"], frame["line"]) == (ready["id"], 5)
    assert int(dap.evaluate("i")) > before
    assert [e["data"]["id"] for e in nvim.events("RemoteDevRunStart")] == [ready["id"]]   # no new run
    dap.terminate()
    assert run_exit(nvim, ready["id"])["code"] != 0


def test_attach_to_a_debugpy_the_user_started(nvim, dap, make_project):
    """:RemoteDebug --attach {port}: nvim-dap through a forward to a debugpy that a plain
    :RemoteRun started on the remote's 127.0.0.1 (the debugpy of the tests' environment)."""
    import os

    import debugpy
    from support.sshd import free_port

    proj, main, util = debug_project(make_project)
    port = free_port()
    dap.breakpoint(util, 2)
    nvim.open(proj.root, main)
    site = os.path.dirname(os.path.dirname(debugpy.__file__))
    nvim.command(f"RemoteRun PYTHONPATH={site} python3 -Xfrozen_modules=off -m debugpy "
                 f"--listen 127.0.0.1:{port} --wait-for-client main.py")
    run_id = nvim.wait_event("RemoteDevRunStart", 60)["id"]
    wait_for(lambda: listening_addresses(port), 60, what="debugpy listening")   # not connecting: that is a client
    nvim.command(f"RemoteDebug --attach {port}")
    frame = dap.stopped(1)
    assert (frame["path"], frame["line"], frame.get("run")) == (str(util), 2, None)
    assert dap.evaluate("a + b + 100") == "100"
    dap.clear_breakpoints()
    dap.continue_()
    assert run_exit(nvim, run_id)["code"] == 0
    dap.wait_no_session()


TESTS = '''\
from pkg import util


def test_add():
    total = util.add(1, 2)
    assert total == 4
'''


def test_pytest_under_the_debugger(nvim, dap, make_project):
    """`:RemoteDebug pytest ...` (runs as `-m pytest` under debugpy): a breakpoint in a test
    is hit; the failing suite ends with pytest's own exit code 1 and quickfix holds its
    failure at the local test file, nothing of threading or the debugger."""
    import os

    import pytest as pytest_mod

    proj, main, util = debug_project(make_project)
    tests = proj.write("tests/test_util.py", TESTS)
    dap.breakpoint(tests, 6)
    site = os.path.dirname(os.path.dirname(pytest_mod.__file__))   # pytest for the remote python
    start(nvim, proj, tests, f"PYTHONPATH={site}:. pytest -q -p no:cacheprovider tests/test_util.py")
    ready = nvim.wait_event("RemoteDevDebugReady", 120)
    frame = dap.stopped(1)
    assert (frame["path"], frame["line"]) == (str(tests), 6)
    assert dap.evaluate("total") == "3"
    dap.continue_()
    assert run_exit(nvim, ready["id"])["code"] == 1
    qf = run_quickfix(nvim, ready["id"])
    located = [(nvim.call("fnamemodify", nvim.call("bufname", i["bufnr"]), ":p"), i["lnum"])
               for i in qf["items"] if i["valid"]]
    assert located and set(located) == {(str(tests), 6)}, qf["items"]
    assert_no_debugger_text(qf["items"])
    dap.wait_no_session()
