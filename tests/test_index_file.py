"""The content index (agent/remote/indexfile.py, reuse.py): paths of any name, damaged
files, appends and compactions, readers of what was appended, two writers and a reader at
once, contents many files share, the JSON files of the format before, and lookups of what
an agent has not written down yet."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys

from remote_dev.agent.remote import indexfile, reuse
from remote_dev.agent.remote.indexfile import PackedIndex, read_index, read_whole


def digest_of(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:32]


def packed(path: str) -> PackedIndex:
    return reuse.LoadedFile.read(path, os.stat(path).st_ino).table


def index_path(folder, root) -> str:
    return os.path.join(folder, reuse.index_name(str(root)) + indexfile.EXT)


def test_paths_of_any_name_are_read_back_as_written(tmp_path):
    """A path may hold a newline, a tab, backslashes, text that looks like an escape, and
    bytes that are not UTF-8 (surrogates, as os.fsdecode gives them)."""
    root = str(tmp_path / "ro\not\\t")
    names = ["a\nb.py", "tab\there.py", "back\\slash", "looks\\nlike", "\\", "n\\\n", "caf\u00e9/\u6587.py",
             "raw\udcff\udc80.bin", "with space/x"]
    entries = {rel: [i + 1, 10**18 + i, digest_of(rel)] for i, rel in enumerate(names)}
    entries["unhashed"] = [7, 8, None]
    reuse.ContentIndex.merge(str(tmp_path), root, {**entries, "odd hash": [1, 2, "12\n-\t3"]})
    path = index_path(tmp_path, root)
    assert read_index(path, root) == {**entries, "odd hash": [1, 2, None]}
    table = packed(path)
    assert table.root == root
    for rel in names:
        assert table.by_digest(digest_of(rel)) == [(rel, entries[rel])]
    assert table.by_size(7) == [("unhashed", [7, 8, None])]
    assert table.by_digest(digest_of("elsewhere")) == [] and table.by_digest("not hex") == []


def test_a_damaged_file_loses_only_its_damaged_lines(tmp_path):
    root = str(tmp_path)
    good = indexfile.entry_line(b"good", [5, 6, digest_of("good")])
    gone = indexfile.entry_line(b"gone", [1, 1, digest_of("gone")]) + indexfile.entry_line(b"gone", None)
    path = tmp_path / "x.index"
    path.write_bytes(indexfile.header(root) + good + gone + b"garbage\n" + b"-\tNaN\t1\tbad\n"
                     + b"abc\t1\t2\todd-hash\n" + b"-\t-1\t2\tnegative\n" + b"-\t3\t4\tcut sh")
    assert read_index(str(path), root) == {"good": [5, 6, digest_of("good")]}
    assert [rel for rel, _ in packed(str(path)).by_digest(digest_of("good"))] == ["good"]
    assert read_index(str(path), root + "/other") == {}
    path.write_bytes(b'{"root": "%s", "files": {}}' % root.encode())
    assert read_index(str(path), root) == {}
    assert read_index(str(tmp_path / "missing.index"), root) == {}


def test_a_merge_appends_and_a_compaction_keeps_each_paths_last_line(tmp_path, monkeypatch):
    """A merge appends its changes: a path's last line is what the index holds (a path
    replaced by what is not indexed, None, goes).  Once the lines reach twice what they
    were at the last compaction (and COMPACT_MIN more), the file is written anew with each
    path's last line, the most recently written MAX_ENTRIES."""
    monkeypatch.setattr(reuse, "MAX_ENTRIES", 3)
    monkeypatch.setattr(reuse, "COMPACT_MIN", 50)   # 3 lines of 8 bytes: the next 49 are appended, 55 more are not
    root = str(tmp_path)
    merge = reuse.ContentIndex.merge
    path = index_path(tmp_path, root)
    merge(str(tmp_path), root, {"a": [1, 1, None], "b": [2, 2, None], "c": [3, 3, None]})
    size, inode = os.path.getsize(path), os.stat(path).st_ino
    merge(str(tmp_path), root, {"b": [20, 20, digest_of("b")], "a": None})
    assert os.stat(path).st_ino == inode and os.path.getsize(path) > size   # appended
    assert list(read_index(path, root).items()) == [("c", [3, 3, None]), ("b", [20, 20, digest_of("b")])]
    table = packed(path)
    assert table.by_size(1) == [] and table.by_size(2) == [] and table.by_size(3) == [("c", [3, 3, None])]
    assert table.by_digest(digest_of("b")) == [("b", [20, 20, digest_of("b")])]
    merge(str(tmp_path), root, {"d": [4, 4, None], "e": [5, 5, None], "f": [6, 6, digest_of("f")]})
    assert os.stat(path).st_ino != inode   # compacted: written anew
    assert list(read_index(path, root)) == ["d", "e", "f"]
    assert len(read_whole(path).read().splitlines()) == 1 + 3
    assert [n for n in os.listdir(tmp_path) if n.endswith(indexfile.EXT)] == [os.path.basename(path)]
    assert [n for n in os.listdir(tmp_path) if ".tmp" in n] == []


