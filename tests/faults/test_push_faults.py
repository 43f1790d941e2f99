"""Pushes hit by faults: the connection cut at random moments, the remote agent killed,
the remote disk full, remote_root read-only.  Guarantees: no partial file, no temporary
left, one line per failure, the next push converges."""
from __future__ import annotations

import os
import random
import signal
import subprocess
import time
from typing import Any

import pytest

from conftest import wait_for
from remote_dev.errors import RemoteDevError
from support.cutproxy import CutProxy

from .conftest import CLI, assert_guarantees, log_problems, screen_problems

from .tree import Tree, partial_files, remote_state, same_as_local, temps_after

CUTS = int(os.environ.get("REMOTE_DEV_FAULT_CUTS", "20"))
CLI_CUTS = 3
LARGE = [24 << 20, 9 << 20, 2 << 20]


def one_line(err: str | None) -> list[str]:
    if err is None:
        return []
    problems = []
    if "\n" in err.strip():
        problems.append(f"more than one line: {err!r}")
    if "internal error" in err or "Traceback" in err:
        problems.append(f"internal error: {err!r}")
    return problems


def push_async(eng: Any, proj: Any, **args: Any) -> tuple[Any, dict[str, Any]]:
    box: dict[str, Any] = {}

    def done(err: str | None, result: Any) -> None:
        box["err"], box["result"] = err, result
    return eng.request("push", proj.ctx(), args, done), box


def converge(eng: Any, proj: Any, tree: Tree) -> list[str]:
    """A push after the faults: it must end clean with the remote equal to the tree."""
    res = eng.call_sync("push", proj.ctx(), {}, timeout=180)
    problems = [f"conflict {c}" for c in res.get("conflicts") or []]
    problems += [f"error {e}" for e in res.get("errors") or []]
    return problems + [f"differs: {rel}" for rel in same_as_local(tree, proj.remote_dir)]


def warm_push_time(eng: Any, proj: Any, tree: Tree) -> float:
    """Push the tree, change it, and time the push of the change (what a fault hits)."""
    eng.call_sync("push", proj.ctx(), {}, timeout=180)
    tree.change(small=15)
    t0 = time.monotonic()
    eng.call_sync("push", proj.ctx(), {}, timeout=180)
    return time.monotonic() - t0


@pytest.fixture
def cut_proxy(remote):
    proxy = CutProxy(remote.sshd.port)
    yield proxy
    proxy.close()


def proxied_project(fault_project, remote, proxy, tmp_path):
    kh = proxy.known_hosts(remote.base / "hostkey.pub", tmp_path / "proxy_known_hosts")
    return fault_project(target={"port": proxy.port, "known_hosts": str(kh)})


def test_connection_cut_mid_push(remote, fault_project, cut_proxy, engines, screen, figures, tmp_path,
                                 isolated_state):
    """CUTS cuts at random moments of pushes of large and small files (plus CLI_CUTS
    through the CLI, as a user sees them)."""
    proj = proxied_project(fault_project, remote, cut_proxy, tmp_path)
    seed = 16_000 + CUTS
    rng = random.Random(seed)
    tree = Tree(proj.root, rng)
    tree.build(small=120, large=LARGE)
    eng = engines.new()
    full = warm_push_time(eng, proj, tree)
    failed: list[str] = []
    left = 0
    hit = 0
    for i in range(CUTS):
        tree.change(small=15)
        fut, box = push_async(eng, proj)
        time.sleep(rng.uniform(0, full * 1.2))
        cut_proxy.cut()
        fut.result(120)
        hit += box.get("err") is not None
        problems = one_line(box.get("err")) + [f"partial: {p}" for p in partial_files(tree, proj.remote_dir)]
        temps = temps_after(proj.remote_dir, 10)
        left += len(temps)
        problems += [f"temporary left: {t}" for t in temps]
        if problems:
            failed.append(f"cut {i}: {problems}")
    for i in range(CLI_CUTS):
        tree.change(small=15)
        proc = subprocess.Popen([CLI, "-C", str(proj.root), "push"], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True,
                                env={**os.environ, "XDG_STATE_HOME": os.environ["XDG_STATE_HOME"]})
        wait_for(lambda: cut_proxy.pairs or proc.poll() is not None, 30, what="the CLI connecting")
        time.sleep(rng.uniform(0, full * 1.2))
        cut_proxy.cut()
        _, stderr = proc.communicate(timeout=120)
        hit += proc.returncode != 0
        problems = screen_problems(stderr) + [f"partial: {p}" for p in partial_files(tree, proj.remote_dir)]
        temps = temps_after(proj.remote_dir, 10)
        left += len(temps)
        problems += [f"temporary left: {t}" for t in temps]
        if problems:
            failed.append(f"CLI cut {i}: {problems}")
    trials = len(failed)
    again = converge(eng, proj, tree)
    failed += [f"next push: {p}" for p in again]
    failed += [f"on screen: {s}" for s in screen.seen()]
    failed += [f"in the log: {s}" for s in log_problems(isolated_state)]
    engines.close(eng)
    procs = remote.settle()
    figures.add("connection cut mid-push", remote.kind, CUTS + CLI_CUTS, trials + bool(again), left + len(procs),
                f"{hit} cuts hit a push in flight (seed {seed}; {sum(LARGE) >> 20} MB + 120 small files)")
    assert not procs, remote.describe(procs)
    assert_guarantees(failed)


