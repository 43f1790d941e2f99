"""protocol.py, the facts both sides share: the content hash and the conflict rule,
table-driven, plus properties of the rule."""
from __future__ import annotations

import hashlib
import os

import pytest
from hypothesis import given
from hypothesis import strategies as st

from remote_dev.agent import protocol as P


# --------------------------------------------------------------------------- hash


def test_digest_is_sha256_cut_to_128_bits():
    # sha256("hello") = 2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824
    assert P.digest(b"hello") == "2cf24dba5fb0a30e26e83b2ac5b9e29e"
    assert P.digest(b"") == "e3b0c44298fc1c149afbf4c8996fb924"
    assert len(P.digest(b"x")) == P.HASH_HEX == 32


@pytest.mark.parametrize("size", [0, 1, 4095, P.HASH_BLOCK - 1, P.HASH_BLOCK, P.HASH_BLOCK + 1, 3 * P.HASH_BLOCK + 7])
def test_file_hash_equals_digest_of_content(tmp_path, size):
    data = os.urandom(size)
    path = tmp_path / "f.bin"
    path.write_bytes(data)
    assert P.file_hash(path) == P.digest(data) == hashlib.sha256(data).hexdigest()[:32]
    h = P.new_hasher()
    for i in range(0, size, 1000):
        h.update(data[i:i + 1000])
    assert P.hasher_digest(h) == P.digest(data)


def test_file_hash_never_follows_a_symlink(tmp_path):
    (tmp_path / "target").write_bytes(b"secret")
    os.symlink("target", tmp_path / "link")
    with pytest.raises(OSError):
        P.file_hash(tmp_path / "link")


@pytest.mark.parametrize("target", ["t", "../up/x", "dir with space/é", ""])
def test_link_hash_is_the_target_with_a_prefix(target):
    expected = hashlib.sha256(b"link:" + os.fsencode(target)).hexdigest()[:32]
    assert P.link_hash(target) == P.link_hash(os.fsencode(target)) == expected
    assert P.link_hash(target) != P.digest(os.fsencode(target))


def test_op_builders_match_the_documented_shapes():
    assert P.write_op("a", None, False, "h", 0o644, b"x") == ["w", "a", None, False, "h", 0o644, b"x"]
    assert P.staged_op("a", None, True, "h", 0o600, 7) == ["s", "a", None, True, "h", 0o600, 7]
    assert P.link_op("a", None, False, "h", "t") == ["l", "a", None, False, "h", None, "t"]
    assert P.delete_op("a", ["f", 1, 2, "h"], False) == ["d", "a", ["f", 1, 2, "h"], False]
    op = P.write_op("p", "E", "F", "H", "M", "D")
    assert [op[i] for i in (P.OP_KIND, P.OP_PATH, P.OP_EXPECT, P.OP_FORCE, P.OP_HASH, P.OP_MODE, P.OP_PAYLOAD)] \
        == [P.OP_WRITE, "p", "E", "F", "H", "M", "D"]


def test_live_states():
    assert P.LIVE_STATES == ("starting", "running", "pending")
    assert all(P.is_live(s) for s in P.LIVE_STATES)
    assert not any(P.is_live(s) for s in P.ENDED_STATES)
    assert not set(P.LIVE_STATES) & set(P.ENDED_STATES)


# --------------------------------------------------------------------------- conflict rule

F, L = P.FILE, P.LINK
SYNCED = [F, 10, 1000, "aa"]          # what the last sync left
CHANGED = "changed on the remote since the last sync"
UNKNOWN = "exists on the remote and differs (never pushed by remote_dev)"

