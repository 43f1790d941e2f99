"""Content the remote already has (sync/reuse.py, agent/remote/reuse.py), against the real
sshd: a push into a second remote_root copies what the first holds instead of receiving it
(fewer bytes on the wire, the agent's answers say copied), the copies are independent files
(an edit of one never changes the other), an index entry whose file changed or went since
is not used, the index is its user's alone, and the same content at several paths of one
push crosses the wire once.  How fast: bench/sync_wan_bench.py --parts second."""
from __future__ import annotations

import asyncio
import os
import shutil
import stat
import subprocess
import time
from pathlib import Path

import pytest
from conftest import require, wait_for
from support.attacker import Mallory
from support.remote import loose_modes
from test_sync import on_engine, push, temps

from remote_dev.agent.remote.indexfile import EXT, entry_line, header, quote, read_index
from remote_dev.agent.remote.reuse import index_name
from remote_dev.sync import reuse

SIZE = 40_000


@pytest.fixture(autouse=True)
def offers_on_loopback(monkeypatch):
    """The tests' remote is on loopback, where a push sends rather than offers (sending
    costs less there): REMOTE_DEV_REUSE=always makes these pushes offer as over a WAN."""
    monkeypatch.setenv("REMOTE_DEV_REUSE", "always")


def index_dir(sshd) -> Path:
    return sshd.remote_cache / "remote-dev" / "index"


def index_file(sshd, remote_root: Path) -> Path:
    """remote_root's own index file (others' may go meanwhile: their roots went)."""
    return index_dir(sshd) / (index_name(str(remote_root)) + EXT)


def indexed(sshd, remote_root: Path) -> dict[str, list]:
    """The index's entries for remote_root (what the agents wrote down so far; none when
    it is not written yet, or dropped)."""
    return read_index(str(index_file(sshd, remote_root)), str(remote_root))


def wait_indexed(sshd, remote_root: Path, rels) -> None:
    wait_for(lambda: set(rels) <= set(indexed(sshd, remote_root)), 20, what="the index to list the pushed files")


def random_files(n: int, size: int = SIZE, prefix: str = "src/m") -> dict[str, bytes]:
    return {f"{prefix}{i}.bin": os.urandom(size) for i in range(n)}


def project_with(make_project, name: str, files: dict[str, bytes]):
    proj = make_project(name)
    for rel, data in files.items():
        proj.write(rel, data)
    return proj


def edit_in_place(path: Path, data: bytes) -> None:
    with open(path, "r+b") as f:
        f.write(data)


def test_a_second_root_gets_its_files_by_copy_and_the_copies_stay_apart(engine, make_project, sshd):
    files = random_files(40)
    first = project_with(make_project, "first", files)
    assert push(engine, first)["errors"] == []
    wait_indexed(sshd, first.remote_root, files)
    second_files = dict(files, **{"src/m0.bin": os.urandom(SIZE)})   # the second checkout differs in one
    second = project_with(make_project, "second", second_files)
    os.chmod(second.root / "src/m7.bin", 0o750)                   # a copy takes the mode pushed
    res = push(engine, second)
    assert res["errors"] == [] and res["conflicts"] == []
    assert res["copied"] == 39                     # the agent answered "copied" for all but the changed one
    assert res["wire_bytes"] < 3 * SIZE            # one file's content, the config and the copy ops
    for rel, data in second_files.items():
        assert second.remote(rel).read_bytes() == data, rel
    assert stat.S_IMODE(os.stat(second.remote("src/m7.bin")).st_mode) == 0o750
    assert stat.S_IMODE(os.stat(first.remote("src/m7.bin")).st_mode) == 0o644
    # never a hard link: an edit of either copy leaves the other as it was
    a, b = first.remote("src/m5.bin"), second.remote("src/m5.bin")
    assert os.stat(a).st_ino != os.stat(b).st_ino and os.stat(b).st_nlink == 1
    edit_in_place(b, b"edited in the second root")
    assert a.read_bytes() == files["src/m5.bin"]
    a6, b6 = first.remote("src/m6.bin"), second.remote("src/m6.bin")
    edit_in_place(a6, b"edited in the first root")
    assert b6.read_bytes() == files["src/m6.bin"]
    # and the second root's records are right: an unchanged tree pushes nothing, the
    # edited copy is a conflict (changed on the remote), not overwritten
    second.write("src/m5.bin", os.urandom(SIZE))
    again = push(engine, second)
    assert again["conflicts"] == ["src/m5.bin"] and again["files"] == 0


