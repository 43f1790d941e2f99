"""A push cut after the agent carried out its writes but before their answers came back
(a TCP reset, through a real sshd): the next push knows those writes as its own -- no
conflict, nothing sent again for nothing -- while a change made on the remote by hand
after them is still a conflict.  The answers are held back by the proxy in front of the
sshd until the remote has the writes, then the connection is cut, so the case is hit
every time rather than by chance."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import wait_for
from support.cutproxy import CutProxy

CLI = str(Path(sys.executable).parent / "remote-dev")


def ctx(proj):
    return {"cwd": str(proj.root)}


def push(engine, proj, **args):
    return engine.call_sync("push", ctx(proj), args, timeout=120)


@pytest.fixture
def proxy(sshd):
    p = CutProxy(sshd.port)
    yield p
    p.close()


@pytest.fixture
def proj(make_project, sshd, proxy, tmp_path):
    kh = proxy.known_hosts(sshd.dir / "hostkey.pub", tmp_path / "proxy_known_hosts")
    return make_project(target={"port": proxy.port, "known_hosts": str(kh)})


def lost_answers(engine, proj, proxy, arrived):
    """A push whose answers are held back until arrived() is true on the remote, then
    the connection is cut: the push fails, its writes are on the remote."""
    proxy.hold()
    box = {}
    fut = engine.request("push", ctx(proj), {}, lambda err, res: box.update(err=err, res=res))
    wait_for(arrived, 30, what="the writes to reach the remote")
    proxy.cut()
    fut.result(60)
    assert box["err"] and "interrupted" in box["err"], box


def test_writes_whose_answers_were_lost_are_known_as_ours(engine, proj, proxy):
    for name in ("again", "kept", "edited", "unchanged_here"):
        proj.write(f"src/{name}.py", f"{name} = 1\n")
    assert push(engine, proj)["files"] == 5       # and .remote-dev.toml
    for name in ("again", "kept", "edited", "unchanged_here"):
        proj.write(f"src/{name}.py", f"{name} = 2\n")

    def arrived():
        return all(proj.remote(f"src/{n}.py").read_text() == f"{n} = 2\n"
                   for n in ("again", "kept", "edited", "unchanged_here"))
    lost_answers(engine, proj, proxy, arrived)

    proj.write("src/again.py", "again = 3\n")               # changed here again: sent, no conflict
    proj.write("src/edited.py", "edited = 3\n")             # changed here, and by hand there:
    proj.remote("src/edited.py").write_text("by hand\n")     # a conflict, never overwritten
    proj.remote("src/unchanged_here.py").write_text("by hand too\n")  # unchanged here: a conflict
    res = push(engine, proj)
    assert sorted(res["conflicts"]) == ["src/edited.py", "src/unchanged_here.py"], res
    assert res["errors"] == [] and res["files"] == 1, res       # src/kept.py is not sent again
    assert proj.remote("src/again.py").read_text() == "again = 3\n"
    assert proj.remote("src/kept.py").read_text() == "kept = 2\n"
    assert proj.remote("src/edited.py").read_text() == "by hand\n"
    assert proj.remote("src/unchanged_here.py").read_text() == "by hand too\n"
    res = push(engine, proj)
    assert sorted(res["conflicts"]) == ["src/edited.py", "src/unchanged_here.py"], res
    assert res["files"] == 0


def test_a_delete_whose_answer_was_lost_is_known_as_ours(engine, proj, proxy):
    proj.write("keep.py", "keep\n")
    proj.write("old/gone.py", "bye\n")
    push(engine, proj)
    (proj.root / "old" / "gone.py").unlink()
    lost_answers(engine, proj, proxy, lambda: not proj.remote("old/gone.py").exists())
    proj.write("old/gone.py", "back, different\n")
    res = push(engine, proj)
    assert res["conflicts"] == [] and res["errors"] == [] and res["files"] == 1, res
    assert proj.remote("old/gone.py").read_text() == "back, different\n"


def test_writes_in_flight_survive_a_killed_client(engine, proj, proxy):
    """The process pushing is SIGKILLed (as Neovim can be) while its answers are held
    back: the writes in flight were journaled before they went out, so the next push (a
    new process, reading the records from disk) knows them as its own.  The answers are
    held from the moment the large batch goes out (the login and the agent's start before
    it get theirs)."""
    proj.write("a.py", "a = 1\n")
    proj.write("b.py", "b = 1\n")
    subprocess.run([CLI, "-C", str(proj.root), "push"], check=True, capture_output=True, timeout=120)
    proj.write("a.py", "a = 2\n")
    proj.write("b.py", os.urandom(400 << 10))       # does not compress: > 256 KB on the wire
    b2 = (proj.root / "b.py").read_bytes()
    proxy.hold(after=256 << 10)
    proc = subprocess.Popen([CLI, "-C", str(proj.root), "push"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: proj.remote("a.py").read_text() == "a = 2\n" and proj.remote("b.py").read_bytes() == b2,
                 30, what="the writes to reach the remote")
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
    proxy.cut()
    proj.write("a.py", "a = 3\n")
    res = push(engine, proj)
    assert res["conflicts"] == [] and res["errors"] == [] and res["files"] == 1, res   # b.py: not again
    assert proj.remote("a.py").read_text() == "a = 3\n" and proj.remote("b.py").read_bytes() == b2
