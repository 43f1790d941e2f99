"""A push, start to end: scan local and check the remote -> decide -> transfer -> commit
records; and push on save.

Every push has the agent check the remote state of what it pushed before (check.py): the
request goes out first, the local scan runs meanwhile, the transfer follows, and the
answer is taken after it.  What vanished there is sent again, what changed there while
it did not change here is a conflict (``!`` overwrites), a file merely touched there is
re-recorded.  A dry run reports the same.  The agent also checks each write against the
record's remote state when it writes (see reconcile.py).

Writes are journaled as in flight before they go out (records.py); a push that finds some
left by an earlier one (cut, or its process killed, before the answers came) first asks
the remote for those paths and records what it finds there as sent as this tool's own
write (settle), so it is neither a conflict nor sent again.
"""

from __future__ import annotations

import asyncio
import gc
import os
import time
from typing import Any

import asyncssh

from ..engine import Engine, Project, TargetSession, log
from ..errors import ConnectError, RemoteDevError
from ..packer import PackWorkers, WorkerDied
from ..rpc import AgentChannel, Followup
from ..status import publish_status
from . import reconcile
from .apply import PushCommit
from .check import RemoteCheck
from .content import entry_hash
from .ignore import Excluder
from .include import ignored_by
from .problem import SyncResult, done_payload, is_too_large, summarize
from .reconcile import Policy, PushPlan, Send
from .reuse import ask_index, offer
from .scan import LocalEntry, lstat_entry, rel_paths
from .state import compact_later, records_for, scanner_for, sync_state
from .transfer import LARGE, Progress, Sender, channels_for, deletes_first
from .wire import AckClock, Compressor, LinkMeter

PING_BEFORE = 1 << 20      # a push of more bytes measures the round trip first (codec choice)
PROCESS_BYTES = 1 << 20    # with REMOTE_DEV_PACK=processes, a push of more bytes in small files uses the workers


def pack_workers(engine: Engine, sends: list[Send] | None = None) -> PackWorkers | None:
    """The engine's worker processes (packer.py) for a push of sends, only with
    REMOTE_DEV_PACK=processes (bench/README, issue 27: on the 2-core bed they lost, and
    they leave out the dedup within a push, whose one Dedup lives in this process) and for
    a push of at least PROCESS_BYTES in small files; None: threads."""
    if os.environ.get("REMOTE_DEV_PACK") != "processes":
        return None
    if sends is not None and sum(i.entry.size for i in sends if i.entry.size <= LARGE) < PROCESS_BYTES:
        return None
    return engine.state(PackWorkers)


class PushCollections:
    """The process's garbage collection around one push: none from the scan until the first
    request is on the wire (a tree's scan allocates enough to set off a full collection of
    the process, ~15 ms in the bench's engine, which then comes while the wire is busy
    instead); from then on collections look at what the push allocates, what the process
    held before (the scan's listing with it) frozen (gc.freeze) until the push ends (a full
    collection held the event loop 20-25 ms in the middle of the bench's loopback push)."""

    def __init__(self) -> None:
        self.paused = False
        self.frozen = False

    def pause(self) -> None:
        if gc.isenabled():
            gc.disable()
            self.paused = True

    def resume(self) -> None:
        """The first request is on the wire (or none goes)."""
        if self.paused:
            self.paused = False
            gc.freeze()
            self.frozen = True
            gc.enable()

    def thaw(self) -> None:
        """The push ended: what was frozen is looked at by collections again."""
        if self.frozen:
            self.frozen = False
            gc.unfreeze()


