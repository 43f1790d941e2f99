"""The agent's remote check (verify) on this machine's file system: what differs from the
expectations is found, whether the watch saw it change (inotify, local file systems) or
everything is looked at again (a watch it cannot vouch for, a file system that is not
local); the expectations are kept and updated by deltas.  And the codecs both sides use."""
from __future__ import annotations

import os
import shutil

import pytest

from remote_dev.agent import protocol as P
from remote_dev.agent.remote import inotify, verify


def expect_all(root, rels):
    out = []
    for rel in rels:
        st = os.lstat(os.path.join(root, rel))
        out.append((rel, P.LINK if os.path.islink(os.path.join(root, rel)) else P.FILE, st.st_size, st.st_mtime_ns))
    return out


def make_tree(root):
    for rel, text in {"a.py": "a\n", "pkg/b.py": "b\n", "pkg/sub/c.py": "c\n", "d.txt": "d\n"}.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    os.symlink("a.py", root / "link.py")
    return ["a.py", "pkg/b.py", "pkg/sub/c.py", "d.txt", "link.py"]


def diffs(answer):
    gen, found = answer
    return {rel: state for rel, state in found}


@pytest.fixture(params=["watched", "not local"])
def checks(request, monkeypatch):
    """Both ways the agent looks: with an inotify watch, and (a file system whose changes
    may come from elsewhere) statting everything every time."""
    if request.param == "not local":
        monkeypatch.setattr(inotify, "LOCAL_FS", frozenset())
    c = verify.Checks()
    c.watched = request.param == "watched"
    yield c
    c.close()


def looked_at(monkeypatch):
    """How many paths each check statted."""
    counts = []
    real = verify.differences

    def spy(root, states, rels):
        rels = list(rels)
        counts.append(len(rels))
        return real(root, states, rels)
    monkeypatch.setattr(verify, "differences", spy)
    return counts


def test_verify_finds_what_differs_and_keeps_the_expectations(tmp_path, checks, monkeypatch):
    counts = looked_at(monkeypatch)
    root = tmp_path / "root"
    rels = make_tree(root)
    blob = P.pack_states(expect_all(root, rels))
    assert checks.verify(str(root), "u1", 0, 1, blob) == [1, []]
    assert checks.verify(str(root), "u1", 1, 1, P.pack_states([])) == [1, []]
    # the watch vouches for an unchanged tree: nothing statted; else everything is
    assert counts == [len(rels), 0 if checks.watched else len(rels)]
    # changes made behind the agent's back, between two checks with nothing new to say
    with open(root / "pkg/sub/c.py", "a") as f:
        f.write("edited in place\n")                       # in place: the folder's mtime stays
    (root / "d.txt").unlink()
    st = os.stat(root / "a.py")
    os.utime(root / "a.py", ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))   # touched, same content
    found = diffs(checks.verify(str(root), "u1", 1, 1, P.pack_states([])))
    assert set(found) == {"pkg/sub/c.py", "d.txt", "a.py"}
    assert counts[-1] == (3 if checks.watched else len(rels))   # the watch named just these
    assert found["d.txt"] is None
    assert found["pkg/sub/c.py"][0] == P.FILE and found["pkg/sub/c.py"][3] is None   # size differs: no hash needed
    assert found["a.py"][1:3] == [2, st.st_mtime_ns + 10**9] and found["a.py"][3] == P.digest(b"a\n")
    # still different next time (reported until the local side re-records or rewrites it)
    assert set(diffs(checks.verify(str(root), "u1", 1, 1, P.pack_states([])))) == set(found)
    # a delta: new expectations for two, one forgotten
    delta = expect_all(root, ["pkg/sub/c.py", "a.py"]) + [("d.txt", P.FORGET, 0, 0)]
    assert checks.verify(str(root), "u1", 1, 2, P.pack_states(delta)) == [2, []]
    # a base the agent does not hold: it asks for everything
    assert checks.verify(str(root), "u1", 7, 8, P.pack_states([])) == [P.NEED_ALL]
    assert checks.verify(str(root), "other", 2, 3, P.pack_states([])) == [P.NEED_ALL]