def test_an_index_entry_whose_file_changed_or_went_is_not_used(engine, make_project, sshd):
    files = random_files(3, 400_000, prefix="data/f")
    first = project_with(make_project, "first", files)
    assert push(engine, first)["errors"] == []
    wait_indexed(sshd, first.remote_root, files)
    changed, gone = first.remote("data/f0.bin"), first.remote("data/f1.bin")
    before = os.stat(changed)
    edit_in_place(changed, b"changed in place, same size")       # same size, another mtime
    os.utime(changed, ns=(before.st_atime_ns, before.st_mtime_ns + 5_000_000_000))
    assert os.stat(changed).st_size == before.st_size
    gone.unlink()
    second = project_with(make_project, "second", files)
    res = push(engine, second)
    assert res["errors"] == [] and res["copied"] == 1          # only the intact one
    assert res["wire_bytes"] > 2 * 400_000                     # the other two were sent
    for rel, data in files.items():
        assert second.remote(rel).read_bytes() == data, rel


def test_the_index_is_its_users_alone(engine, make_project, sshd):
    require(os.geteuid() == 0, "the second user is made with useradd: run the tests as root")
    files = random_files(2)
    proj = project_with(make_project, "proj", files)
    assert push(engine, proj)["errors"] == []
    wait_indexed(sshd, proj.remote_root, files)
    folder = index_dir(sshd)
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    assert loose_modes(folder) == []
    name = index_file(sshd, proj.remote_root)
    # let her walk up to the file (every folder above it traversable): its own mode must stop her
    opened = [p for p in [folder, *folder.parents] if not os.stat(p).st_mode & 0o001]
    modes = {p: stat.S_IMODE(os.stat(p).st_mode) for p in opened}
    mallory = Mallory()
    try:
        for p in opened:
            os.chmod(p, modes[p] | 0o001)
        out = subprocess.run(["runuser", "-u", mallory.name, "--", "cat", str(name)], capture_output=True,
                             text=True, timeout=30, cwd="/")
        listing = subprocess.run(["runuser", "-u", mallory.name, "--", "ls", str(folder)], capture_output=True,
                                 text=True, timeout=30, cwd="/")
    finally:
        for p in opened:
            os.chmod(p, modes[p])
        mallory.remove()
    assert out.returncode != 0 and "Permission denied" in out.stderr and str(proj.remote_root) not in out.stdout
    assert listing.returncode != 0 and name.name not in listing.stdout


def test_the_index_of_a_root_that_went_goes(engine, make_project, sshd):
    """A removed worktree's index is dropped when an agent starts (its hello then tells
    whether anything is left to offer)."""
    files = random_files(2)
    gone = project_with(make_project, "gone", files)
    assert push(engine, gone)["errors"] == []
    wait_indexed(sshd, gone.remote_root, files)
    shutil.rmtree(gone.remote_root)
    other = project_with(make_project, "other", {"a.txt": b"a"})
    assert push(engine, other)["errors"] == []          # a new connection: its agent's hello
    assert indexed(sshd, gone.remote_root) == {}
    assert loose_modes(index_dir(sshd)) == []


def test_the_same_content_at_several_paths_crosses_the_wire_once(engine, make_project, sshd):
    same = os.urandom(50_000)
    files = {f"copies/c{i:02d}.bin": same for i in range(30)}
    files["other.bin"] = os.urandom(50_000)
    proj = project_with(make_project, "dups", files)
    res = push(engine, proj)
    assert res["errors"] == [] and res["files"] == 32            # + .remote-dev.toml
    # batches are read in threads: when a later batch's copy registers the content before
    # an earlier batch's, that earlier one is sent whole too (twice at most, never wrong)
    assert res["copied"] >= 28
    assert res["wire_bytes"] < 4 * 50_000
    for rel, data in files.items():
        assert proj.remote(rel).read_bytes() == data, rel
    a, b = proj.remote("copies/c00.bin"), proj.remote("copies/c17.bin")
    assert os.stat(a).st_ino != os.stat(b).st_ino
    edit_in_place(b, b"only this one")
    assert a.read_bytes() == same


