"""The content index's files (agent/remote/indexfile.py): paths of any name, damaged files,
merges, contents many files share, and the JSON files of the format before."""

from __future__ import annotations

import hashlib
import os

from remote_dev.agent.remote import indexfile, reuse
from remote_dev.agent.remote.indexfile import PackedIndex, read_index, read_root, read_whole


def digest_of(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:32]


def packed(path: str) -> PackedIndex:
    f = read_whole(path)
    return PackedIndex(read_root(f), f)


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
    reuse.ContentIndex.merge(str(tmp_path), root, entries)
    path = index_path(tmp_path, root)
    assert read_index(path, root) == entries
    table = packed(path)
    assert table.root == root
    for rel in names:
        assert table.by_digest(digest_of(rel)) == [(rel, entries[rel])]
    assert table.by_size(7) == [("unhashed", [7, 8, None])]
    assert table.by_digest(digest_of("elsewhere")) == [] and table.by_digest("not hex") == []


def test_a_damaged_file_loses_only_its_damaged_lines(tmp_path):
    root = str(tmp_path)
    good = indexfile.entry_line(b"good", [5, 6, digest_of("good")])
    path = tmp_path / "x.index"
    path.write_bytes(indexfile.header(root) + good + b"garbage\n" + b"-\tNaN\t1\tbad\n"
                     + b"abc\t1\t2\todd-hash\n" + b"-\t-1\t2\tnegative\n" + b"-\t3\t4\tcut sh")
    assert read_index(str(path), root) == {"good": [5, 6, digest_of("good")]}
    assert [rel for rel, _ in packed(str(path)).by_digest(digest_of("good"))] == ["good"]
    assert read_index(str(path), root + "/other") == {}
    path.write_bytes(b'{"root": "%s", "files": {}}' % root.encode())
    assert read_index(str(path), root) == {}
    assert read_index(str(tmp_path / "missing.index"), root) == {}


def test_a_merge_changes_entries_in_their_place_and_drops_the_oldest(tmp_path, monkeypatch):
    """An entry written again keeps its place, one replaced by what is not indexed (None)
    goes, a new one goes at the end; beyond MAX_ENTRIES the least recently written go."""
    monkeypatch.setattr(reuse, "MAX_ENTRIES", 3)
    root = str(tmp_path)
    merge = reuse.ContentIndex.merge
    merge(str(tmp_path), root, {"a": [1, 1, None], "b": [2, 2, None], "c": [3, 3, None]})
    merge(str(tmp_path), root, {"b": [20, 20, digest_of("b")], "d": [4, 4, None], "a": None})
    path = index_path(tmp_path, root)
    assert list(read_index(path, root).items()) == [("b", [20, 20, digest_of("b")]), ("c", [3, 3, None]),
                                                    ("d", [4, 4, None])]
    merge(str(tmp_path), root, {"e": [5, 5, None], "f": [6, 6, None]})
    assert list(read_index(path, root)) == ["d", "e", "f"]
    assert [n for n in os.listdir(tmp_path) if n.endswith(indexfile.EXT)] == [os.path.basename(path)]
    assert [n for n in os.listdir(tmp_path) if ".tmp" in n] == []


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
