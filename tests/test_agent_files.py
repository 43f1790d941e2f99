"""The agent's file operations: the push op shapes it takes, and the sweep of the
temporaries an agent killed mid-write leaves (locally, then a real SIGKILL of the agent
behind the real sshd)."""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import msgpack
import pytest
from conftest import require, wait_for
from test_sync import agent_call, agent_pid, on_engine, push, temps

from remote_dev.agent import AGENT_ZIP, bundle
from remote_dev.agent import protocol as P
from remote_dev.agent.remote import blocks, files, temps as rtemps, zstdlib
from remote_dev.sync import wire


def dead_pid() -> int:
    p = subprocess.Popen(["true"])
    p.wait()
    return p.pid


def temp_name(pid: int, host: str = rtemps.HOST_TAG, base: str = "a.b.txt", n: int = 1) -> str:
    return f"{P.TMP_MARK}{base}.{host}.{pid}.{n}"


def test_temp_names_carry_host_and_pid(tmp_path):
    tmp, fd = rtemps.make_temp(str(tmp_path / "some.file.with.dots.py"))
    os.close(fd)
    name = os.path.basename(tmp)
    assert name.startswith(P.TMP_MARK + "some.file.with.dots.py.")
    assert rtemps.temp_owner(name) == (rtemps.HOST_TAG, os.getpid())
    for foreign in ("a.txt", ".a.txt.rdtmp-12-34", ".rdtmp-x.12-34", ".rdtmp-x.zz.12.3", temp_name(12)[:-2]):
        assert rtemps.temp_owner(foreign) is None, foreign


def test_temp_names_of_a_forked_child_carry_its_own_pid(tmp_path):
    """The pid part of temporary names is made once per process: a forked child makes
    its own (a stale one would let the parent's sweep take the child's live temporaries)."""
    os.close(rtemps.make_temp(str(tmp_path / "parent.py"))[1])   # the parent's made first
    read, write = os.pipe()
    child = os.fork()
    if child == 0:   # pragma: no cover - the child reports through the pipe
        try:
            tmp, fd = rtemps.make_temp(str(tmp_path / "child.py"))
            os.write(write, os.path.basename(tmp).encode())
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read, "rb") as f:
        name = f.read().decode()
    os.waitpid(child, 0)
    assert rtemps.temp_owner(name) == (rtemps.HOST_TAG, child)


def test_sweep_removes_only_temporaries_of_dead_agents_of_this_host(tmp_path):
    sleeper = subprocess.Popen(["sleep", "30"])
    try:
        dead = dead_pid()
        names = {
            "dead": temp_name(dead),
            "mine": temp_name(os.getpid()),
            "live": temp_name(sleeper.pid),
            "other host": temp_name(dead, host="0123abcd" if rtemps.HOST_TAG != "0123abcd" else "abcd0123"),
            "a file": "a.b.txt",
        }
        for name in names.values():
            (tmp_path / name).write_text("x")
        assert rtemps.sweep(str(tmp_path)) == 1
        assert sorted(os.listdir(tmp_path)) == sorted(v for k, v in names.items() if k != "dead")
    finally:
        sleeper.kill()
        sleeper.wait()


def test_push_sweeps_each_folder_once_per_agent(tmp_path):
    ops = files.FileOps()
    (tmp_path / "d").mkdir()
    stale = tmp_path / "d" / temp_name(dead_pid())
    stale.write_text("half")
    res = ops.push(str(tmp_path), [P.write_op("d/x.txt", None, False, P.digest(b"x"), 0o644, b"x")])
    assert res[0][0] == P.OK and not stale.exists()
    stale.write_text("half")          # swept once per agent and folder: bounded cost
    ops.push(str(tmp_path), [P.write_op("d/y.txt", None, False, None, 0o644, b"y")])
    assert stale.exists()
    assert files.FileOps().push(str(tmp_path), [P.delete_op("d/y.txt", None, True)])[0][0] == P.OK
    assert not stale.exists()