@pytest.mark.parametrize("hello_says", [False, True])
def test_a_push_offers_only_where_the_remote_can_hold_something(engine, make_project, hello_says):
    """A first push (the remote has no index) costs no round trip of offers."""
    from test_sync import on_engine

    proj = project_with(make_project, "offer", random_files(40))

    async def decide(sess):
        await sess.ensure()
        sess.hello["reuse"] = hello_says
        sess.state(reuse.RemoteIndex).known = False
        from remote_dev.sync.reconcile import Send
        from remote_dev.sync.scan import LocalEntry
        sends = [Send(f"f{i}", LocalEntry("f", SIZE, 0, 0o644), None) for i in range(40)]
        small = [Send("s", LocalEntry("f", SIZE, 0, 0o644), None)]
        return len(reuse.worth_offering(sess, sends)), len(reuse.worth_offering(sess, small))
    assert on_engine(engine, proj, decide) == ((40, 0) if hello_says else (0, 0))


@pytest.mark.parametrize("hello_says", [False, True])
def test_a_second_worktree_connected_before_the_first_pushed_copies_from_it(engine, make_project, sshd, hello_says):
    """Two worktrees opened at once: the second's connection said hello, then the first
    pushed, then the second.  The second copies what the first root holds, whatever its
    hello said:
    - "no index" (a fresh remote): its push asks again as it starts (answered during the
      scan);
    - "an index": its agent read the index as it said hello (an earlier root is indexed
      first, so that read happens in both cases), and a request of offers reads it again,
      not half a second (RECHECK) after that first look."""
    earlier = project_with(make_project, "earlier", random_files(1))
    assert push(engine, earlier)["errors"] == []
    wait_indexed(sshd, earlier.remote_root, ["src/m0.bin"])
    files = random_files(40)
    first = project_with(make_project, "first", files)
    second = project_with(make_project, "second", files)

    async def connect(sess):
        await sess.ensure()
        said = bool(sess.hello["reuse"])
        sess.hello["reuse"] = hello_says
        return said, sess.state(reuse.RemoteIndex).known
    assert on_engine(engine, second, connect) == (True, False)
    assert push(engine, first)["errors"] == []
    wait_indexed(sshd, first.remote_root, files)
    res = push(engine, second)
    assert res["errors"] == [] and res["copied"] == 40
    assert res["wire_bytes"] < SIZE
    assert on_engine(engine, second, lambda sess: asyncio.sleep(0, sess.state(reuse.RemoteIndex).known)) is True


def test_a_sample_that_misses_stops_the_hashing_ahead(engine, make_project):
    """A push offers a sample first and hashes the files of its first requests meanwhile
    (the round trip of the sample saved when the remote copies it).  When the remote holds
    none of the sample (new content), that hashing stops: a push of new content pays for
    the sample's hashing, not for two requests' worth.  Hashing is made slow here (10 ms
    a file), so without the stop the threads would still be at it a while after."""
    proj = project_with(make_project, "fresh", random_files(1, 4000, "seed/s"))
    assert push(engine, proj)["errors"] == []   # this connection wrote there: the next push offers
    for rel, data in random_files(1200, 2000, "data/n").items():
        proj.write(rel, data)
    hashed = []
    real = reuse.new_hasher

    def slow_hasher():
        time.sleep(0.01)
        hashed.append(1)
        return real()
    reuse.new_hasher = slow_hasher
    try:
        res = push(engine, proj)
        time.sleep(3.0)   # (without the stop: ~100 more a second, up to all 1,136)
    finally:
        reuse.new_hasher = real
    assert res["errors"] == [] and res["copied"] == 0 and res["files"] == 1200
    # the sample (64) and what the two threads hashed ahead while it was hashed and out
    assert len(hashed) < 64 * 5, len(hashed)


def strip_hashes(sshd, remote_root: Path) -> int:
    """Drop the hashes of remote_root's index entries: the index an agent leaves when it
    ends (a cut session) before it hashed what it wrote.  How many entries there are."""
    p = index_file(sshd, remote_root)
    files = read_index(str(p), str(remote_root))
    assert files
    tmp = p.with_suffix(".test-tmp")
    with open(tmp, "wb") as out:
        out.write(header(str(remote_root)))
        for rel, (size, mtime, _digest) in files.items():
            out.write(entry_line(quote(rel), [size, mtime, None]))
    os.chmod(tmp, 0o600)
    tmp.rename(p)   # a new inode: the agents read it again
    return len(files)


