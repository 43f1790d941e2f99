""":RemoteRun in as few round trips as the push allows, against the real sshd: a run whose
push has nothing to send is checked and started by one agent request, its first output
comes from the agent unasked (no run_read before it); a local edit is pushed first, a
remote change is found by the check as before.  The requests are counted where they are
written to the agent's channel (AgentChannel.sent), at the moment the first output line
is reported."""
from __future__ import annotations

import asyncio
import collections
import os
import secrets

import pytest
from conftest import events, wait_for

from remote_dev.errors import RemoteDevError

LINES_PER_UPDATE = 10000


class Counting:
    """An engine's report callback that snapshots the requests sent to the agent when a
    run's first output line is reported (on the engine's thread, as it happens)."""

    def __init__(self) -> None:
        self.reports: list[tuple[str, dict]] = []
        self.session = None
        self.at_first: dict[str, collections.Counter[str]] = {}

    def __call__(self, kind: str, payload: dict) -> None:
        self.reports.append((kind, payload))
        if kind == "run_output" and payload["lines"] and payload["id"] not in self.at_first \
                and self.session is not None:
            self.at_first[payload["id"]] = collections.Counter(self.session.agent.sent)


@pytest.fixture
def counted(make_project):
    from remote_dev.actions import ACTIONS
    from remote_dev.engine import Engine

    rec = Counting()
    eng = Engine(report=rec, actions=ACTIONS)
    eng.reports = rec.reports  # type: ignore[attr-defined]
    proj = make_project()
    proj.write("main.py", "print('v1')\n")
    proj.write("pkg/util.py", "X = 1\n")
    ctx = {"cwd": str(proj.root)}
    eng.call_sync("push", ctx, {}, timeout=60)
    rec.session = eng.project(ctx).session()
    yield eng, rec, proj, ctx
    eng.close()


def run_exit(engine, run_id, timeout=30):
    return wait_for(lambda: next((e for e in events(engine, "RemoteDevRunExit") if e["id"] == run_id), None),
                    timeout, what=f"run {run_id} to exit")


def output_lines(engine, run_id):
    return [ln for kind, p in engine.reports if kind == "run_output" and p["id"] == run_id for ln in p["lines"]]


def run(eng, rec, ctx, cmd):
    """(run id, requests sent from just before the run until its first output line)."""
    before = collections.Counter(rec.session.agent.sent)
    res = eng.call_sync("run", ctx, {"cmd": cmd}, timeout=60)
    wait_for(lambda: res["id"] in rec.at_first, 30, what="the first output line")
    return res["id"], rec.at_first[res["id"]] - before


def test_nothing_to_send_checks_and_starts_in_one_request(counted):
    eng, rec, proj, ctx = counted
    rid, sent = run(eng, rec, ctx, "python3 main.py")
    assert sent == {"if_unchanged": 1}, sent          # no verify, run_start nor run_read of their own
    assert run_exit(eng, rid)["code"] == 0 and output_lines(eng, rid) == ["v1"]
    # again, and with output that comes late: still no read asked for before it
    rid, sent = run(eng, rec, ctx, "python3 -c \"import time; time.sleep(0.5); print('late')\"")
    assert sent == {"if_unchanged": 1}, sent
    assert run_exit(eng, rid)["code"] == 0 and output_lines(eng, rid) == ["late"]


def test_local_edit_is_pushed_before_the_start(counted):
    eng, rec, proj, ctx = counted
    proj.write("main.py", "from pkg.util import X\nprint('v2', X)\n")
    proj.write("pkg/util.py", "X = 2\n")
    rid, sent = run(eng, rec, ctx, "python3 main.py")
    assert output_lines(eng, rid) == ["v2 2"] and run_exit(eng, rid)["code"] == 0
    assert proj.remote("pkg/util.py").read_text() == "X = 2\n"
    assert sent["if_unchanged"] == 0 and sent["verify"] == 1 and sent["run_start"] == 1, sent
    assert sent["run_read"] == 0, sent                 # the first output came unasked here too
    assert events(eng, "RemoteDevPushDone")[-1]["files"] == 2