def test_push_takes_list_ops_only(tmp_path):
    ops = files.FileOps()
    res = ops.push(str(tmp_path), [
        {"op": "w", "path": "m.txt", "data": b"x", "force": True},   # the old map form
        ["x", "m.txt", None, True],                                   # no such op
        ["w", "m.txt", None, True],                                   # too short for a write
        P.write_op("m.txt", None, True, None, 0o644, None),           # no data
        P.write_op("ok.txt", None, False, None, 0o600, b"fine"),
    ])
    assert [r[0] for r in res] == [P.ERROR, P.ERROR, P.ERROR, P.ERROR, P.OK]
    assert "ops are lists" in res[0][1]
    assert sorted(os.listdir(tmp_path)) == ["ok.txt"]


def test_a_push_locks_its_root_in_a_private_folder_made_again_when_it_went(tmp_path, monkeypatch):
    """The lock of a root is a 0600 file in a 0700 folder of the cache, made private once
    per agent (not chmod'ed per batch: that dirtied the folder's inode each time); a folder
    removed meanwhile is made again."""
    import stat

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    locks = tmp_path / "cache" / "remote-dev" / "locks"
    chmods = []
    chmod = os.chmod
    monkeypatch.setattr(os, "chmod", lambda path, mode, **kw: (chmods.append(str(path)), chmod(path, mode, **kw))[1])
    ops = files.FileOps()
    for n, name in enumerate(("a.txt", "b.txt", "c.txt", "d.txt")):
        assert ops.push(str(tmp_path / "root"), [P.write_op(name, None, False, None, 0o644, b"x")])[0][0] == P.OK
        assert stat.S_IMODE(locks.stat().st_mode) == 0o700
        assert [stat.S_IMODE(f.stat().st_mode) for f in locks.iterdir()] == [0o600]
        assert chmods.count(str(locks)) == (1 if n < 3 else 2), chmods
        if n == 2:
            shutil.rmtree(locks)


def test_offered_copies_go_one_by_one_on_a_local_disk_and_in_threads_where_they_wait(tmp_path, monkeypatch):
    """A request of copies from the content index: the first ones one by one, and the rest
    in threads only when those were blocked (a network file system, each create and rename
    a round trip: it cannot exist here, so each copy is made to wait 3 ms); on this disk
    they are not, and threads would only hand the GIL back and forth (waiting for a CPU on
    a busy machine does not count).  Either way every answer is in order and every copy
    right."""
    from remote_dev.agent.remote import reuse as rreuse
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr(rreuse, "INDEX", rreuse.ContentIndex())
    contents = {f"src/f{i}.py": os.urandom(3000 + i) for i in range(200)}
    first = files.FileOps().push(str(tmp_path / "a"), [P.write_op(rel, None, False, None, 0o644, data)
                                                      for rel, data in contents.items()])
    assert all(a[0] == P.OK for a in first)
    threaded = []
    real_threads, real_copy = files.copy_in_threads, files.copy_to
    monkeypatch.setattr(files, "copy_in_threads", lambda *a: threaded.append(len(a[2])) or real_threads(*a))

    def copies(root):
        ops = [P.copy_op(rel, None, False, P.digest(data), 0o644, len(data)) for rel, data in contents.items()]
        answers = files.FileOps().push(str(tmp_path / root), ops)
        assert [a[0] for a in answers] == [P.OK] * len(ops)
        for rel, data in contents.items():
            assert (tmp_path / root / rel).read_bytes() == data, rel

    for root in ("b1", "b2", "b3"):   # another process's writes can block a sample now and then
        copies(root)
        if not threaded:
            break
        threaded.clear()
    else:
        pytest.fail("copies on this disk went to threads 3 times in 3")

    def waiting_copy(*args):
        time.sleep(0.003)
        return real_copy(*args)
    monkeypatch.setattr(files, "copy_to", waiting_copy)
    copies("c")
    assert threaded == [len(contents) - files.COPY_SAMPLE]


BOUNDING = """
import os, sys
from remote_dev.agent.remote import reuse
folder, k = sys.argv[1], sys.argv[2]
errors = 0
for i in range(300):
    with open(os.path.join(folder, "a%s-%d%s" % (k, i, reuse.EXT)), "w") as f:
        f.write("")
    try:
        reuse.ContentIndex.bound(folder)
    except OSError:
        errors += 1
print(errors)
"""


