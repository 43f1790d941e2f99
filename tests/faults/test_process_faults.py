"""What a session keeps running on the remote: the agent, and for a short while after a run
a spare supervisor (so the next run starts at once); nothing else once the runs have ended."""
from __future__ import annotations

import time

from conftest import events, wait_for
from support.remote import cmdline_has

from remote_dev.agent.remote.supervisor import SPARE_IDLE

from .conftest import assert_guarantees

RUNS = 3


def test_idle_session_keeps_only_its_agent(remote, fault_project, engines, figures):
    proj = fault_project()
    proj.write("main.py", "print('ok')\n")
    eng = engines.new()
    eng.call_sync("push", proj.ctx(), {}, timeout=60)
    failed: list[str] = []
    spares_seen = 0
    for i in range(RUNS):   # runs in quick succession: each after the first gets the spare
        res = eng.call_sync("run", proj.ctx(), {"cmd": "python3 main.py"}, timeout=60)
        wait_for(lambda: any(e["id"] == res["id"] for e in events(eng, "RemoteDevRunExit")), 30, what="the run's end")
        time.sleep(0.6)     # the spare starts a moment after a run start
        spares_seen += any(cmdline_has(p, b"supervise-spare") for p in remote.processes())
    agents = set(remote.agents())
    t0 = time.monotonic()
    left = remote.settle(timeout=SPARE_IDLE + 10, keep=agents)
    idle = time.monotonic() - t0
    if left:
        failed.append(f"an idle session keeps {len(left)} process(es) besides its agent: {remote.describe(left)}")
    if len(agents) != 1:
        failed.append(f"{len(agents)} agents for one session")
    engines.close(eng)
    procs = remote.settle()
    figures.add("idle session after runs", remote.kind, RUNS, len(failed), len(left) + len(procs),
                f"spare supervisor seen after {spares_seen} of {RUNS} runs, gone {idle:.0f} s later "
                f"(SPARE_IDLE = {SPARE_IDLE:g} s); then only the agent")
    assert not procs, remote.describe(procs)
    assert_guarantees(failed)
