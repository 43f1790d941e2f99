"""The sync decisions, case by case, without an sshd: reconcile's pure functions and the
conflict rule (content.py).  The end-to-end behaviour is in test_sync.py."""
from __future__ import annotations

import pytest
from remote_dev.sync import reconcile
from remote_dev.sync.content import State, conflict_reason, digest, link_hash
from remote_dev.sync.problem import SyncResult
from remote_dev.sync.reconcile import Policy, PullItem, Send
from remote_dev.sync.records import Record
from remote_dev.sync.scan import LocalEntry

H_OLD, H_NEW, H_THEIRS = digest(b"old"), digest(b"new"), digest(b"theirs")
LIMIT = 1000


def f(size=10, mtime=100, mode=0o644):
    return LocalEntry("f", size, mtime, mode)


def link(target="a.py", mtime=100):
    return LocalEntry("l", len(target), mtime, 0o777, target)


def rec(size=10, mtime=100, h=H_OLD, rsize=10, rmtime=500, mode=0o644, origin="push", kind="f"):
    return Record(kind, size, mtime, h, rsize, rmtime, mode, origin)


def pulled(rel):
    return rel.startswith("results/")


# --------------------------------------------------------------------------- plan_push

# (case, local entry or None, record or None, missing locally, force) -> (decision, detail)
PUSH_CASES = [
    ("new file", f(), None, False, False, "send", None),
    ("unchanged", f(), rec(), False, False, "unchanged", None),
    ("changed locally (mtime)", f(mtime=101), rec(), False, False, "send", [ "f", 10, 500, H_OLD]),
    ("changed locally (size)", f(size=11), rec(), False, False, "send", ["f", 10, 500, H_OLD]),
    ("mode changed", f(mode=0o755), rec(), False, False, "send", ["f", 10, 500, H_OLD]),
    ("over max_file_size", f(size=LIMIT + 1), None, False, False, "skipped", None),
    ("at max_file_size", f(size=LIMIT), None, False, False, "send", None),
    ("new symlink", link(), None, False, False, "send", None),
    ("symlink unchanged", link(), rec(size=4, kind="l", mode=0o777), False, False, "unchanged", None),
    ("symlink retargeted", link("bb.py", mtime=101), rec(size=4, kind="l", mode=0o777), False, False, "send",
     ["l", 10, 500, H_OLD]),
    ("a large symlink is no large file", link("x" * 2000), None, False, False, "send", None),
    ("file became a symlink", link(), rec(size=4), False, False, "send", ["f", 10, 500, H_OLD]),
    ("deleted locally, pushed by us", None, rec(), True, False, "delete", None),
    ("deleted locally, pulled here", None, rec(origin="pull"), True, False, "nothing", None),
    ("ignored now, still here", None, rec(), False, False, "nothing", None),
    ("changed locally, force", f(mtime=101), rec(), False, True, "send", ["f", 10, 500, H_OLD]),
]


@pytest.mark.parametrize("case,entry,record,missing,force,decision,expect", PUSH_CASES,
                         ids=[c[0] for c in PUSH_CASES])
def test_plan_push(case, entry, record, missing, force, decision, expect):
    rel = "pkg/a.py"
    local = {rel: entry} if entry is not None else {}
    records = {rel: record} if record is not None else {}
    plan = reconcile.plan_push(local, records, None, Policy(LIMIT, force), missing=lambda r: missing)
    got = {"send": [s.rel for s in plan.send], "unchanged": plan.unchanged, "delete": plan.delete,
           "skipped": [s["path"] for s in plan.skipped]}
    for kind, rels in got.items():
        assert rels == ([rel] if kind == decision else []), (kind, got)
    if decision == "send":
        assert plan.send[0].expect == expect and plan.send[0].force == force and not plan.send[0].must
        assert plan.send[0].entry == entry
    if decision == "skipped":
        assert plan.skipped == [{"path": rel, "size": LIMIT + 1, "reason": "over sync.max_file_size (1.0 KB)"}]


def test_pulled_files_never_deleted_remotely():
    """A file under a sync.pull folder recorded as pushed (the folder was added to
    sync.pull later) is not deleted on the remote either."""
    records = {"results/r.txt": rec(), "a.py": rec()}
    plan = reconcile.plan_push({}, records, None, Policy(LIMIT, pulled=pulled), missing=lambda r: True)
    assert plan.delete == ["a.py"]


