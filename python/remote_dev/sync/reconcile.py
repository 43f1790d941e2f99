"""The one place that decides what a push or a pull does: pure functions of the local
scan, the records (what the last sync left) and, when asked, the remote's state.  No I/O
here: what needs the disk or the network comes in as data (or, for a lazily computed
hash, a function), so every case is a table-driven unit test (tests/test_reconcile.py).

Push, in the order push.py asks:
  settle_pending
              writes a cut push left in flight (records.pending) vs the remote's state
              -> adopted (the remote has what was sent: the write landed, its answer was
              lost) / dropped (a delete landed) / left to the rules below (it never
              landed, or the remote changed since).
  plan_push   local stat vs records -> send / unchanged / skipped (over
              sync.max_file_size) / delete on the remote (only what this tool pushed and
              is gone here; pulled files never cause a remote delete).
  after_check the remote check (the agent's stat of every recorded path, check.py) ->
              for what this push did not write: gone there -> sent again; changed there
              only in its stat -> re-recorded; changed there -> a conflict (force:
              overwritten).  Records are a cache, never the truth.
  content_unchanged
              a file whose content (hash) equals the record is only re-recorded.
  preview     (dry run) the remote's state with hashes -> the conflicts the agent would
              report, by the same rule (content.conflict_reason); unreadable files are
              skipped with their reason.
A real push hands the agent each file's ``expect`` (the record's remote half): the agent
applies the same conflict rule at the moment it writes, so a remote change between the
plan and the write is still a conflict.

Pull:
  remote_changed  the remote listing vs records -> what changed there since the last sync.
  plan_pull       -> fetch / re-record (already the same here) / conflict (changed here,
                  or open in Neovim with unsaved changes: never overwritten, even with force).
"""

from __future__ import annotations

from collections.abc import Callable, Container, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from .content import State, conflict_reason
from .problem import SyncResult, too_large, unreadable
from .records import Record
from .scan import LocalEntry


def _nothing_pulled(rel: str) -> bool:
    return False


class Policy(NamedTuple):
    max_file_size: int
    force: bool = False                                     # overwrite remote changes (``!``)
    pulled: Callable[[str], bool] = _nothing_pulled         # rel lies in a sync.pull folder


@dataclass
class Send:
    """A local file or symlink to send."""
    rel: str
    entry: LocalEntry
    expect: list[Any] | None     # the remote state the last sync left (None: never synced)
    must: bool = False           # send even when the content equals the record (the remote lost it)
    force: bool = False


@dataclass
class PushPlan:
    send: list[Send] = field(default_factory=list)
    delete: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    skipped: list[dict[str, Any]] = field(default_factory=list)


def _state(raw: list[Any] | tuple[Any, ...] | None) -> State | None:
    return None if raw is None else State(*raw[:4])


def delete_candidates(records: Mapping[str, Record], local: Mapping[str, LocalEntry],
                      scope: list[str] | None) -> set[str]:
    """Recorded paths in scope that the scan did not list."""
    if scope is None:
        return set(records.keys() - local.keys())
    cands: set[str] = set()
    folders = []
    for p in scope:
        if p in ("", "."):
            cands.update(records)
            break
        if p in records:
            cands.add(p)
        elif p not in local:
            folders.append(p.rstrip("/") + "/")
    if folders:
        prefixes = tuple(folders)
        cands.update(r for r in records if r.startswith(prefixes))
    return cands - local.keys()


def plan_push(local: Mapping[str, LocalEntry], records: Mapping[str, Record], scope: list[str] | None,
              policy: Policy, missing: Callable[[str], bool]) -> PushPlan:
    """What to send and delete, from the local stat alone.  local: what the scan found in
    scope (None: the whole tree, else the relative paths looked at).  missing(rel): the
    recorded rel is gone here (asked only of paths the scan did not list: a file that is
    merely ignored now stays on the remote)."""
    plan = PushPlan()
    for rel, e in local.items():
        rec = records.get(rel)
        if rec is not None and rec.same_local(e.kind, e.size, e.mtime_ns, e.mode):
            plan.unchanged.append(rel)
        elif e.kind == "f" and e.size > policy.max_file_size:
            plan.skipped.append(too_large(rel, e.size, policy.max_file_size))
        else:
            plan.send.append(Send(rel, e, None if rec is None else rec.expect(), force=policy.force))
    for rel in sorted(delete_candidates(records, local, scope)):
        if records[rel].origin != "push" or policy.pulled(rel):
            continue  # pulled here: deleting the local copy never deletes the remote one
        if missing(rel):
            plan.delete.append(rel)
    return plan


