"""The remote check of a push: records are a cache, never the truth.

Every push has the agent stat the paths it pushed before (their remote half of the
records: kind, size, mtime) and answer with those that differ -- gone, edited by hand,
touched -- so that a deleted or reimaged remote tree is restored and a hand edit is a
conflict, even when nothing changed here.  The request goes out first and its answer is
awaited after the transfer: it costs no round trip of its own unless something differs.

A tree push sends the whole table once per agent and afterwards only what changed in it
(records.changes on a generation number); the agent keeps the table and, on local file
systems, an inotify watch, so a no-op push stats only what changed there
(agent/remote/verify.py).  A push of given paths sends their records alone.

A tree push with nothing to send may carry one more request (a run's start: an
rpc.Followup): then the check goes out as ``if_unchanged``, and the agent makes that
request only when it finds the remote as recorded -- the check and the start in one round
trip.  When it finds something, nothing is made and the push goes on as any other.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

from ..agent.protocol import FORGET, IF_UNCHANGED, NEED_ALL, pack_states
from ..rpc import AgentChannel, Followup, consume
from .records import SyncRecords
from .scan import in_scope


@dataclass
class Known:
    """What one agent holds of one records table: the generation it last heard."""
    agent: int = 0
    uid: str = ""
    gen: int = 0


@dataclass
class CheckMemory:
    """Per project: per target, what its agent holds (sync state)."""
    known: dict[str, Known] = field(default_factory=dict)


def entries_for(records: SyncRecords, rels: Any) -> list[tuple[str, str, int, int]]:
    """(path, kind, remote size, remote mtime) per path; FORGET for paths with no record
    of a push (dropped, or pulled)."""
    out = []
    for rel in rels:
        rec = records.data.get(rel)
        if rec is None or rec.origin != "push":
            out.append((rel, FORGET, 0, 0))
        else:
            out.append((rel, rec.kind, rec.rsize, rec.rmtime))
    return out


class RemoteCheck:
    """One push's check: start() sends it, differences() awaits the answer: {path:
    remote state or None} for the recorded paths in scope that are not as recorded."""

    def __init__(self, records: SyncRecords, memory: CheckMemory, target: str, root: str,
                 scope: list[str] | None) -> None:
        self.records = records
        self.memory = memory
        self.target = target
        self.root = root
        self.scope = scope
        self.agent: AgentChannel | None = None
        self.future: asyncio.Future[Any] | None = None
        self.sent_gen = 0
        self.then: Followup | None = None

    def start(self, agent: AgentChannel, then: Followup | None = None) -> None:
        """Send the check; then (a tree push's only): the request to make with it when the
        remote is as recorded."""
        self.agent = agent
        if self.scope is not None:
            rels = self.in_scope()
            if rels:
                self.future = agent.send("verify", self.root, None, 0, 0, pack_states(entries_for(self.records, rels)))
            return
        self.send_tree(agent, self.memory.known.get(self.target), then)

    async def send(self, agent: AgentChannel, then: Followup | None = None) -> None:
        """start(), and the request on its way."""
        self.start(agent, then)
        await agent.drain()

    def in_scope(self) -> list[str]:
        """The pushed paths in scope: looked up when the scope names files (a save), a
        pass over the records only for folders."""
        data = self.records.data
        scope = self.scope or []
        if all(p in data for p in scope):
            return [p for p in scope if data[p].origin == "push"]
        return [rel for rel, rec in data.items() if rec.origin == "push" and in_scope(rel, scope)]

    def send_tree(self, agent: AgentChannel, known: Known | None, then: Followup | None = None) -> None:
        recs = self.records
        gen = recs.gen
        if known is not None and known.agent == id(agent) and known.uid == recs.uid and known.gen:
            base, rels = known.gen, recs.changed_since(known.gen)
        else:
            base, rels = 0, [rel for rel, rec in recs.data.items() if rec.origin == "push"]
        if base == 0 and not rels:
            return  # nothing pushed yet: nothing to check
        self.sent_gen = gen
        check = [self.root, recs.uid, base, gen, pack_states(entries_for(recs, rels))]
        if then is None:
            self.future = agent.send("verify", *check)
            return
        if then.note is not None:
            then.notified = agent.expect(*then.note)
        then.host = agent.host
        self.then = then
        self.future = agent.send(IF_UNCHANGED, check, then.method, then.params)

    async def differences(self) -> dict[str, list[Any] | None]:
        if self.future is None:
            return {}
        answer = await self.future
        if self.then is not None:
            answer, self.then.outcome = answer
            self.drop_note()
        if answer and answer[0] == NEED_ALL and self.agent is not None:   # the agent lost what it knew
            self.future = None
            self.send_tree(self.agent, None)
            await self.agent.drain()
            return await self.differences()
        if self.scope is None and self.agent is not None:
            self.memory.known[self.target] = Known(id(self.agent), self.records.uid, self.sent_gen)
        return {rel: state for rel, state in answer[1]}

    def drop_note(self) -> None:
        """The followup was not made (or will not be): its notification will not come."""
        then, self.then = self.then, None
        if then is not None and then.outcome is None and then.note is not None and self.agent is not None:
            self.agent.unexpect(*then.note)
            then.notified = None

    def forget(self) -> None:
        """The answer will not be awaited (the push failed): retrieve it quietly."""
        self.drop_note()
        consume([self.future])