@pytest.mark.parametrize("scope,deleted", [
    (["pkg"], ["pkg/a.py", "pkg/sub/b.py"]),             # a folder: what was recorded under it
    (["pkg/a.py"], ["pkg/a.py"]),                         # a recorded file
    (["pkg/sub/"], ["pkg/sub/b.py"]),
    (["other.py"], []),                                   # a new file: nothing recorded there
    ([""], ["other/c.py", "pkg/a.py", "pkg/sub/b.py"]),   # the root
    (None, ["other/c.py", "pkg/a.py", "pkg/sub/b.py"]),   # the whole tree
    (["pk"], []),                                         # a prefix of a name is no folder
])
def test_deletes_follow_the_scope(scope, deleted):
    records = {"pkg/a.py": rec(), "pkg/sub/b.py": rec(), "other/c.py": rec(), "kept.py": rec()}
    local = {"kept.py": f()}
    plan = reconcile.plan_push(local, records, scope, Policy(LIMIT), missing=lambda r: True)
    assert plan.delete == deleted


# --------------------------------------------------------------------------- after the remote check

# (case, remote state now or None, record, local entry now or None, written by this push, force)
#   -> "send" (again, must), "conflict", "rerecord" (the remote stat taken) or "nothing"
CHECK_CASES = [
    ("gone there, unchanged here", None, rec(), f(), False, False, "send"),
    ("gone there, same content rewritten here", None, rec(), f(mtime=101), False, False, "send"),
    ("edited there, unchanged here", ["f", 12, 501, H_THEIRS], rec(), f(), False, False, "conflict"),
    ("edited there, same size", ["f", 10, 501, H_THEIRS], rec(), f(), False, False, "conflict"),
    ("edited there, force", ["f", 12, 501, H_THEIRS], rec(), f(), False, True, "send"),
    ("touched there, same content", ["f", 10, 501, H_OLD], rec(), f(), False, False, "rerecord"),
    ("a folder there now", ["d", 0, 501, None], rec(), f(), False, False, "conflict"),
    ("written by this push: the agent judged it", None, rec(), f(), True, False, "nothing"),
    ("deleted here: the delete deals with it", None, rec(), None, False, False, "nothing"),
    ("pulled, not pushed", None, rec(origin="pull"), f(), False, False, "nothing"),
]


@pytest.mark.parametrize("case,there,record,entry,written,force,decision", CHECK_CASES,
                         ids=[c[0] for c in CHECK_CASES])
def test_after_check(case, there, record, entry, written, force, decision):
    out = reconcile.after_check({"a.py": there}, {"a.py": record}, {"a.py": entry},
                                {"a.py"} if written else set(), force)
    got = "send" if out.send else "conflict" if out.conflicts else "rerecord" if out.rerecord else "nothing"
    assert got == decision
    if out.send:
        item = out.send[0]
        assert item.must and item.force == force and item.entry == entry and item.expect == record.expect()
    if out.conflicts:
        assert out.conflicts[0][1] == ("a folder is in the way" if there[0] == "d"
                                       else "changed on the remote since the last sync")
    if out.rerecord:
        assert out.rerecord[0] == ("a.py", record._replace(rsize=10, rmtime=501))


# --------------------------------------------------------------------------- settle_pending

SENT = rec(size=3, mtime=200, h=H_NEW, rsize=0, rmtime=0)    # a write in flight: remote half unknown

# (case, what was in flight (None: a delete), remote state now or None) -> verdict
SETTLE_CASES = [
    ("the write landed", SENT, ["f", 3, 700, H_NEW], "adopt"),
    ("it did not land: the old content", SENT, ["f", 10, 500, H_OLD], "keep"),
    ("edited there since", SENT, ["f", 3, 701, H_THEIRS], "keep"),
    ("gone there", SENT, None, "keep"),
    ("a symlink there, same hash", SENT, ["l", 3, 700, H_NEW], "keep"),
    ("no hash (a folder there)", SENT, ["d", 0, 700, None], "keep"),
    ("the delete landed", None, None, "drop"),
    ("the delete did not land", None, ["f", 10, 500, H_OLD], "keep"),
]


