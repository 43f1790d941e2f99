"""The worker processes that read, hash, pack and compress a push's batches (packer.py),
against the real sshd, a real Neovim and the real process table: started at the first
push that uses them, reused by the next, gone when the engine stops (and when their parent --
a script or Neovim's Python host -- is killed); a worker
killed in the middle of a push fails it with one line, leaves nothing half-written, and the
next push completes it; the content arrives byte for byte through every codec."""
from __future__ import annotations

import logging
import os
import random
import shutil
import signal
import subprocess
import sys

import pytest
from conftest import require, wait_for
from remote_dev.agent.remote import zstdlib
from remote_dev.errors import RemoteDevError
from remote_dev.packer import PackWorkers
from remote_dev.sync import reuse
from test_sync import on_engine, push, temps
from test_sync_wire import slow_link, source_text


@pytest.fixture(autouse=True)
def processes(monkeypatch):
    """The worker processes (not the default: push.pack_workers); no offers to the remote's
    content index (sync/reuse.py), which would copy these trees' contents, the same in every
    test, instead of sending them."""
    monkeypatch.setenv("REMOTE_DEV_PACK", "processes")
    monkeypatch.setattr(reuse, "OFFER_BYTES", 1 << 62)


def tree(proj, n=60, size=40_000, seed=0):
    """n source files of about size bytes (more than push.PROCESS_BYTES in all), a random
    one, an empty one and a symlink."""
    files = {f"src/m{i}.py": source_text(size, seed + i) for i in range(n)}
    files["data/random.bin"] = os.urandom(200_000)
    files["data/empty.txt"] = b""
    for rel, data in files.items():
        proj.write(rel, data)
    if not os.path.lexists(proj.root / "src/link.py"):
        os.symlink("m0.py", proj.root / "src/link.py")
    return files


def same_remote(proj, files):
    for rel, data in files.items():
        assert proj.remote(rel).read_bytes() == data, rel
    assert os.readlink(proj.remote("src/link.py")) == "m0.py"
    assert temps(proj.remote_root) == []


def workers_of(engine):
    return engine.state(PackWorkers)


