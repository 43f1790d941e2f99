"""The records store without an sshd: the on-disk format earlier versions wrote is read
as it is, anything else starts afresh."""
from __future__ import annotations

import msgpack
from remote_dev.sync.records import RECORDS_VERSION, Record, SyncRecords

REC = Record("f", 1, 2, "h" * 32, 3, 4, 0o644, "push")


def test_reads_the_format_of_positional_lists(tmp_path):
    path = tmp_path / "sync-x.msgpack"
    path.write_bytes(msgpack.packb({"v": 2, "records": {"a.py": ["f", 1, 2, "h" * 32, 3, 4, 0o644, "push"]}}))
    with open(path.with_name(path.name + ".journal"), "wb") as f:
        f.write(msgpack.packb({"b.py": ["l", 5, 6, "g" * 32, 7, 8, 0o777, "pull"]}))
        f.write(msgpack.packb({"a.py": None}))
    r = SyncRecords(path)
    assert r.data == {"b.py": Record("l", 5, 6, "g" * 32, 7, 8, 0o777, "pull")}
    assert r.get("b.py").origin == "pull" and r.expect("b.py") == ["l", 7, 8, "g" * 32]


def test_writes_the_same_format(tmp_path):
    path = tmp_path / "sync-x.msgpack"
    r = SyncRecords(path)
    for i in range(5000):
        r.set(f"f{i}", REC)
    r.save()  # large enough to be a snapshot
    raw = msgpack.unpackb(path.read_bytes(), raw=False)
    assert raw["v"] == RECORDS_VERSION == 2
    assert raw["records"]["f0"] == ["f", 1, 2, "h" * 32, 3, 4, 0o644, "push"]


def test_other_versions_and_damage_start_afresh(tmp_path):
    path = tmp_path / "sync-x.msgpack"
    path.write_bytes(msgpack.packb({"v": 1, "records": {"a.py": ["f", 1]}}))
    assert SyncRecords(path).data == {}
    path.write_bytes(b"\xc1 not msgpack")
    assert SyncRecords(path).data == {}
    path.write_bytes(msgpack.packb({"v": 2, "records": {"a.py": ["f", 1]}}))  # too short
    assert SyncRecords(path).data == {}


def test_record_compares_stats():
    assert REC.same_local("f", 1, 2) and REC.same_local("f", 1, 2, 0o644) and not REC.same_local("f", 1, 2, 0o600)
    assert not REC.same_local("l", 1, 2) and not REC.same_local("f", 1, 3)
    assert REC.same_remote(["f", 3, 4, None]) and not REC.same_remote(["f", 3, 5])


def test_writes_in_flight_are_journaled_before_they_go_out(tmp_path):
    """in_flight appends at once (a process killed right after still has them on disk);
    landed ones go with the next save; the snapshot keeps those still in flight."""
    path = tmp_path / "sync-x.msgpack"
    r = SyncRecords(path)
    r.set("a.py", REC)
    r.in_flight({"a.py": REC._replace(hash="n" * 32), "b.py": None})
    on_disk = SyncRecords(path)
    assert on_disk.data == {"a.py": REC}                      # what changed before went too
    assert on_disk.pending == {"a.py": REC._replace(hash="n" * 32), "b.py": None}
    r.landed("a.py")
    r.set("a.py", REC._replace(hash="n" * 32))
    r.save()
    on_disk = SyncRecords(path)
    assert on_disk.pending == {"b.py": None} and on_disk.data["a.py"].hash == "n" * 32
    r.in_flight({"a.py": REC})                                # in flight again, after it landed
    r.save()
    assert SyncRecords(path).pending == {"a.py": REC, "b.py": None}
    for i in range(5000):
        r.set(f"f{i}", REC)
    r.save()                                                  # a snapshot
    assert not r.journal.exists()
    assert SyncRecords(path).pending == {"a.py": REC, "b.py": None}
    r.landed("a.py")
    r.landed("b.py")
    r.save()
    assert SyncRecords(path).pending == {}


def test_a_push_leaves_the_snapshot_for_after_it(tmp_path):
    """save(snapshot=False) only appends, however long the journal grew (a push saves so
    at its end); compact() then folds a journal that grew into a snapshot."""
    path = tmp_path / "sync-x.msgpack"
    r = SyncRecords(path)
    for i in range(5000):
        r.set(f"f{i}", REC)
    r.save(snapshot=False)
    assert r.journal.exists() and not path.exists() and r.compaction_due()
    r.set("late", REC)
    r.in_flight({"w": REC})
    r.compact()
    assert not r.journal.exists() and not r.compaction_due()
    back = SyncRecords(path)
    assert len(back.data) == 5001 and back.pending == {"w": REC}
    r.compact()   # nothing due: nothing written
    assert not r.journal.exists()


def test_saves_make_their_folder_when_it_is_gone(tmp_path):
    """The folder is made by the first save, and again when it was removed meanwhile (a
    cleaned state folder), for the journal as for the snapshot."""
    import shutil

    path = tmp_path / "state" / "proj" / "sync-x.msgpack"
    r = SyncRecords(path)
    r.set("a.py", REC)
    r.save()
    assert SyncRecords(path).data == {"a.py": REC}
    shutil.rmtree(tmp_path / "state")
    r.set("b.py", REC)
    r.save()
    assert SyncRecords(path).data == {"b.py": REC}      # the journal alone: the snapshot went
    shutil.rmtree(tmp_path / "state")
    for i in range(5000):
        r.set(f"f{i}", REC)
    r.save()                                             # a snapshot
    assert len(SyncRecords(path).data) == 5002 and not r.journal.exists()


def test_a_push_keeps_its_journal_open_between_its_batches(tmp_path, monkeypatch):
    """The writes in flight of one push are appended to a journal held open (every open
    and close on the engine's loop hands the GIL to the threads reading ahead), each entry
    on disk at once; any other save closes it, and writes through a fresh open: a state
    folder removed in the middle of a push is made again by the push's last save."""
    import shutil

    path = tmp_path / "state" / "sync-x.msgpack"
    r = SyncRecords(path)
    opens = []
    real_open = r.open_writing
    monkeypatch.setattr(r, "open_writing", lambda p, mode: (opens.append(p.name), real_open(p, mode))[1])
    for i in range(20):
        r.in_flight({f"b{i}.py": REC})
        assert len(SyncRecords(path).pending) == i + 1       # on disk at once
    assert opens == ["sync-x.msgpack.journal"] and r.journal_file is not None
    r.landed("b0.py")
    r.set("b0.py", REC)
    r.save(snapshot=False)                                    # the push's end
    assert r.journal_file is None and len(opens) == 2
    back = SyncRecords(path)
    assert back.data == {"b0.py": REC} and len(back.pending) == 19
    r.in_flight({"c.py": REC})
    shutil.rmtree(tmp_path / "state")
    r.in_flight({"d.py": REC})                                # into the removed folder's journal
    r.set("e.py", REC)
    r.save(snapshot=False)
    assert SyncRecords(path).data == {"e.py": REC} and r.journal_file is None