ADOPT, DROP, KEEP = "adopt", "drop", "keep"


def settle_pending(sent: Record | None, there: list[Any] | None) -> tuple[str, Record | None]:
    """A write (sent: the Record it would leave, remote half unknown) or a delete (sent
    None) whose answer never came, against what the remote has there now ([kind, size,
    mtime_ns, hash] or None): (ADOPT, the record: the remote has exactly what was sent),
    (DROP, None: a delete, and nothing is there) or (KEEP, None: the write did not land,
    or something else is there since -- the record stays, so a change there is still a
    conflict)."""
    if sent is None:
        return (DROP, None) if there is None else (KEEP, None)
    if there is not None and there[0] == sent.kind and len(there) > 3 and there[3] == sent.hash:
        return ADOPT, sent._replace(rsize=there[1], rmtime=there[2], origin="push")
    return KEEP, None


@dataclass
class CheckOutcome:
    send: list[Send] = field(default_factory=list)                   # gone there (force: or changed)
    rerecord: list[tuple[str, Record]] = field(default_factory=list)  # touched there, same content
    conflicts: list[tuple[str, str]] = field(default_factory=list)


def after_check(diffs: Mapping[str, list[Any] | None], records: Mapping[str, Record],
                local: Mapping[str, LocalEntry | None], written: Container[str], force: bool) -> CheckOutcome:
    """What the remote check means.  diffs: the remote state ([kind, size, mtime_ns, hash],
    None: gone) of each recorded path that is not what its record says; local: those paths'
    local entries now (None: gone here, which the push's delete deals with); written: the
    paths this push sent (the agent judged them as it wrote).  The others have the
    record's content here."""
    out = CheckOutcome()
    for rel, there in sorted(diffs.items()):
        rec = records.get(rel)
        entry = local.get(rel)
        if rel in written or rec is None or rec.origin != "push" or entry is None:
            continue
        if there is None or force:
            out.send.append(Send(rel, entry, rec.expect(), must=True, force=force))
            continue
        reason = conflict_reason(_state(there), _state(rec.expect()), rec.hash)
        if reason:
            out.conflicts.append((rel, reason))
        else:
            out.rerecord.append((rel, rec._replace(rsize=there[1], rmtime=there[2])))
    return out


def content_unchanged(rec: Record | None, kind: str, content_hash: str, mode: int, must: bool = False,
                      force: bool = False) -> bool:
    """The content is what the last sync left: re-record the new stat, send nothing."""
    return rec is not None and not must and not force and rec.hash == content_hash and rec.kind == kind \
        and rec.mode == mode


def preview(plan: PushPlan, remote: Mapping[str, list[Any] | None], hashes: Mapping[str, str | OSError],
            records: Mapping[str, Record], force: bool, result: SyncResult) -> SyncResult:
    """What a push of plan would do (a dry run): remote holds the remote's [kind, size,
    mtime_ns, hash] (or None) of every path to send or delete, hashes the local content
    of every path to send (an OSError where it could not be read).  plan.unchanged and
    plan.skipped are the caller's to count."""
    for item in plan.send:
        h = hashes[item.rel]
        if isinstance(h, OSError):
            result.skipped.append(unreadable(item.rel, item.entry.size, h))
            continue
        if content_unchanged(records.get(item.rel), item.entry.kind, h, item.entry.mode, item.must, force):
            result.unchanged += 1
            continue
        reason = None if force else conflict_reason(_state(remote.get(item.rel)), _state(item.expect), h)
        if reason:
            result.conflict(item.rel, reason)
        else:
            result.send.append(item.rel)
            result.bytes += item.entry.size
    for rel in plan.delete:
        rec = records.get(rel)
        there = remote.get(rel)
        reason = None if force else conflict_reason(_state(there), _state(rec and rec.expect()), None)
        if reason:
            result.conflict(rel, reason + " (deleted locally)")
        elif there is not None:
            result.delete.append(rel)
    return result