def alive(pid):
    """A live process (not a zombie) whose command line is a packer worker's."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rpartition(")")[2].split()[0]
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            cmd = f.read()
    except OSError:
        return False
    return state != "Z" and b"remote_dev.packer" in cmd


def parent_of(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rpartition(")")[2].split()[1])
    except OSError:   # gone meanwhile
        return -1


def count_packs(monkeypatch):
    """How many batches went to the worker processes."""
    seen = {"n": 0}
    real = PackWorkers.submit

    def submit(self, name, *args):
        seen["n"] += name == "pack"
        return real(self, name, *args)
    monkeypatch.setattr(PackWorkers, "submit", submit)
    return seen


def test_workers_start_at_the_first_push_are_reused_and_end_with_the_engine(make_project, monkeypatch):
    from remote_dev.actions import ACTIONS
    from remote_dev.engine import Engine
    from remote_dev.runners import RUNNERS

    engine = Engine(actions=ACTIONS, runners=RUNNERS)
    try:
        pids = push_twice(engine, make_project(), monkeypatch)
    finally:
        engine.close()
    wait_for(lambda: not any(alive(p) for p in pids), 10, what="the worker processes to end with the engine")


def push_twice(engine, proj, monkeypatch):
    files = tree(proj)
    packs = count_packs(monkeypatch)
    res = push(engine, proj)
    assert res["errors"] == [] and res["files"] == len(files) + 2   # + the symlink and .remote-dev.toml
    same_remote(proj, files)
    assert packs["n"] > 0, "the batches were not packed in the worker processes"
    pids = workers_of(engine).pids()
    assert pids and all(alive(p) and parent_of(p) == os.getpid() for p in pids)
    for i in range(0, 60, 2):   # half the files change: a push of more than PROCESS_BYTES again
        files[f"src/m{i}.py"] = source_text(40_000, 100 + i)
        proj.write(f"src/m{i}.py", files[f"src/m{i}.py"])
    before = packs["n"]
    res = push(engine, proj)
    assert res["errors"] == [] and res["files"] == 30
    same_remote(proj, files)
    assert packs["n"] > before and workers_of(engine).pids() == pids   # the same processes, reused
    return pids


def test_workers_end_when_their_parent_dies(tmp_path):
    """A host killed by SIGKILL runs no cleanup: its workers end on their own (stdin closes)."""
    code = ("import sys, time; from remote_dev.packer import PackWorkers; w = PackWorkers(2); w.start(); "
            "[w.submit('pid').result(10) for _ in range(2)]; print(*w.pids(), flush=True); time.sleep(60)")
    host = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        pids = [int(p) for p in host.stdout.readline().split()]
        assert len(pids) == 2 and all(alive(p) for p in pids)
        host.kill()
        host.wait(10)
        wait_for(lambda: not any(alive(p) for p in pids), 10, what="orphaned workers to end")
    finally:
        host.kill()
        host.wait()


def test_a_worker_killed_mid_push_fails_it_in_one_line_and_the_next_push_completes(engine, make_project,
                                                                                     monkeypatch):
    proj = make_project()
    files = tree(proj, n=120)
    seen = {"n": 0, "killed": []}
    real = PackWorkers.submit

    def submit(self, name, *args):   # the third batch handed to them (two were on the wire): kill every worker
        fut = real(self, name, *args)   # (killed before it is done, so the push cannot complete without it)
        seen["n"] += name == "pack"
        if name == "pack" and seen["n"] == 3:
            for pid in self.pids():
                os.kill(pid, signal.SIGKILL)
                seen["killed"].append(pid)
        return fut
    monkeypatch.setattr(PackWorkers, "submit", submit)
    with pytest.raises(RemoteDevError) as err:
        push(engine, proj)
    text = str(err.value)
    assert seen["killed"], "no batch reached the wire"
    assert "\n" not in text and "worker process" in text and "SIGKILL" in text and "completes it" in text, text
    assert temps(proj.remote_root) == []
    for dirpath, _dirs, names in os.walk(proj.remote_root):
        for name in names:   # whatever arrived arrived whole
            rel = os.path.relpath(os.path.join(dirpath, name), proj.remote_root)
            assert (proj.root / rel).read_bytes() == proj.remote(rel).read_bytes(), rel
    monkeypatch.setattr(PackWorkers, "submit", real)
    res = push(engine, proj)
    assert res["errors"] == [] and res["conflicts"] == []
    same_remote(proj, files)
    pids = workers_of(engine).pids()
    assert pids and not set(pids) & set(seen["killed"]) and all(alive(p) for p in pids)


@pytest.mark.parametrize("codec", ["raw", "zlib-2", "zlib-6", "bz2-9", "zstd-3", "zstd-6", None])
def test_content_is_byte_exact_through_every_codec(engine, make_project, monkeypatch, codec):
    """Forced codecs (REMOTE_DEV_CODEC, as the bench does), and the choice a WAN link makes."""
    proj = make_project()
    files = tree(proj, n=40, seed=7)
    files["data/zeros.bin"] = b"\0" * 300_000
    proj.write("data/zeros.bin", files["data/zeros.bin"])
    if codec:
        monkeypatch.setenv("REMOTE_DEV_CODEC", codec)
    else:
        slow_link(engine, proj, monkeypatch, 5e6)
    packs = count_packs(monkeypatch)
    res = push(engine, proj)
    assert res["errors"] == [] and res["files"] == len(files) + 2
    assert packs["n"] > 0
    same_remote(proj, files)
    if codec != "raw":
        assert res["wire_bytes"] < 0.6 * res["bytes"]


@pytest.mark.parametrize("remote_has_zstd", [True, False], ids=["zstd-on-the-remote", "no-zstd-there"])
def test_zstd_only_when_the_remote_can_decode_it(engine, make_project, monkeypatch, caplog, remote_has_zstd):
    """zstd is written here and decoded by the agent (with the remote's libzstd, or its
    `zstd` program): taken when the agent lists the format, zlib otherwise."""
    caplog.set_level(logging.INFO, logger="remote_dev")
    proj = make_project()
    files = tree(proj, n=60, seed=3)
    slow_link(engine, proj, monkeypatch, 5e7)

    async def hello(sess):
        await sess.ensure()
        assert ("zstd" in sess.hello["codecs"]) == (bool(shutil.which("zstd")) or zstdlib.lib() is not None)
        if not remote_has_zstd:
            sess.hello["codecs"] = [c for c in sess.hello["codecs"] if c != "zstd"]
        return sess.hello["codecs"]
    codecs = on_engine(engine, proj, hello)
    if remote_has_zstd:
        require(bool(shutil.which("zstd")), "zstd missing here (the remote of the tests); scripts/setup installs it")
    res = push(engine, proj)
    assert res["errors"] == [] and res["files"] == len(files) + 2
    same_remote(proj, files)
    used = [r.getMessage() for r in caplog.records if r.getMessage().startswith("push ")]
    assert used and ("zstd-" in used[-1]) == remote_has_zstd and ("zlib-" in used[-1]) != remote_has_zstd, (used, codecs)


def test_the_agent_lists_zstd_with_libzstd_or_a_zstd_program(monkeypatch, tmp_path):
    """Without a `zstd` on PATH, zstd is listed (and decoded) by libzstd alone; with
    neither it is not listed, and a zstd payload is one clear error."""
    import zstandard
    from remote_dev.agent import protocol

    require(zstdlib.lib() is not None, "no libzstd.so.1 here (the remote of the tests): scripts/setup installs zstd")
    monkeypatch.setenv("PATH", str(tmp_path))
    assert "zstd" not in protocol.codec_formats() and "zstd" in zstdlib.formats()
    blob = zstandard.ZstdCompressor(level=3).compress(b"step 1 loss 2.0\n" * 1000)
    assert zstdlib.decode("zstd", blob) == b"step 1 loss 2.0\n" * 1000
    monkeypatch.setattr(zstdlib, "_found", [None])   # no libzstd either
    assert "zstd" not in zstdlib.formats()
    with pytest.raises(ValueError, match="no zstd program"):
        zstdlib.decode("zstd", blob)


def children(pid):
    out = []
    for name in os.listdir("/proc"):
        if name.isdigit() and alive(int(name)) and parent_of(int(name)) == pid:
            out.append(int(name))
    return out


def test_in_neovim_the_workers_belong_to_its_python_host_and_end_with_it(nvim, make_project):
    """:RemotePush of a big tree from a real Neovim: the workers are the Python host's
    children; the host killed (SIGKILL: no cleanup runs), they end by themselves."""
    proj = make_project()
    # 1.5 MB in files under reuse.OFFER_MIN: the push offers nothing to the remote's content
    # index (sync/reuse.py: the host's, not patched here) and sends it all through the workers
    files = tree(proj, n=1500, size=1000, seed=random.randrange(1 << 30))
    nvim.open(proj.root, proj.root / "src/m0.py")
    nvim.start_host()
    nvim.command("RemotePush")
    done = nvim.wait_event("RemoteDevPushDone", 60)
    assert done["files"] == len(files) + 2 and done["conflicts"] == []
    same_remote(proj, files)
    nvim_pid = nvim.eval("getpid()")
    hosts = [p for p in os.listdir("/proc") if p.isdigit() and parent_of(int(p)) == nvim_pid]
    workers = {int(h): children(int(h)) for h in hosts}
    host, pids = next(((h, w) for h, w in workers.items() if w), (None, []))
    assert host is not None and pids, f"no worker processes under Neovim's Python host ({workers})"
    os.kill(host, signal.SIGKILL)
    wait_for(lambda: not any(alive(p) for p in pids), 10, what="the workers of a killed host to end")