def test_copies_from_entries_without_hashes_in_threads_take_the_right_source(engine, make_project, sshd):
    """Many files of one size whose entries have no hash yet: the agent's copy threads hash
    the candidates at once, each filling in hashes the others read; every copy must be of
    the content offered (seen: another file's content, 1 run in 2)."""
    files = random_files(240, 6000, prefix="pkg/f")
    first = project_with(make_project, "first", files)
    assert push(engine, first)["errors"] == []
    wait_for(lambda: len(indexed(sshd, first.remote_root)) >= 240
             and all(e[2] for e in indexed(sshd, first.remote_root).values()), 20, what="the hashes")
    assert strip_hashes(sshd, first.remote_root) >= 240
    second = project_with(make_project, "second", files)
    res = push(engine, second)
    assert res["errors"] == [] and res["conflicts"] == [] and res["copied"] > 0
    wrong = [rel for rel, data in files.items() if second.remote(rel).read_bytes() != data]
    assert wrong == []


def test_an_edit_that_keeps_size_and_mtime_is_not_copied_from_the_index(engine, make_project, sshd):
    """The index trusts size and mtime (rsync's quick check), but the copy it makes is read
    back and hashed: content edited in place with its size and mtime put back never lands
    in another root; that file is sent."""
    files = random_files(3, 400_000, prefix="data/f")
    first = project_with(make_project, "first", files)
    assert push(engine, first)["errors"] == []
    wait_for(lambda: len(indexed(sshd, first.remote_root)) >= 3
             and all(e[2] for e in indexed(sshd, first.remote_root).values()), 20, what="the hashes")
    edited = first.remote("data/f0.bin")
    before = os.stat(edited)
    edit_in_place(edited, b"changed in place, same size, same mtime")
    os.utime(edited, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert (os.stat(edited).st_size, os.stat(edited).st_mtime_ns) == (before.st_size, before.st_mtime_ns)
    second = project_with(make_project, "second", files)
    res = push(engine, second)
    assert res["errors"] == [] and res["conflicts"] == []
    assert res["copied"] == 2 and res["wire_bytes"] > 400_000    # the edited one was sent
    for rel, data in files.items():
        assert second.remote(rel).read_bytes() == data, rel
    assert temps(second.remote_root) == []


def test_on_a_loopback_class_link_a_push_sends_small_files_and_offers_large_ones(engine, make_project, sshd,
                                                                                  monkeypatch):
    """There sending costs less than a copy's fixed cost below reuse.copy_min (~50 KB):
    the 40 KB files are sent, the 400 KB ones copied."""
    from remote_dev.sync import wire
    monkeypatch.setenv("REMOTE_DEV_REUSE", "auto")
    # the push's one ping classifies the link; on a loaded machine a loopback ping can take
    # more than FAST_RTT_MS: the bound raised so that this loopback counts as what it is
    monkeypatch.setattr(wire, "FAST_RTT_MS", 1000.0)
    files = {**random_files(40), **random_files(4, 400_000, "data/big")}
    first = project_with(make_project, "first", files)
    assert push(engine, first)["errors"] == []
    wait_indexed(sshd, first.remote_root, files)
    second = project_with(make_project, "second", files)
    res = push(engine, second)
    assert res["errors"] == [] and res["copied"] == 4
    assert 40 * SIZE < res["wire_bytes"] < 40 * SIZE + 400_000
    for rel, data in files.items():
        assert second.remote(rel).read_bytes() == data, rel


def test_the_smallest_file_worth_a_copy_follows_the_link(engine, make_project, monkeypatch):
    """A copy's fixed cost against sending the file: nearly every file on a WAN link, only
    larger ones on a campus link or loopback; REMOTE_DEV_REUSE overrides."""
    from remote_dev.sync import reuse, wire
    proj = make_project()
    monkeypatch.setenv("REMOTE_DEV_REUSE", "auto")

    async def least(sess, rtt_ms, rate=None):
        await sess.ensure()
        meter = sess.state(wire.LinkMeter)
        meter.rtt_ms, meter.rate, meter.assumed = rtt_ms, rate, None
        return reuse.copy_min(sess)
    wan = on_engine(engine, proj, lambda sess: least(sess, 40.0))
    slow = on_engine(engine, proj, lambda sess: least(sess, 80.0, 2.5e6))
    lan = on_engine(engine, proj, lambda sess: least(sess, 3.0))
    lo = on_engine(engine, proj, lambda sess: least(sess, 0.3))
    assert slow < reuse.OFFER_MIN < wan < 10_000 < lan and 10_000 < lo < 100_000, (slow, wan, lan, lo)
    monkeypatch.setenv("REMOTE_DEV_REUSE", "always")
    assert on_engine(engine, proj, lambda sess: least(sess, 0.3)) == 0
    monkeypatch.setenv("REMOTE_DEV_REUSE", "never")
    assert on_engine(engine, proj, lambda sess: least(sess, 40.0)) == float("inf")