def test_a_reader_reads_what_was_appended_and_a_compacted_file_whole(tmp_path, monkeypatch):
    """An agent that read the index reads only what was appended since (the file grew,
    its inode stayed), a line cut short at its end once it is whole, and the file again
    when it was compacted."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    folder = reuse.private_dir(reuse.index_dir())
    root = tmp_path / "root"
    root.mkdir()
    merge = reuse.ContentIndex.merge
    merge(folder, str(root), {"a": [1, 1, digest_of("a")]})
    files = reuse.IndexFiles()
    (table,) = files.tables()
    path = index_path(folder, root)
    with open(path, "ab") as f:   # a writer's line, half written
        f.write(indexfile.entry_line(b"b", [2, 2, digest_of("b")])[:10])
    files.look_again()
    assert files.tables() == [table] and table.by_digest(digest_of("b")) == []
    with open(path, "ab") as f:
        f.write(indexfile.entry_line(b"b", [2, 2, digest_of("b")])[10:])
    merge(folder, str(root), {"c": [3, 3, digest_of("c")]})
    files.look_again()
    assert files.tables() == [table]   # the same table, added to
    assert [table.by_digest(digest_of(k)) for k in "abc"] == [[(k, [n, n, digest_of(k)])] for n, k in
                                                            enumerate("abc", 1)]
    monkeypatch.setattr(reuse, "COMPACT_MIN", -(1 << 20))
    more = {k: [n, n, digest_of(k)] for n, k in enumerate("defgh", 4)}
    merge(folder, str(root), {"a": None, **more})   # compacted, and larger than what was read
    files.look_again()
    (again,) = files.tables()
    assert again is not table and again.by_digest(digest_of("a")) == []
    assert again.by_digest(digest_of("c")) == [("c", [3, 3, digest_of("c")])]
    assert [again.by_digest(digest_of(k)) for k in more] == [[(k, e)] for k, e in more.items()]


def test_every_file_of_a_content_many_share_is_found(tmp_path):
    """Many files of one content (empty __init__.py files, licenses) share a digest: each is
    a candidate, and a digest that begins as theirs does but differs after is not."""
    root = str(tmp_path)
    same = digest_of("license")
    near = same[:16] + ("0" if same[16] != "0" else "1") + same[17:]
    entries = {"pkg%d/LICENSE" % i: [1000, i, same] for i in range(3000)}
    entries.update({"near": [1000, 1, near]}, **{"other%d" % i: [9, i, digest_of(str(i))] for i in range(3000)})
    reuse.ContentIndex.merge(str(tmp_path), root, entries)
    table = packed(index_path(tmp_path, root))
    assert sorted(rel for rel, _ in table.by_digest(same)) == sorted("pkg%d/LICENSE" % i for i in range(3000))
    assert table.by_digest(near) == [("near", [1000, 1, near])]
    assert table.by_digest(digest_of("17")) == [("other17", [9, 17, digest_of("17")])]


def test_the_json_files_of_the_format_before_go_and_roots_gone_too(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    folder = reuse.private_dir(reuse.index_dir())
    alive, gone = tmp_path / "alive", tmp_path / "gone"
    alive.mkdir()
    for root in (alive, gone):
        reuse.ContentIndex.merge(folder, str(root), {"f": [1, 2, digest_of("f")]})
    old = reuse.index_name(str(alive))
    for ext in (".json", ".root"):
        with open(os.path.join(folder, old + ext), "w") as f:
            f.write("{}")
    assert reuse.has_index()
    assert sorted(os.listdir(folder)) == sorted([reuse.index_name(str(alive)) + indexfile.EXT,
                                                 reuse.index_name(str(alive)) + ".lock"])


WRITER = """
import hashlib, sys
from remote_dev.agent.remote import reuse
folder, root, k = sys.argv[1], sys.argv[2], sys.argv[3]
reuse.COMPACT_MIN = -(1 << 30) if k == "1" else 1 << 30   # the first compacts at each merge, the other appends
digest = lambda j: hashlib.sha256(b"%s-%d" % (k.encode(), j)).hexdigest()[:32]
for i in range(0, 300, 10):
    reuse.ContentIndex.merge(folder, root, {"w%s/%d" % (k, j): [j, int(k), digest(j)] for j in range(i, i + 10)})