def test_two_agents_bounding_the_index_at_once_both_go_on(tmp_path):
    """Two agents write index files and keep the folder to MAX_ROOTS at once (two Neovims
    pushing; an agent flushing as its connection ends while the next one pushes): a file
    the other removed between listing and stat is one less to remove, never an error (seen
    in CI: it ended the flush, and the push's hashes were never written)."""
    from remote_dev.agent.remote import reuse as rreuse

    for i in range(rreuse.MAX_ROOTS):
        (tmp_path / f"old{i}{rreuse.EXT}").write_text("")
    procs = [subprocess.Popen([sys.executable, "-c", BOUNDING, str(tmp_path), str(k)], stdout=subprocess.PIPE,
                              text=True) for k in range(2)]
    errors = [int(p.communicate(timeout=120)[0]) for p in procs]
    assert errors == [0, 0]
    assert len(list(tmp_path.glob("*" + rreuse.EXT))) <= rreuse.MAX_ROOTS


def test_hashes_a_write_interrupted_are_filled_in_at_the_next_idle_moment(tmp_path, monkeypatch):
    """The index's writer hashes what a push wrote without a hash once the agent is idle,
    and stops when another write comes: what it had not hashed yet is hashed at the next
    idle moment, with what came meanwhile (seen in CI: a push whose requests came more than
    IDLE_FLUSH apart left its first files unhashed, for the next push's lookups to hash,
    and a test waiting for the hashes timed out)."""
    from remote_dev.agent.remote import reuse as rreuse
    from remote_dev.agent.remote.indexfile import read_index
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    idx = rreuse.ContentIndex()
    root = tmp_path / "root"
    root.mkdir()

    def written(names):
        for name in names:
            (root / name).write_bytes(os.urandom(2000))
        return [[(root / n).stat().st_size, (root / n).stat().st_mtime_ns, None] for n in names]

    first = [f"a{i}.bin" for i in range(40)]
    real_hash_of = rreuse.hash_of
    later = []

    def hash_of(r, rel, entry):   # a write comes while the first file is hashed
        if not later:
            later.append("b0.bin")
            idx.note_all(str(root), later, written(later))
        return real_hash_of(r, rel, entry)
    monkeypatch.setattr(rreuse, "hash_of", hash_of)
    idx.note_all(str(root), first, written(first))
    path = Path(rreuse.index_dir()) / (rreuse.index_name(str(root)) + rreuse.EXT)

    def hashed():
        files = read_index(str(path), str(root))
        return len(files) == 41 and all(e[rreuse.HASH] for e in files.values())
    wait_for(hashed, 10, what="every entry hashed")
    wait_for(lambda: idx.timer is None, 10, what="the writer to end")


# --------------------------------------------------------------------------- through sshd