KILLS = int(os.environ.get("REMOTE_DEV_FAULT_KILLS", "8"))


def test_agent_killed_mid_push(remote, fault_project, engines, screen, figures, isolated_state):
    """SIGKILL every agent of the remote at random moments of pushes: it can remove
    nothing; the next agent sweeps what it left."""
    proj = fault_project()
    seed = 16_100 + KILLS
    rng = random.Random(seed)
    tree = Tree(proj.root, rng)
    tree.build(small=120, large=LARGE)
    tree.put("solo/huge.bin", tree.blob(16 << 20))
    eng = engines.new()
    full = warm_push_time(eng, proj, tree)
    failed: list[str] = []
    hit = 0
    left_by_kills = 0
    for i in range(KILLS):
        tree.change(small=15)
        fut, box = push_async(eng, proj)
        time.sleep(rng.uniform(0, full * 1.2))
        killed = remote.agents()
        for pid in killed:
            os.kill(pid, signal.SIGKILL)
        fut.result(120)
        hit += box.get("err") is not None
        left_by_kills += len(remote_state(proj.remote_dir)[1])
        problems = one_line(box.get("err")) + [f"partial: {p}" for p in partial_files(tree, proj.remote_dir)]
        if problems:
            failed.append(f"kill {i}: {problems}")
    # a kill while a large file of a folder of its own is staged, then the file goes back
    # to what the remote has: the next push writes nothing into that folder, and the next
    # agent sweeps it all the same
    solo = "solo/huge.bin"
    old = (proj.root / solo).read_bytes()
    tree.put(solo, tree.blob(len(old)))
    fut, box = push_async(eng, proj)
    wait_for(lambda: any(t.startswith("solo/") for t in remote_state(proj.remote_dir)[1]) or fut.done(), 60,
             interval=0.005, what="the large file being staged")
    for pid in remote.agents():
        os.kill(pid, signal.SIGKILL)
    fut.result(120)
    left_by_kills += len(remote_state(proj.remote_dir)[1])
    tree.put(solo, old)
    one = next(rel for rel in sorted(tree.versions) if rel.startswith("src/"))
    tree.put(one, b"one file\n")
    eng.call_sync("push", proj.ctx(), {"paths": [one]}, timeout=180)   # a new agent, nothing into solo/
    solo_left = [t for t in temps_after(proj.remote_dir, 10) if t.startswith("solo/")]
    failed += [f"temporary left by the killed agent: {t}" for t in solo_left]
    trials = len(failed)
    again = converge(eng, proj, tree)
    failed += [f"next push: {p}" for p in again]
    temps = solo_left + temps_after(proj.remote_dir, 10)
    failed += [f"temporary left: {t}" for t in temps]
    failed += [f"on screen: {s}" for s in screen.seen()]
    failed += [f"in the log: {s}" for s in log_problems(isolated_state)]
    engines.close(eng)
    procs = remote.settle()
    figures.add("remote agent killed mid-push", remote.kind, KILLS + 1, trials + bool(again or temps),
                len(temps) + len(procs), f"{hit} kills hit a push; {left_by_kills} temporaries seen right after "
                                         f"the kills, all swept by the next agent")
    assert not procs, remote.describe(procs)
    assert_guarantees(failed)


def mount(*args: str) -> None:
    subprocess.run(["mount", *args], check=True, capture_output=True, timeout=30)


def umount(path: os.PathLike[str] | str) -> None:
    if subprocess.run(["umount", str(path)], capture_output=True, timeout=30).returncode:
        subprocess.run(["umount", "-l", str(path)], capture_output=True, timeout=30)


def messages(eng: Any, level: str | None = None) -> list[str]:
    return [p["text"] for k, p in eng.reports if k == "message" and (level is None or p["level"] == level)]