# (case, current, expect, new_hash, current_hash, side, reason)
CASES = [
    ("nothing there", None, SYNCED, "bb", None, P.REMOTE, None),
    ("nothing there, never synced", None, None, "bb", None, P.REMOTE, None),
    ("as synced, by stat", [F, 10, 1000], SYNCED, "bb", "zz", P.REMOTE, None),
    ("as synced, by stat, hash in state", [F, 10, 1000, "zz"], SYNCED, "bb", None, P.REMOTE, None),
    ("touched, same content", [F, 10, 2000, "aa"], SYNCED, "bb", None, P.REMOTE, None),
    ("changed, already the new content", [F, 11, 2000, "bb"], SYNCED, "bb", None, P.REMOTE, None),
    ("changed", [F, 11, 2000, "cc"], SYNCED, "bb", None, P.REMOTE, CHANGED),
    ("changed, delete", [F, 11, 2000, "cc"], SYNCED, None, None, P.REMOTE, CHANGED),
    ("as synced, delete", [F, 10, 1000, "aa"], SYNCED, None, None, P.REMOTE, None),
    ("never synced, differs", [F, 3, 5, "cc"], None, "bb", None, P.REMOTE, UNKNOWN),
    ("never synced, same", [F, 3, 5, "bb"], None, "bb", None, P.REMOTE, None),
    ("never synced, delete", [F, 3, 5, "cc"], None, None, None, P.REMOTE, UNKNOWN),
    ("kind changed, same size and time", [L, 10, 1000, "ll"], SYNCED, "bb", None, P.REMOTE, CHANGED),
    ("symlink as synced", [L, 4, 9, "ll"], [L, 4, 9, "ll"], "bb", None, P.REMOTE, None),
    ("symlink retargeted", [L, 4, 10, "mm"], [L, 4, 9, "ll"], "bb", None, P.REMOTE, CHANGED),
    ("a folder", [P.DIR, 0, 5], SYNCED, "bb", None, P.REMOTE, P.FOLDER_IN_THE_WAY),
    ("a folder, never synced", [P.DIR, 0, 5], None, None, None, P.REMOTE, P.FOLDER_IN_THE_WAY),
    ("a fifo", [P.OTHER, 0, 5], SYNCED, "bb", None, P.REMOTE, P.OTHER_IN_THE_WAY),
    ("hash unknown, stat differs", [F, 11, 2000], SYNCED, "bb", None, P.REMOTE, CHANGED),
    ("hash given apart", [F, 11, 2000], SYNCED, "bb", "bb", P.REMOTE, None),
    ("pull: changed locally", [F, 11, 2000, "cc"], SYNCED, "bb", None, P.LOCAL,
     "changed locally since the last sync"),
    ("pull: exists locally", [F, 11, 2000, "cc"], None, "bb", None, P.LOCAL, "exists locally and differs"),
    ("pull: as synced", [F, 10, 1000], SYNCED, "bb", None, P.LOCAL, None),
]


@pytest.mark.parametrize("case,current,expect,new_hash,current_hash,side,reason", CASES, ids=[c[0] for c in CASES])
def test_conflict_rule(case, current, expect, new_hash, current_hash, side, reason):
    assert P.conflict_reason(current, expect, new_hash, current_hash, side) == reason
    if current_hash is None and current is not None and len(current) > 3:
        # the same with the hash computed on demand, as the agent does
        calls = []

        def compute():
            calls.append(1)
            return current[3]
        assert P.conflict_reason(current[:3], expect, new_hash, compute, side) == reason
        assert len(calls) <= 1


def test_conflict_rule_hashes_only_when_the_stat_does_not_settle_it():
    def boom():
        raise AssertionError("hashed although the stat matched")
    assert P.conflict_reason([F, 10, 1000], SYNCED, "bb", boom) is None
    assert P.conflict_reason(None, SYNCED, "bb", boom) is None
    assert P.conflict_reason([P.DIR, 0, 1], SYNCED, "bb", boom) == P.FOLDER_IN_THE_WAY


states = st.tuples(st.sampled_from([F, L]), st.integers(0, 5), st.integers(0, 5), st.sampled_from(["h1", "h2", "h3"]))


@given(current=states, expect=st.none() | states, new_hash=st.none() | st.sampled_from(["h1", "h2", "h3"]))
def test_conflict_rule_properties(current, expect, new_hash):
    current, expect = list(current), None if expect is None else list(expect)
    reason = P.conflict_reason(current, expect, new_hash)
    # what the last sync left, or the new content already, is never a conflict
    if expect is not None and (current == expect or current[3] == expect[3]):
        assert reason is None
    if new_hash is not None and current[3] == new_hash:
        assert reason is None
    # and a conflict is only ever what the rule names
    if reason is not None:
        assert reason == (UNKNOWN if expect is None else CHANGED)
        assert current[3] != new_hash and (expect is None or current[3] != expect[3])