def test_remote_change_is_found_and_the_start_waits_for_the_push(counted):
    """The check finds the remote not as recorded: the agent starts nothing with it; the
    push goes on as any other (a conflict reported as today, a vanished file restored),
    then the run starts with a request of its own."""
    eng, rec, proj, ctx = counted
    proj.remote("main.py").write_text("print('edited there')\n")
    rid, sent = run(eng, rec, ctx, "python3 main.py")
    assert sent["if_unchanged"] == 1 and sent["run_start"] == 1 and sent["run_read"] == 0, sent
    assert events(eng, "RemoteDevPushDone")[-1]["conflicts"] == ["main.py"]
    warn = [p["text"] for k, p in eng.reports if k == "message" and p["level"] == "warn"][-1]
    assert "main.py" in warn and ":RemotePush!" in warn
    # as today: the run goes on with the remote's copy, which is left as it was
    assert output_lines(eng, rid) == ["edited there"] and run_exit(eng, rid)["code"] == 0
    assert proj.remote("main.py").read_text() == "print('edited there')\n"

    eng.call_sync("push", ctx, {"force": True}, timeout=60)
    os.unlink(proj.remote("pkg/util.py"))
    rid, sent = run(eng, rec, ctx, "python3 -c \"from pkg.util import X; print('restored', X)\"")
    assert sent["if_unchanged"] == 1 and sent["run_start"] == 1, sent
    assert output_lines(eng, rid) == ["restored 1"] and run_exit(eng, rid)["code"] == 0
    # and with the remote as recorded again, one request
    rid, sent = run(eng, rec, ctx, "python3 main.py")
    assert sent == {"if_unchanged": 1}, sent
    assert output_lines(eng, rid) == ["v1"]


def test_a_start_the_agent_refuses_is_an_error_and_the_next_run_works(counted):
    """The start made with the check fails on the agent (here: a run id in use): the
    error is the run's, as a failing run_start's is; the check's answer still counts."""
    from remote_dev import runs as runs_mod, sync

    eng, rec, proj, ctx = counted
    first, _ = run(eng, rec, ctx, "python3 main.py")
    run_exit(eng, first)

    async def again():
        p = eng.project(ctx)
        sess = p.session()
        prepared = await runs_mod.prepare_run(p, sess, "python3 main.py", run_id=first)
        await sync.do_push(eng, p, None, quiet=True, then=prepared.request)
        assert prepared.request.outcome is not None   # made with the check
        await runs_mod.start_run(eng, p, sess, "python3 main.py", prepared=prepared)
    with pytest.raises(RemoteDevError, match="exists already"):
        eng.submit(again()).result(30)
    rid, sent = run(eng, rec, ctx, "python3 main.py")
    assert sent == {"if_unchanged": 1}, sent
    assert output_lines(eng, rid) == ["v1"]


def test_fast_output_is_complete_after_the_unasked_first_chunk(counted):
    """The first chunk comes unasked, the rest by reads from its end: every line once, in
    order, however much there is."""
    eng, rec, proj, ctx = counted
    n = 300_000
    proj.write("many.py", f"import sys\nsys.stdout.write(''.join(f'line {{i}}\\n' for i in range({n})))\n")
    rid, _sent = run(eng, rec, ctx, "python3 many.py")
    assert run_exit(eng, rid, 60)["code"] == 0
    shown = output_lines(eng, rid)
    assert shown[-1] == f"line {n - 1}"
    dropped = sum(p.get("dropped", 0) for k, p in eng.reports if k == "run_output" and p["id"] == rid)
    assert len(shown) + dropped == n
    numbers = [int(ln.split()[1]) for ln in shown]
    assert numbers == sorted(set(numbers))


def test_agent_answers_every_if_unchanged_and_every_promised_notification(counted):
    """On the real agent: a followup of an unknown method is an error, one behind a check
    that finds a difference is not made, and a first read that fails still notifies (None:
    the client reads it itself) -- nobody waits for an answer that never comes."""
    from remote_dev.agent import protocol as P
    from remote_dev.errors import AgentCallError
    from remote_dev.sync.check import entries_for
    from remote_dev.sync.state import records_for

    eng, rec, proj, ctx = counted
    p = eng.project(ctx)
    sess = p.session()
    records = records_for(p, sess)
    check = [sess.target.remote_root, None, 0, 0, P.pack_states(entries_for(records, ["main.py"]))]

    async def calls():
        agent = sess.agent
        with pytest.raises(AgentCallError, match="unknown method"):
            await agent.call(P.IF_UNCHANGED, check, "no_such_method", [])
        answer, made = await agent.call(P.IF_UNCHANGED, check, "ping", [])
        assert answer == [0, []] and made[0] is None and isinstance(made[1], float)   # ping: the agent's clock
        proj.remote("main.py").write_text("print('other')\n")
        answer, made = await agent.call(P.IF_UNCHANGED, check, "ping", [])
        assert made is None and [d[0] for d in answer[1]] == ["main.py"]
        rid = "first-fails-" + secrets.token_hex(4)
        spec = {"id": rid, "root": sess.target.remote_root, "cmd": "true", "env": {}, "meta": {}}
        note = agent.expect(P.RUN_OUTPUT, rid)
        await agent.call("run_start", spec, ["not a size", 0])
        return await asyncio.wait_for(note, 10)
    assert eng.submit(calls()).result(30) is None