class Push:
    """One push of a project to its target."""

    def __init__(self, engine: Engine, proj: Project, sess: TargetSession, force: bool) -> None:
        self.engine = engine
        self.proj = proj
        self.sess = sess
        self.force = force
        self.records = records_for(proj, sess)
        self.scanner = scanner_for(proj)
        self.result = SyncResult()
        self.local: dict[str, LocalEntry] = {}
        self.looked_at: list[str] = []   # what the watcher said changed, when a tree push used it
        self.whole_scan = False
        self.progress = Progress(engine.report, sess.target.name, self.result)
        self.commit = PushCommit(self.records, self.result)
        self.gc = PushCollections()

    # -- local side (in a worker thread: listing and stats)
    def scan_and_plan(self, paths: list[str] | None, whole: bool, dry_run: bool) -> PushPlan | None:
        """The local stage and the first decision.  A tree push looks only at what the
        watcher saw change, unless whole (or the watcher cannot tell); None: the watcher
        saw nothing change."""
        data = self.records.data
        if paths is None and not whole and not dry_run and data:
            changed = self.scanner.changes()
            if changed is not None:
                self.looked_at = changed
                if not changed:
                    return None
                paths = changed
        self.whole_scan = paths is None and not dry_run
        if paths is not None and all(p in data and data[p].origin == "push" for p in paths) \
                and self.scanner.unchanged_rules():
            self.local = self.scanner.scan_known(paths)  # pushed before, same rules: listed still
        else:
            self.local = self.scanner.scan(paths, hint=data.keys() if paths is None and data else None,
                                           track=not dry_run)
        cfg = self.proj.config.sync
        policy = Policy(cfg.max_file_size, self.force, Excluder((), cfg.pull).excluded)
        root = str(self.proj.root)
        return reconcile.plan_push(self.local, data, paths, policy,
                                   missing=lambda rel: lstat_entry(os.path.join(root, rel)) is None)

    def hashes(self, items: list[Send]) -> dict[str, str | OSError]:
        out: dict[str, str | OSError] = {}
        for item in items:
            try:
                out[item.rel] = entry_hash(self.proj.root, item.rel, item.entry.kind, item.entry.target)
            except OSError as e:
                out[item.rel] = e
        return out

    def local_entries(self, rels: list[str]) -> dict[str, LocalEntry | None]:
        root = self.proj.root
        return {rel: self.local.get(rel) or lstat_entry(root / rel) for rel in rels}

    # -- the whole push
    async def run(self, paths: list[str] | None, dry_run: bool, then: Followup | None = None) -> SyncResult:
        """then: see do_push; with it, the check goes out after the local scan, not before."""
        state = sync_state(self.proj)
        target = self.sess.target
        agent = await self.sess.ensure()
        if not dry_run:
            ask_index(self.sess, agent)   # answered during the scan
        check = RemoteCheck(self.records, state.check, target.name, target.remote_root, paths)
        then = then if paths is None and not dry_run else None
        try:
            if self.records.pending:
                await self.settle(agent)
            if then is None:
                await check.send(agent)
            self.gc.pause()
            plan = await asyncio.to_thread(self.scan_and_plan, paths, self.force, dry_run)
            if then is not None:   # the followup goes with the check only when nothing is to be sent
                await check.send(agent, None if plan is not None and (plan.send or plan.delete) else then)
            if plan is None:
                self.result.unchanged += len(self.records.data)
            else:
                self.result.unchanged += len(plan.unchanged)
                self.result.skipped += plan.skipped
            if dry_run:
                assert plan is not None
                return await self.preview(agent, plan, check)
            try:
                if plan is not None and (plan.send or plan.delete):
                    await self.transfer(agent, plan.send, plan.delete)
                await self.after_check(agent, await check.differences())
            except (asyncssh.Error, OSError) as e:
                raise ConnectError(f"{target.host}: connection to the agent lost: {e}", kind="lost",
                                   retry=True) from None
            finally:
                await asyncio.to_thread(self.records.save, False)   # a snapshot after it: compact_later
        except BaseException:
            check.forget()
            self.scanner.requeue(self.looked_at)  # the watcher's news must not get lost
            if self.whole_scan:
                self.scanner.invalidate()
            raise
        finally:
            self.gc.resume()
            self.gc.thaw()
            # the folders' watch is for the next push: it waits for this one, whose
            # sending it would slow down (the GIL, the cores); what changes meanwhile is
            # looked at again (scan.Scanner._watch_rest)
            self.scanner.start_watch()
        self.scanner.requeue(self.result.not_pushed())  # looked at again next time
        self.progress(force=True)
        return self.result

    async def settle(self, agent: AgentChannel) -> None:
        """Writes an earlier push left in flight (cut before their answers came): those
        the remote has as they were sent are recorded as this tool's writes, not taken for
        changes made there (reconcile.settle_pending)."""
        rels = sorted(self.records.pending)
        try:
            states = await agent.call("state", self.sess.target.remote_root, rels)
        except (asyncssh.Error, OSError) as e:
            raise ConnectError(f"{self.sess.target.host}: connection to the agent lost: {e}", kind="lost",
                               retry=True) from None
        adopted = 0
        for rel, there in zip(rels, states):
            verdict, rec = reconcile.settle_pending(self.records.pending[rel], there)
            if verdict == reconcile.ADOPT and rec is not None:
                self.records.set(rel, rec)
                adopted += 1
            elif verdict == reconcile.DROP:
                self.records.drop(rel)
            self.records.landed(rel)
        log.info("push %s: %d of %d writes of an interrupted push found on the remote", self.sess.target.name,
                 adopted, len(rels))
        await asyncio.to_thread(self.records.save)

    async def transfer(self, agent: AgentChannel, sends: list[Send], deletes: list[str]) -> None:
        meter = self.sess.state(LinkMeter)
        meter.rtt_ms = self.sess.rtt_ms if meter.rtt_ms is None else meter.rtt_ms
        if meter.rtt_ms is None and sum(i.entry.size for i in sends) >= PING_BEFORE:
            t0 = time.perf_counter()
            await agent.call("ping")
            meter.rtt_ms = (time.perf_counter() - t0) * 1000
        deletes = await deletes_first(agent, self.sess.target.remote_root, self.commit, sends, deletes, self.force)
        sends = await offer(self.sess, agent, self.proj.root, self.commit, sends)
        comp = Compressor(meter, self.sess.hello.get("codecs"))
        channels = channels_for(meter, self.sess.hello.get("cpus") or 1)
        try:   # the batches in worker processes, or threads (pack_workers None)
            await Sender(self.sess, self.proj.root, self.commit, self.progress, comp, AckClock(meter), channels,
                         self.gc.resume, pack_workers(self.engine, sends)).send_all(agent, sends, deletes, self.force)
        finally:
            comp.close()
            if comp.used:
                log.info("push %s: %s, %s", self.sess.target.name, comp.used, meter.describe())

    async def after_check(self, agent: AgentChannel, diffs: dict[str, list[Any] | None]) -> None:
        """What the remote check found, for the paths this push did not write: restored,
        reported as conflicts, or re-recorded."""
        if not diffs:
            return
        local = await asyncio.to_thread(self.local_entries, [rel for rel in diffs if rel not in self.commit.written])
        out = reconcile.after_check(diffs, self.records.data, local, self.commit.written, self.force)
        for rel, rec in out.rerecord:
            self.records.set(rel, rec)
        for rel, reason in out.conflicts:
            self.result.conflict(rel, reason)
        self.result.unchanged = max(0, self.result.unchanged - len(out.conflicts) - len(out.send))
        if out.send:
            await self.transfer(agent, out.send, [])

    async def preview(self, agent: AgentChannel, plan: PushPlan, check: RemoteCheck) -> SyncResult:
        """What a push would do, writing nothing: conflicts come from the remote's state,
        and the remote check says what a push would restore or find changed there."""
        rels = [i.rel for i in plan.send] + plan.delete
        states = agent.send("state", self.sess.target.remote_root, rels) if rels else None
        await agent.drain()
        hashes = await asyncio.to_thread(self.hashes, plan.send)
        remote = dict(zip(rels, await states)) if states is not None else {}
        res = reconcile.preview(plan, remote, hashes, self.records.data, self.force, self.result)
        diffs = await check.differences()
        written = set(res.send) | {c["path"] for c in res.conflicts} | set(plan.delete) | \
            {s["path"] for s in res.skipped}
        local = await asyncio.to_thread(self.local_entries, [rel for rel in diffs if rel not in written])
        out = reconcile.after_check(diffs, self.records.data, local, written, self.force)
        for item in out.send:
            res.send.append(item.rel)
            res.bytes += item.entry.size
        for rel, reason in out.conflicts:
            res.conflict(rel, reason)
        res.unchanged = max(0, res.unchanged - len(out.conflicts) - len(out.send))
        return res