@pytest.mark.parametrize("case,sent,there,verdict", SETTLE_CASES, ids=[c[0] for c in SETTLE_CASES])
def test_settle_pending(case, sent, there, verdict):
    got, record = reconcile.settle_pending(sent, there)
    assert got == verdict
    if got == reconcile.ADOPT:
        assert record == SENT._replace(rsize=3, rmtime=700)   # the local half as sent: not sent again
    else:
        assert record is None


# --------------------------------------------------------------------------- content


@pytest.mark.parametrize("record,h,mode,must,force,same", [
    (rec(), H_OLD, 0o644, False, False, True),      # touched, same content: re-recorded only
    (rec(), H_NEW, 0o644, False, False, False),     # new content
    (rec(), H_OLD, 0o755, False, False, False),     # same content, new mode
    (rec(), H_OLD, 0o644, True, False, False),      # the remote lost it: sent anyway
    (rec(), H_OLD, 0o644, False, True, False),      # force sends
    (None, H_OLD, 0o644, False, False, False),      # never synced
    (rec(kind="l"), H_OLD, 0o644, False, False, False),
])
def test_content_unchanged(record, h, mode, must, force, same):
    assert reconcile.content_unchanged(record, "f", h, mode, must, force) is same


# --------------------------------------------------------------------------- the conflict rule

EXPECT = State("f", 10, 500, H_OLD)
CONFLICT_CASES = [
    ("nothing there", None, EXPECT, H_NEW, None),
    ("as the last sync left it (stat)", State("f", 10, 500, H_OLD), EXPECT, H_NEW, None),
    ("touched there, same content", State("f", 10, 501, H_OLD), EXPECT, H_NEW, None),
    ("already the new content", State("f", 3, 501, H_NEW), EXPECT, H_NEW, None),
    ("changed there", State("f", 12, 501, H_THEIRS), EXPECT, H_NEW, "changed on the remote since the last sync"),
    ("never synced, differs", State("f", 12, 501, H_THEIRS), None, H_NEW,
     "exists on the remote and differs (never pushed by remote_dev)"),
    ("never synced, same content", State("f", 3, 501, H_NEW), None, H_NEW, None),
    ("a folder in the way", State("d", 0, 501), EXPECT, H_NEW, "a folder is in the way"),
    ("a fifo in the way", State("o", 0, 501), EXPECT, H_NEW, "something other than a file is in the way"),
    ("a link where a file was", State("l", 10, 500, link_hash("x")), EXPECT, H_NEW,
     "changed on the remote since the last sync"),
    ("delete, changed there", State("f", 12, 501, H_THEIRS), EXPECT, None, "changed on the remote since the last sync"),
    ("delete, as left", State("f", 10, 500, H_OLD), EXPECT, None, None),
]


@pytest.mark.parametrize("case,current,expect,new,reason", CONFLICT_CASES, ids=[c[0] for c in CONFLICT_CASES])
def test_conflict_rule(case, current, expect, new, reason):
    assert conflict_reason(current, expect, new) == reason


def test_conflict_rule_hashes_only_when_the_stat_does_not_settle_it():
    asked = []

    def current_hash():
        asked.append(1)
        return H_OLD
    assert conflict_reason(State("f", 10, 500), EXPECT, H_NEW, current_hash) is None and not asked
    assert conflict_reason(State("f", 10, 501), EXPECT, H_NEW, current_hash) is None and asked
    assert conflict_reason(State("f", 10, 501), EXPECT, H_NEW, lambda: None, side="local") == \
        "changed locally since the last sync"


# --------------------------------------------------------------------------- preview (dry run)