def test_verify_sees_a_tree_deleted_and_made_again(tmp_path, checks):
    root = tmp_path / "root"
    rels = make_tree(root)
    assert checks.verify(str(root), "u", 0, 1, P.pack_states(expect_all(root, rels))) == [1, []]
    shutil.rmtree(root)
    assert set(diffs(checks.verify(str(root), "u", 1, 1, P.pack_states([])))) == set(rels)
    make_tree(root)   # the same names, made anew by someone else: other mtimes
    found = diffs(checks.verify(str(root), "u", 1, 1, P.pack_states([])))
    assert set(found) == set(rels) and all(state is not None for state in found.values())
    # re-recorded, then a hand edit in a folder made anew is still seen
    assert checks.verify(str(root), "u", 1, 2, P.pack_states(expect_all(root, rels))) == [2, []]
    with open(root / "pkg/sub/c.py", "a") as f:
        f.write("x\n")
    assert set(diffs(checks.verify(str(root), "u", 2, 2, P.pack_states([])))) == {"pkg/sub/c.py"}


def test_verify_refuses_to_hash_through_a_symlinked_folder(tmp_path, checks):
    root = tmp_path / "root"
    rels = make_tree(root)
    assert checks.verify(str(root), "u", 0, 1, P.pack_states(expect_all(root, rels))) == [1, []]
    outside = tmp_path / "outside"
    shutil.copytree(root / "pkg", outside)
    os.utime(outside / "b.py", ns=(0, 12345))
    shutil.rmtree(root / "pkg")
    os.symlink(str(outside), root / "pkg")
    found = diffs(checks.verify(str(root), "u", 1, 1, P.pack_states([])))
    assert found["pkg/b.py"][0] == P.OTHER


def test_a_one_off_check_keeps_nothing(tmp_path):
    root = tmp_path / "root"
    rels = make_tree(root)
    c = verify.Checks()
    (root / "a.py").write_text("changed\n")
    assert set(diffs(c.verify(str(root), None, 0, 0, P.pack_states(expect_all(root, ["d.txt"]) +
                                                                    [("a.py", P.FILE, 2, 1)])))) == {"a.py"}
    assert c.trees == {}
    assert rels


def test_a_watch_on_a_file_system_that_is_not_local_is_never_trusted(tmp_path, monkeypatch):
    monkeypatch.setattr(inotify, "fs_type", lambda path: "nfs4")
    w = inotify.Watch(str(tmp_path))
    assert w.broken and w.changes() is None


def test_states_pack_round_trip():
    entries = [("a.py", P.FILE, 3, 1_700_000_000_123_456_789), ("dir/ü name", P.LINK, 0, 5), ("gone", P.FORGET, 0, 0)]
    assert P.unpack_states(P.pack_states(entries)) == entries
    assert P.unpack_states(P.pack_states([])) == []


def test_packed_ops_round_trip():
    odd = os.fsdecode(b"bad\xff name\n-x")          # invalid UTF-8: a lone surrogate in str
    ops = [P.write_op("a.py", None, False, "h1", 0o644, b"print(1)\n"),
           P.write_op(odd, [P.FILE, 3, 1_700_000_000_123_456_789, "h0"], True, "h2", 0o755, os.urandom(70_000)),
           P.link_op("ln", None, False, "h3", odd), P.write_op("empty", None, False, "h4", None, b""),
           P.staged_op("big.bin", None, False, "h5", 0o644, 7), P.delete_op("gone", None, False)]
    got = P.unpack_ops(P.pack_ops(ops))
    sent = [op[:P.OP_HASH] + [None] + op[P.OP_MODE:] if op[0] == P.OP_WRITE else op for op in ops]
    assert [[bytes(v) if isinstance(v, memoryview) else v for v in op] for op in got] == sent   # writes: hashed there
    assert os.fsencode(got[1][P.OP_PATH]) == b"bad\xff name\n-x"
    answers = [[P.OK, 9, 1_700_000_000_123_456_789], [P.CONFLICT, "changed on the remote"], [P.ERROR, odd], [P.GONE]]
    assert P.unpack_answers(P.pack_answers(answers)) == (answers, None)
    assert P.unpack_answers(P.pack_answers(answers, 0.25)) == (answers, 0.25)   # the agent's seconds on it
    blob = P.pack_ops(ops)
    for bad in (blob[:-1], blob + b"x", blob[:3], b"\0\0\0\x05[1,2"):
        with pytest.raises(ValueError):
            P.unpack_ops(bad)