class LocalAgent:
    """Another agent on this host (the installed zip run directly), alive meanwhile."""

    def __init__(self, sshd) -> None:
        pyz = sshd.remote_cache / "remote-dev" / "agent" / bundle().digest / AGENT_ZIP
        self.proc = subprocess.Popen([sys.executable, "-S", str(pyz)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     env={**os.environ, "XDG_CACHE_HOME": str(sshd.remote_cache)})
        self.unpacker = msgpack.Unpacker(raw=False)
        self.ids = 0

    def call(self, method, *params):
        self.ids += 1
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(msgpack.packb([0, self.ids, method, list(params)], use_bin_type=True))
        self.proc.stdin.flush()
        while True:
            for msg in self.unpacker:
                assert msg[1] == self.ids and msg[2] is None, msg
                return msg[3]
            self.unpacker.feed(os.read(self.proc.stdout.fileno(), 1 << 16))

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        self.proc.wait(30)


def test_temporaries_of_a_sigkilled_agent_are_swept(engine, make_project, sshd):
    proj = make_project()
    proj.write("data/keep.txt", "keep\n")
    push(engine, proj)
    root = str(proj.remote_root)
    data = proj.remote_root / "data"
    # a large file half-arrived on the session's agent (behind sshd) ...
    token = agent_call(engine, proj, "stage", root, "data/big.bin")
    agent_call(engine, proj, "append", token, b"x" * 300_000)
    pid = agent_pid(engine, proj)
    (killed_temp,) = temps(data)
    # ... and one on another agent of this host that lives on
    other = LocalAgent(sshd)
    try:
        token2 = other.call("stage", root, "data/other.bin")
        other.call("append", token2, b"y" * 1000)
        (live_temp,) = set(temps(data)) - {killed_temp}
        os.kill(pid, signal.SIGKILL)
        wait_for(lambda: not os.path.exists(f"/proc/{pid}"), 20, what="the killed agent to go")

        async def disconnected(sess):
            return not sess.connected
        wait_for(lambda: on_engine(engine, proj, disconnected), 20, what="the engine to see the agent gone")
        assert sorted(temps(data)) == sorted([killed_temp, live_temp])   # SIGKILL: nothing cleaned up
        # the next push into the folder (a new agent) sweeps the dead agent's temporary only
        proj.write("data/new.txt", "new\n")
        res = push(engine, proj)
        assert res["files"] == 1 and res["errors"] == [] and res["conflicts"] == []
        assert agent_pid(engine, proj) != pid
        assert temps(data) == [live_temp]
        # and the live agent's file still lands whole
        answer = other.call("push", root, [P.staged_op("data/other.bin", None, True, P.digest(b"y" * 1000), 0o644,
                                                       token2)])
        assert answer == [[P.OK, 1000, answer[0][2]]]
        assert (data / "other.bin").read_bytes() == b"y" * 1000
    finally:
        other.close()
    assert temps(data) == [] and sorted(os.listdir(data)) == ["keep.txt", "new.txt", "other.bin"]
    assert Path(killed_temp).name.split(".")[-2] == str(pid)


# --------------------------------------------------------------------------- pulls in zstd


def fake_zstd(folder: Path, script: str) -> None:
    """A `zstd` on folder (put first on PATH) that runs script (sh) before the real one."""
    folder.mkdir()
    prog = folder / "zstd"
    prog.write_text(f"#!/bin/sh\n{script}\nexec {REAL_ZSTD} \"$@\"\n")
    prog.chmod(0o755)


REAL_ZSTD = shutil.which("zstd") or "zstd"
ZSTD_READS = [P.ZLIB, P.BZ2, P.ZSTD]
GBIT = 125e6   # a 1 Gbit/s link: zstd moves more than zlib there (ZSTD_PROGRAM_CODECS)


def log_text(n: int) -> bytes:
    lines = (f"step {i:7d} | loss {1 / (i + 1):.6f} | lr 3.0e-04 | tok/s {41000 + i % 997:9.1f}\n" for i in range(n))
    return "".join(lines).encode()


def read_blocks(tmp_path, accept):
    """read_block's answers for a text log and random bytes, on a 1 Gbit/s link."""
    (tmp_path / "root").mkdir(exist_ok=True)
    (tmp_path / "root/train.log").write_bytes(log_text(50_000))
    (tmp_path / "root/weights.bin").write_bytes(os.urandom(500_000))
    ops = blocks.Blocks()
    out = [ops.read_block(str(tmp_path / "root"), rel, 0, 4 << 20, GBIT, None, accept)
           for rel in ("train.log", "weights.bin")]
    for (fmt, blob, busy), rel in zip(out, ("train.log", "weights.bin")):
        raw = wire.decompress(fmt, blob, 4 << 20) if fmt else blob
        assert raw == (tmp_path / "root" / rel).read_bytes(), rel
        assert 0 < busy < 30, busy   # the seconds it took: the caller's measure of the agent's part
    return ops, [answer[0] for answer in out]


def test_the_agent_writes_zstd_for_a_caller_that_reads_it(tmp_path):
    require(bool(shutil.which("zstd")), "zstd missing here; scripts/setup installs it")
    ops, fmts = read_blocks(tmp_path, ZSTD_READS)
    assert fmts == [P.ZSTD, P.RAW] and ops.zstd_flags == P.ZSTD_THREAD_FLAGS[0]
    _, fmts = read_blocks(tmp_path, None)   # a local side that does not say (older): zlib
    assert fmts == [P.ZLIB, P.RAW]
    _, fmts = read_blocks(tmp_path, [P.ZLIB])
    assert fmts == [P.ZLIB, P.RAW]


def test_with_libzstd_the_agent_writes_and_reads_zstd_in_its_own_process(tmp_path, monkeypatch):
    """libzstd through ctypes: a pull's blocks and a push's payloads never start the `zstd`
    program (here one that fails); a payload it cannot take in one call (two frames, no
    content size in the header) goes to the program."""
    import zstandard

    require(zstdlib.lib() is not None, "no libzstd.so.1 here; scripts/setup installs zstd")
    fake_zstd(tmp_path / "bin", f'touch {tmp_path}/ran; echo "zstd: not to be run" >&2; exit 1')
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}:{os.environ['PATH']}")
    ops, fmts = read_blocks(tmp_path, ZSTD_READS)
    assert fmts == [P.ZSTD, P.RAW] and ops.codecs([P.ZSTD]) == P.CODECS + zstdlib.CODECS
    text = log_text(20_000)
    assert zstdlib.decode(P.ZSTD, zstandard.ZstdCompressor(level=3).compress(text)) == text
    assert not (tmp_path / "ran").exists()
    for odd in (zstandard.ZstdCompressor(level=3).compress(text) * 2,
                zstandard.ZstdCompressor(write_content_size=False).compress(text)):
        with pytest.raises(ValueError, match="not to be run"):
            zstdlib.decode(P.ZSTD, odd)
    assert (tmp_path / "ran").exists()