def test_preview_reports_what_a_push_would_do():
    records = {"same.py": rec(), "theirs.py": rec(), "mine.py": rec(), "gone.py": rec(), "gone_theirs.py": rec(),
               "gone_both.py": rec()}
    sends = [Send("new.py", f(), None), Send("same.py", f(mtime=101), records["same.py"].expect()),
             Send("theirs.py", f(mtime=101), records["theirs.py"].expect()),
             Send("mine.py", f(mtime=101), records["mine.py"].expect()),
             Send("locked.py", f(size=7), None)]
    plan = reconcile.PushPlan(send=sends, delete=["gone.py", "gone_theirs.py", "gone_both.py"], unchanged=["u.py"])
    remote = {"new.py": None, "same.py": ["f", 10, 500, H_OLD], "theirs.py": ["f", 12, 501, H_THEIRS],
              "mine.py": ["f", 10, 500, H_OLD], "locked.py": None, "gone.py": ["f", 10, 500, H_OLD],
              "gone_theirs.py": ["f", 12, 501, H_THEIRS], "gone_both.py": None}
    hashes = {"new.py": H_NEW, "same.py": H_OLD, "theirs.py": H_NEW, "mine.py": H_NEW,
              "locked.py": PermissionError(13, "Permission denied")}
    res = reconcile.preview(plan, remote, hashes, records, False, SyncResult())
    assert res.send == ["new.py", "mine.py"] and res.bytes == 20
    assert res.unchanged == 1  # same.py: touched only (u.py is the caller's to count)
    assert res.conflicts == [{"path": "theirs.py", "reason": "changed on the remote since the last sync"},
                             {"path": "gone_theirs.py",
                              "reason": "changed on the remote since the last sync (deleted locally)"}]
    assert res.delete == ["gone.py"]  # gone_both.py: already gone there
    assert res.skipped == [{"path": "locked.py", "size": 7, "reason": "cannot read: Permission denied"}]
    forced = reconcile.preview(plan, remote, hashes, records, True, SyncResult())
    assert forced.conflicts == [] and "theirs.py" in forced.send and forced.delete == ["gone.py", "gone_theirs.py"]


# --------------------------------------------------------------------------- pull


def item(rel="results/a.txt", size=5, mtime=900, h=H_THEIRS, kind="f"):
    return PullItem(rel, kind, size, mtime, h, 0o644, None)


def test_remote_changed_compares_the_remote_stat():
    records = {"results/a.txt": rec(rsize=5, rmtime=900), "results/b.txt": rec(rsize=5, rmtime=900)}
    listing = {"results/a.txt": ["f", 5, 900, None, 0o644, None], "results/b.txt": ["f", 6, 901, H_NEW, 0o644, None],
               "results/c.txt": ["f", 1, 1, H_NEW, 0o600, None]}
    assert [i.rel for i in reconcile.remote_changed(listing, records)] == ["results/b.txt", "results/c.txt"]


# (case, local entry, record, local hash, unsaved, force) -> decision
PULL_CASES = [
    ("new here", None, None, None, False, False, "fetch"),
    ("unchanged here since the last sync", f(), rec(origin="pull"), None, False, False, "fetch"),
    ("changed here", f(mtime=101), rec(origin="pull"), H_NEW, False, False, "conflict"),
    ("changed here, force", f(mtime=101), rec(origin="pull"), H_NEW, False, True, "fetch"),
    ("touched here, same content as recorded", f(mtime=101), rec(origin="pull"), H_OLD, False, False, "fetch"),
    ("already the remote content", f(size=5, mtime=101), None, H_THEIRS, False, False, "same"),
    ("exists here, never synced", f(), None, H_NEW, False, False, "conflict"),
    ("unreadable here", f(mtime=101), rec(origin="pull"), None, False, False, "conflict"),
    ("open with unsaved changes", f(), rec(origin="pull"), None, True, False, "conflict"),
    ("open with unsaved changes, force", f(), rec(origin="pull"), None, True, True, "conflict"),
]


@pytest.mark.parametrize("case,entry,record,have,unsaved,force,decision", PULL_CASES, ids=[c[0] for c in PULL_CASES])
def test_plan_pull(case, entry, record, have, unsaved, force, decision):
    it = item()
    records = {it.rel: record} if record is not None else {}
    asked = []

    def local_hash(rel, e):
        asked.append(rel)
        return have
    plan = reconcile.plan_pull([it], records, {it.rel: entry}, lambda rel: unsaved, force, local_hash)
    got = {"fetch": [i.rel for i in plan.fetch], "same": [r for r, _ in plan.same],
           "conflict": [c["path"] for c in plan.conflicts]}
    for kind, rels in got.items():
        assert rels == ([it.rel] if kind == decision else []), (kind, got)
    if decision == "same":
        assert plan.same[0][1] == Record("f", 5, 101, H_THEIRS, 5, 900, 0o644, "pull")
    if case == "unchanged here since the last sync":
        assert asked == []  # the stat settles it: nothing read
    if case == "changed here":
        assert plan.conflicts[0]["reason"] == "changed locally since the last sync"
    if "unsaved" in case:
        assert plan.conflicts[0]["reason"] == "open in Neovim with unsaved changes"