# --------------------------------------------------------------------------- pull


class PullItem(NamedTuple):
    """A file or symlink as the remote lists it."""
    rel: str
    kind: str
    size: int
    mtime: int
    digest: str | None
    mode: int
    target: str | None


@dataclass
class PullPlan:
    fetch: list[PullItem] = field(default_factory=list)
    same: list[tuple[str, Record]] = field(default_factory=list)   # already the same here: re-record
    conflicts: list[dict[str, str]] = field(default_factory=list)


def remote_changed(listing: Mapping[str, list[Any]], records: Mapping[str, Record]) -> list[PullItem]:
    """The remote's files and symlinks ({rel: [kind, size, mtime_ns, hash, mode, target]})
    whose stat differs from what the last sync left there, sorted."""
    out = []
    for rel, (kind, size, mtime, dig, mode, target) in sorted(listing.items()):
        rec = records.get(rel)
        if rec is None or not rec.same_remote((kind, size, mtime)):
            out.append(PullItem(rel, kind, size, mtime, dig, mode, target))
    return out


def plan_pull(items: Iterable[PullItem], records: Mapping[str, Record], local: Mapping[str, LocalEntry | None],
              unsaved: Callable[[str], bool], force: bool,
              local_hash: Callable[[str, LocalEntry], str | None]) -> PullPlan:
    """local: what is at each item's local path now (None: nothing).  unsaved(rel): open
    in Neovim with unsaved changes.  local_hash(rel, entry): the local content's hash, or
    None when it cannot be read (asked only when the stat does not settle it)."""
    plan = PullPlan()
    for item in items:
        if unsaved(item.rel):
            plan.conflicts.append({"path": item.rel, "reason": "open in Neovim with unsaved changes"})
            continue
        cur = local.get(item.rel)
        if cur is None:
            plan.fetch.append(item)
            continue
        rec = records.get(item.rel)
        same_stat = rec is not None and rec.same_local(cur.kind, cur.size, cur.mtime_ns)
        have = rec.hash if same_stat and rec is not None else local_hash(item.rel, cur)
        if have is not None and have == item.digest and cur.kind == item.kind:
            plan.same.append((item.rel, Record(item.kind, cur.size, cur.mtime_ns, item.digest, item.size,
                                               item.mtime, cur.mode, "pull")))
            continue
        expect = None if rec is None else State(rec.kind, rec.lsize, rec.lmtime, rec.hash)
        now = State(cur.kind, cur.size, cur.mtime_ns, have)
        reason = None if force else conflict_reason(now, expect, item.digest, side="local")
        if reason:
            plan.conflicts.append({"path": item.rel, "reason": reason})
        else:
            plan.fetch.append(item)
    return plan


def prefixes(rel: str) -> list[str]:
    """The folders above rel: "a/b/c" -> ["a", "a/b"]."""
    out = []
    i = rel.find("/")
    while i != -1:
        out.append(rel[:i])
        i = rel.find("/", i + 1)
    return out


def in_the_way(sends: list[Send], deletes: list[str]) -> tuple[list[str], list[str]]:
    """(the deletes that go before the writes, the rest): a path a write needs as a folder
    (a folder replaced a file of its name) or one inside a folder a write replaces with a
    file (a file replaced a folder)."""
    if not deletes:
        return [], []
    sent = {item.rel for item in sends}
    folders = {p for rel in sent for p in prefixes(rel)}
    first = [rel for rel in deletes if rel in folders or any(p in sent for p in prefixes(rel))]
    if not first:
        return [], deletes
    ahead = set(first)
    return first, [rel for rel in deletes if rel not in ahead]