"""


def test_two_writers_and_a_reader_at_once_lose_nothing(tmp_path, monkeypatch):
    """Two agents write one root's index at once (two Neovims pushing into one
    remote_root), one compacting it at each merge, the other appending, while a third
    reads it again and again: every entry is in the file and in the reader's table at the
    end (without the merge's lock, some were lost in 3 runs of 3)."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    folder = reuse.private_dir(reuse.index_dir())
    root = tmp_path / "root"
    root.mkdir()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    procs = [subprocess.Popen([sys.executable, "-c", WRITER, folder, str(root), k], env=env) for k in "12"]
    files = reuse.IndexFiles()
    reads = 0
    while any(p.poll() is None for p in procs):
        files.look_again()
        files.tables()
        reads += 1
    assert [p.returncode for p in procs] == [0, 0]
    files.look_again()
    (table,) = files.tables()
    want = {"w%s/%d" % (k, j): [j, int(k), hashlib.sha256(b"%s-%d" % (k.encode(), j)).hexdigest()[:32]]
            for k in "12" for j in range(300)}
    assert read_index(index_path(folder, root), str(root)) == want
    for rel, entry in want.items():
        assert (rel, entry) in table.by_digest(entry[2])
    assert reads > 1


def test_a_lookup_goes_through_the_files_of_its_content_not_of_its_size(tmp_path, monkeypatch):
    """What this agent wrote and has not flushed yet is looked up by hash (by size only
    while it has none): a push of 3,600 files of one size (fixed-shape arrays, a model's
    shards) copied them at 1 ms a file, every lookup going through all the others."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    idx = reuse.ContentIndex()
    idx.timer = "held"   # (no writer thread: the entries stay pending)
    root = str(tmp_path)
    rels = ["f%d.bin" % i for i in range(200)]
    idx.put_all(root, rels, [[1000, i, digest_of(rel)] for i, rel in enumerate(rels)])
    idx.put_all(root, ["unhashed.bin"], [[1000, 7, None]])
    assert idx.candidates(digest_of("f5.bin"), 1000)[0] == (root, "f5.bin", [1000, 5, digest_of("f5.bin")])
    assert sorted(len(bucket) for bucket in idx.own.values()) == [1] * 201
    unhashed = idx.own[1000][(root, "unhashed.bin")]
    idx.note_hash(root, "unhashed.bin", unhashed, digest_of("u"))   # a lookup hashed it
    assert idx.candidates(digest_of("u"), 1000) == [(root, "unhashed.bin", [1000, 7, digest_of("u")])]
    assert not idx.own.get(1000) and (root, "unhashed.bin") in idx.own[digest_of("u")]