def test_zlib_written_here_is_read_by_the_remotes_stdlib():
    import zlib

    from remote_dev.sync import wire
    data = b"def f(x):\n    return x\n" * 50_000
    for _fmt, level, _mbs, _rel in wire.LOCAL_CODECS:
        if _fmt == P.ZLIB:
            assert zlib.decompress(wire.deflate.compress(data, level)) == data
    # zlib-ng (a dependency) writes the zlib format here: the choice uses its own table, and
    # zstandard (a dependency) adds zstd for remotes with a `zstd` program
    assert wire.LOCAL_CODECS == wire.NG_CODECS + wire.ZSTD_CODECS
    assert P.choose_codec(12.5e6, 2, 3.8, codecs=wire.NG_CODECS)[0] == P.ZLIB


@pytest.mark.parametrize("fmt", P.codec_formats())
def test_codecs_round_trip(fmt):
    """What the agent decodes, it reads back from what it and the local side (wire.compress)
    write; what the agent writes, the local side reads back (wire.decompress: zstd with
    zstandard, the `zstd` program writing no content size)."""
    from remote_dev.sync import wire
    for data in (b"", b"x", os.urandom(70_000), b"hello world\n" * 10_000):
        for level in (1, 3) if fmt == P.ZSTD else (1 if fmt == P.ZLIB else 9,):
            for compress in (wire.compress, P.compress):
                blob = compress(fmt, level, data)
                assert P.decompress(fmt, blob) == data
                assert wire.decompress(fmt, blob, len(data)) == data
    if fmt == P.ZSTD:   # a damaged or too long block is an error, never other bytes
        blob = P.compress(fmt, 1, b"hello world\n" * 10_000)
        for bad, size in ((blob[:-8], 120_000), (blob, 119_999)):
            with pytest.raises(ValueError):
                wire.decompress(fmt, bad, size)


def test_the_codec_choice_follows_the_link():
    text = 4.0   # a zlib-1 ratio of source code
    assert P.choose_codec(None, 2, text) == (P.RAW, 0)             # fast link: raw
    assert P.choose_codec(1e5, 2, 1.01) == (P.RAW, 0)               # random data: raw
    assert P.choose_codec(2.5e6, 2, text)[0] == P.BZ2               # 20 Mbit/s: the best ratio
    assert P.choose_codec(12.5e6, 2, text)[0] == P.ZLIB             # 100 Mbit/s: zlib keeps up
    assert P.choose_codec(12.5e6, 2, text, speed=0.3)[1] < P.choose_codec(12.5e6, 2, text)[1]  # a busy machine
    assert P.choose_codec(400e6, 2, text) == (P.RAW, 0)             # faster than any codec here
    assert P.choose_codec(2.5e6, 2, text, formats=[P.ZLIB])[0] == P.ZLIB   # no bz2 on the other side
    # the agent's zstd program (pulls): where the link outruns zlib, and not on slow links
    agent = P.CODECS + P.ZSTD_PROGRAM_CODECS
    assert P.choose_codec(125e6, 2, text, codecs=agent) == (P.ZSTD, 1)       # 1 Gbit/s
    assert P.choose_codec(12.5e6, 2, text, codecs=agent)[0] == P.ZSTD       # 100 Mbit/s
    assert P.choose_codec(2.5e6, 2, text, codecs=agent)[0] == P.BZ2         # 20 Mbit/s: the best ratio
    assert P.sample_ratio(os.urandom(100_000)) < P.INCOMPRESSIBLE < P.sample_ratio(b"abc" * 50_000)


def test_the_receivers_pace_bounds_every_codec_alike():
    """A link taken for 26 MB/s (answers that came at a busy agent's pace) picks a heavy
    zstd; with the agent's own pace (100 MB/s raw) bounding every choice, the fastest codec
    that keeps up with it wins, and raw where the link carries that pace as it is."""
    from remote_dev.sync import wire
    text, both = 3.9, [P.ZLIB, P.ZSTD]
    heavy = P.choose_codec(26e6, 2, text, both, codecs=wire.LOCAL_CODECS)
    assert heavy[0] == P.ZSTD and heavy[1] >= 5
    assert P.choose_codec(26e6, 2, text, both, codecs=wire.LOCAL_CODECS, ceiling=100e6) == (P.ZSTD, 1)
    assert P.choose_codec(26e6, 2, text, [P.ZLIB], codecs=wire.LOCAL_CODECS, ceiling=100e6) == (P.ZLIB, 2)
    assert P.choose_codec(150e6, 2, text, both, codecs=wire.LOCAL_CODECS, ceiling=100e6) == (P.RAW, 0)
    assert P.choose_codec(12.5e6, 2, text, both, codecs=wire.LOCAL_CODECS, ceiling=500e6) == heavy  # the link bounds
