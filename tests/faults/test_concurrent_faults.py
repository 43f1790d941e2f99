"""Two Neovims (two engines, two checkouts of one project) pushing to the same remote_root
at the same moment, in rounds: both change the same files and files of their own.

Guarantee measured: nothing is corrupted (every remote file is one whole version one of
them wrote, no temporaries) and nothing is lost silently: for each shared file, the one
whose version is not on the remote was told so (a conflict naming the file: the remote
changed since its last push), the other's version is whole.  They do not converge by
themselves: the one told of a conflict decides (:RemotePush! or a pull), as with git."""
from __future__ import annotations

import shutil
import threading

from .conftest import assert_guarantees, log_problems
from .tree import remote_state, temps_after

ROUNDS = 6
SHARED = 12


def test_two_neovims_push_at_once(remote, fault_project, engines, screen, figures, isolated_state):
    a = fault_project("a")
    b = fault_project("b")
    shutil.copy(a.root / ".remote-dev.toml", b.root / ".remote-dev.toml")   # the same remote_root
    for p in (a, b):
        for i in range(SHARED):
            p.write(f"shared/s{i}.py", f"base {i}\n" * 50)
    ea, eb = engines.new(), engines.new()
    ea.call_sync("push", a.ctx(), {}, timeout=60)
    first_b = eb.call_sync("push", b.ctx(), {}, timeout=60)   # same content: recorded, nothing sent
    failed: list[str] = []
    if first_b.get("conflicts"):
        failed.append(f"identical trees conflict: {first_b['conflicts'][:3]}")
    versions: dict[str, set[bytes]] = {}
    both_written = 0
    conflicts_seen = 0
    for r in range(ROUNDS):
        for who, p in (("A", a), ("B", b)):
            for i in range(SHARED):
                data = f"{who} round {r} file {i}\n".encode() * (50 + 997 * (i % 4))
                p.write(f"shared/s{i}.py", data)
                versions.setdefault(f"shared/s{i}.py", set()).add(data)
            own = f"{who.lower()}/own{r}.py"
            p.write(own, f"{who} {r}\n")
            versions.setdefault(own, set()).add(f"{who} {r}\n".encode())
        results: dict[str, dict] = {}

        def push(who: str, eng, p) -> None:
            try:
                results[who] = eng.call_sync("push", p.ctx(), {}, timeout=120)
            except Exception as e:  # noqa: BLE001 - a failed push is a finding
                results[who] = {"errors": [str(e)], "conflicts": []}
        threads = [threading.Thread(target=push, args=args) for args in (("A", ea, a), ("B", eb, b))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(180)
        files, temps = remote_state(a.remote_dir)
        remote_bytes = {rel: (a.remote_dir / rel).read_bytes() for rel in files}
        for who in ("A", "B"):
            for e in results[who].get("errors") or []:
                failed.append(f"round {r}: {who}'s push: {e}")
        for rel, data in remote_bytes.items():
            if rel in versions and data not in versions[rel]:
                failed.append(f"round {r}: {rel} on the remote is none of the versions written (corrupt)")
        for i in range(SHARED):
            rel = f"shared/s{i}.py"
            there = remote_bytes.get(rel, b"")
            owner = "A" if there.startswith(b"A round") else "B" if there.startswith(b"B round") else "?"
            if owner == "?" or not there.startswith(f"{owner} round {r} ".encode()):
                failed.append(f"round {r}: {rel} holds neither push of this round")
                continue
            other = "B" if owner == "A" else "A"
            if rel in (results[other].get("conflicts") or []):
                conflicts_seen += 1
            else:
                both_written += 1
                failed.append(f"round {r}: {other}'s {rel} was lost without a conflict ({owner}'s is there)")
        for who in ("A", "B"):
            own = f"{who.lower()}/own{r}.py"
            if own not in remote_bytes:
                failed.append(f"round {r}: {own} (no one else's) did not arrive")
        if temps:
            failed.append(f"round {r}: temporaries left: {temps[:3]}")
        # each takes the other's side of what conflicted for the next round: a pull of the
        # shared folder is what a user does; here the loser forces its own next time
        for who, eng, p in (("A", ea, a), ("B", eb, b)):
            if results[who].get("conflicts"):
                res = eng.call_sync("push", p.ctx(), {"force": True}, timeout=120)
                failed += [f"round {r}: {who}'s forced push: {e}" for e in res.get("errors") or []]
    failed += [f"on screen: {s}" for s in screen.seen()]
    failed += [f"in the log: {s}" for s in log_problems(isolated_state)]
    engines.close(ea)
    engines.close(eb)
    left = temps_after(a.remote_dir, 10)
    procs = remote.settle()
    figures.add("two Neovims pushing at once", remote.kind, ROUNDS * SHARED,
                len([f for f in failed if "corrupt" in f or "lost" in f]), len(left) + len(procs),
                f"{ROUNDS} rounds x {SHARED} shared files: {conflicts_seen} conflicts told, "
                f"{both_written} silent overwrites")
    assert not procs, remote.describe(procs)
    assert not left, left
    assert_guarantees(failed)