def test_a_zstd_without_single_thread_is_run_with_t1(tmp_path, monkeypatch):
    """An old `zstd` that refuses --single-thread: -T1 from then on (a remote without
    libzstd, where the program writes the agent's zstd)."""
    require(bool(shutil.which("zstd")), "zstd missing here; scripts/setup installs it")
    monkeypatch.setattr(zstdlib, "_found", [None])
    fake_zstd(tmp_path / "bin", 'case "$*" in *--single-thread*) echo "Incorrect parameter" >&2; exit 1;; esac')
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}:{os.environ['PATH']}")
    ops, fmts = read_blocks(tmp_path, ZSTD_READS)
    assert fmts == [P.ZSTD, P.RAW] and ops.zstd_flags == ("-T1",)


def test_a_failing_zstd_falls_back_to_zlib(tmp_path, monkeypatch):
    monkeypatch.setattr(zstdlib, "_found", [None])   # no libzstd: the program writes zstd
    fake_zstd(tmp_path / "bin", 'echo "zstd: out of memory" >&2; exit 1')
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}:{os.environ['PATH']}")
    ops, fmts = read_blocks(tmp_path, ZSTD_READS)
    assert fmts == [P.ZLIB, P.RAW] and ops.zstd_flags is None
    with pytest.raises(ValueError, match="out of memory"):
        P.compress(P.ZSTD, 1, b"x" * 1000)


def test_a_listing_hashes_only_what_the_caller_has_to_compare_with(tmp_path):
    """A pull's listing names what the local side holds at those paths: a remote file new
    to it is only fetched (hashed as it arrives there), so the agent does not read it twice;
    a file it holds gets its hash (the same content is not fetched, another one is a
    conflict); without that list every new file is hashed, as before."""
    (tmp_path / "results/sub").mkdir(parents=True)
    for rel in ("results/log.txt", "results/sub/model.bin", "results/new.csv"):
        (tmp_path / rel).write_bytes(os.urandom(5000))
    os.symlink("log.txt", tmp_path / "results/last")
    present = ["results/log.txt", "results/last"]
    got = files.list_under(str(tmp_path), ["results"], {}, present)
    assert sorted(got) == ["results/last", "results/log.txt", "results/new.csv", "results/sub/model.bin"]
    assert got["results/log.txt"][3] == P.file_hash(str(tmp_path / "results/log.txt"))
    assert got["results/last"][3] == P.link_hash("log.txt")
    assert got["results/new.csv"][3] is None and got["results/sub/model.bin"][3] is None
    every = files.list_under(str(tmp_path), ["results"], {})
    assert all(v[3] is not None for v in every.values())