async def do_push(engine: Engine, proj: Project, paths: list[str] | None, force: bool = False,
                  dry_run: bool = False, quiet: bool = False, then: Followup | None = None) -> dict[str, Any]:
    """Push the tree (paths None) or the given relative paths.  quiet: no message unless
    something needs attention (runs and push on save).  then: a request (a run's start)
    the agent makes in one message with the remote check when the push has nothing to
    send and the remote is as recorded (then.outcome set); else it is left to the caller."""
    sess = proj.session()
    async with sync_state(proj).lock:
        t0 = time.perf_counter()
        push = Push(engine, proj, sess, force)
        try:
            res = await push.run(paths, dry_run, then)
            if paths and not quiet:   # a path someone named and nothing of it pushed: say why
                res.skipped += await asyncio.to_thread(left_out, proj, paths, push.local, push.scanner)
        except WorkerDied as e:
            raise RemoteDevError(f"push to {sess.target.host} stopped after {push.result.files} files: {e.message}. "
                                 f"Nothing half-written is left; :RemotePush again completes it.") from None
        except ConnectError as e:
            if not push.result.files and not e.retry:
                raise   # a login that failed (a refused code, an untrusted host key) interrupted nothing
            raise RemoteDevError(f"push to {sess.target.host} interrupted after {push.result.files} files: "
                                 f"{e.message}. Nothing half-written is left; :RemotePush again completes it.",
                                 kind="connect") from None
        ms = (time.perf_counter() - t0) * 1000
    compact_later(proj, push.records)
    data = done_payload(proj.root, sess.target.name, res, ms, sess.target.host)
    if dry_run:
        data.update(dry_run=True, send=res.send, delete=res.delete)
        return data
    told, fresh = told_too_large(proj, sess.target.name, res)
    proj.last_push[sess.target.name] = {k: data[k] for k in ("files", "bytes", "ms", "conflicts")} | {
        "time": time.time(), "too_large": [{"path": p, "size": n} for p, n in sorted(told.items())]}
    engine.emit("RemoteDevPushDone", data)
    # a run's or a save's push tells of a file over the size limit once (until it changes);
    # :RemotePush always does, and :RemoteStatus lists them
    shown = data if not quiet else {**data, "skipped": [s for s in data["skipped"]
                                                        if not is_too_large(s) or s["path"] in fresh]}
    text, level = summarize("push", shown)
    if not quiet or level != "info":
        engine.message(text, level)
    publish_status(engine, proj)
    return data