def blocked_push(eng: Any, proj: Any, tree: Tree, want: str) -> list[str]:
    """A push into a remote that refuses writes: one line saying so (naming the host and
    what to do), no partial file, no temporary; what went wrong, as problems."""
    before = len(eng.reports)
    err = None
    try:
        res = eng.call_sync("push", proj.ctx(), {}, timeout=180)
    except RemoteDevError as e:
        err, res = e.message, {}
    said = [p["text"] for k, p in eng.reports[before:] if k == "message" and p["level"] in ("warn", "error")]
    problems = one_line(err) + [p for m in said for p in one_line(m)]
    text = " ".join([err or ""] + said)
    if not (res.get("errors") or err):
        problems.append(f"the push did not fail: {res}")
    if want not in text.lower():
        problems.append(f"push message: does not say {want!r}: {text!r}")
    if proj.remote.sshd.alias not in text:
        problems.append(f"push message: does not name the host: {text!r}")
    problems += [f"partial: {p}" for p in partial_files(tree, proj.remote_dir)]
    problems += [f"temporary left: {t}" for t in temps_after(proj.remote_dir, 10)]
    return problems


@pytest.fixture
def tmpfs_root(remote, fault_project):
    """A project whose remote_root is an 8 MB tmpfs (owned by the remote user)."""
    proj = fault_project()
    proj.remote_dir.mkdir(parents=True)
    mount("-t", "tmpfs", "-o", f"size=8m,mode=0755,uid={remote.uid},gid={remote.gid}", "tmpfs", str(proj.remote_dir))
    yield proj
    remote.kill_all()
    umount(proj.remote_dir)


def test_remote_disk_full_during_push(remote, tmpfs_root, engines, screen, figures, isolated_state):
    proj = tmpfs_root
    tree = Tree(proj.root, random.Random(16_200))
    tree.build(small=60, large=[])
    eng = engines.new()
    eng.call_sync("push", proj.ctx(), {}, timeout=180)
    for i in range(4):
        tree.put(f"data/chunk{i}.bin", tree.blob(3 << 20))   # 12 MB: does not fit
    failed = blocked_push(eng, proj, tree, "no space left")
    mount("-o", "remount,size=64m", str(proj.remote_dir))    # the user frees space
    failed += [f"next push: {p}" for p in converge(eng, proj, tree)]
    failed += [f"on screen: {s}" for s in screen.seen()]
    failed += [f"in the log: {s}" for s in log_problems(isolated_state)]
    engines.close(eng)
    procs = remote.settle()
    figures.add("remote disk full during a push", remote.kind, 1, int(bool(failed)), len(procs),
                "8 MB tmpfs as remote_root, 12 MB pushed")
    assert not procs, remote.describe(procs)
    assert_guarantees(failed)


@pytest.fixture
def read_only(remote):
    """Make a remote folder read-only for the remote user, as a user would meet it: for an
    unprivileged user, folders without write permission; for root (whom permissions do
    not stop), a read-only bind mount."""
    made: list[Any] = []

    def block(path: Any) -> None:
        if remote.kind == "root":
            mount("--bind", str(path), str(path))
            mount("-o", "remount,bind,ro", str(path))
            made.append(lambda: umount(path))
        else:
            dirs = [path, *[p for p in path.rglob("*") if p.is_dir()]]
            for d in dirs:
                d.chmod(0o555)
            made.append(lambda: [d.chmod(0o755) for d in dirs])

    def unblock() -> None:
        while made:
            made.pop()()
    block.unblock = unblock  # type: ignore[attr-defined]
    yield block
    unblock()


def test_remote_root_read_only(remote, fault_project, read_only, engines, screen, figures, isolated_state):
    proj = fault_project()
    tree = Tree(proj.root, random.Random(16_300))
    tree.build(small=40, large=[9 << 20])
    eng = engines.new()
    eng.call_sync("push", proj.ctx(), {}, timeout=180)
    read_only(proj.remote_dir)
    tree.change(small=10)
    tree.put("new/dir/file.py", b"x = 1\n")
    want = "read-only" if remote.kind == "root" else "permission denied"
    failed = blocked_push(eng, proj, tree, want)
    read_only.unblock()
    failed += [f"next push: {p}" for p in converge(eng, proj, tree)]
    failed += [f"on screen: {s}" for s in screen.seen()]
    failed += [f"in the log: {s}" for s in log_problems(isolated_state)]
    engines.close(eng)
    procs = remote.settle()
    figures.add("remote_root read-only", remote.kind, 1, int(bool(failed)), len(procs),
                "read-only bind mount (root) / folders without write permission (user)")
    assert not procs, remote.describe(procs)
    assert_guarantees(failed)