def left_out(proj: Project, paths: list[str], listed: dict[str, LocalEntry], scanner: Any) -> list[dict[str, Any]]:
    """Named paths that exist here but of which the scan listed nothing, with the rule that
    leaves them out: sync.exclude / sync.pull, or .gitignore (file and line)."""
    out = []
    for rel in paths:
        if rel in ("", ".") or rel in listed or any(p.startswith(rel + "/") for p in listed):
            continue
        if not os.path.lexists(proj.root / rel):
            continue
        if scanner.excluder.excluded(rel):
            reason = "excluded by sync.exclude (or a sync.pull folder)"
        else:
            rule = ignored_by(proj.root, rel)
            if rule is None:
                continue
            reason = f"ignored by {rule} (sync.include in .remote-dev.toml pushes it)"
        out.append({"path": rel, "reason": reason})
    return out


def told_too_large(proj: Project, target: str, res: SyncResult) -> tuple[dict[str, int], set[str]]:
    """The files over sync.max_file_size known for target after this push (path -> size),
    and those of them not told of before at that size."""
    told = sync_state(proj).told_large.setdefault(target, {})
    limit = proj.config.sync.max_file_size
    for rel in list(told):
        entry = lstat_entry(proj.root / rel)
        if entry is None or entry.size <= limit:
            del told[rel]
    fresh = set()
    for s in res.skipped:
        if is_too_large(s) and told.get(s["path"]) != s.get("size"):
            told[s["path"]] = s.get("size") or 0
            fresh.add(s["path"])
    return told, fresh


async def push_on_save(engine: Engine, proj: Project, file: str) -> dict[str, Any] | None:
    """BufWritePost: push that one file when sync.push_on_save is on.  Saves that come
    while a push is under way coalesce into the next push, which reads the newest content.
    A failing remote (connection, or errors writing there) is reported once, and once more
    when pushes work again; conflicts of the saved file are reported on every save."""
    if not proj.config.sync.push_on_save or not file:
        return None
    st = sync_state(proj)
    pending = st.save_pending
    pending.update(rel_paths(proj.root, [file], None) or [])
    if st.save_running:
        return {"queued": True}
    st.save_running = True
    result = None
    try:
        while pending:
            batch = sorted(pending)
            pending.clear()
            failure = None
            try:
                result = await do_push(engine, proj, batch, quiet=True)
                if result.get("errors"):
                    failure = "; ".join(f"{e['path']}: {e['reason']}" for e in result["errors"][:3])
            except RemoteDevError as e:
                failure = e.message
            if failure is None:
                if st.save_error is not None:
                    st.save_error = None
                    engine.message(f"push on save to {proj.target.host} works again", "info")
            elif st.save_error is None:
                st.save_error = failure
                engine.message(f"push on save failed: {failure} (reported once; :RemotePush retries)", "error")
                engine.emit("RemoteDevError", {"message": f"push on save failed: {failure}"})
            else:
                log.info("push on save still failing: %s", failure)
    finally:
        st.save_running = False
    return result
