"""The `second` part of bench/sync_wan_bench.py (issue 27: "second checkout (2% differs)
into a new remote_root"): after the tree was pushed into one remote_root, a second checkout
of it -- a copy with 2% of its files changed, the same ones every run -- is pushed into a
NEW remote_root, against `rsync -az` into a fresh folder (the issue's peer) and, for
reference, `rsync -az --copy-dest=<the first root>` into a fresh folder.  Each tool's
result is checked to hold the second tree exactly.  remote_dev's connection for the second
checkout (a project of its own, as a second worktree in Neovim is) is opened before timing,
as the competitors' ControlMaster is.
"""

from __future__ import annotations

import filecmp
import os
import random
import shutil
import subprocess
from pathlib import Path
from typing import Any

from sync_bench import run, settle_disk, warm

CHANGED = 0.02      # share of the files the second checkout changes
GOAL = 5.0          # issue 27: >= 5x faster than rsync -az into a fresh folder


def make_second(tree: Path, second: Path, excludes: tuple[str, ...]) -> list[str]:
    """second: a copy of tree (not its .git and the bench's files); the CHANGED of its files
    that change_second changes, chosen the same way every run."""
    if second.exists():
        shutil.rmtree(second)
    shutil.copytree(tree, second, symlinks=True, ignore=lambda d, names: [n for n in names if d == str(tree)
                                                                          and n in excludes])
    files = sorted(str(p.relative_to(second)) for p in second.rglob("*") if p.is_file() and not p.is_symlink())
    return random.Random(27).sample(files, max(1, round(len(files) * CHANGED)))


def change_second(tree: Path, second: Path, picked: list[str], rep: int) -> None:
    """The picked files of second: the tree's with a line appended, another for each
    repetition (so no repetition finds the last one's changes on the remote)."""
    for rel in picked:
        (second / rel).write_bytes((tree / rel).read_bytes() + f"\n# changed in second checkout {rep}\n".encode())


def same_tree_exactly(local: Path, remote: Path, excludes: tuple[str, ...], what: str) -> None:
    """Every file of local (bar excludes) in remote with the same bytes, and nothing else."""
    def listing(root: Path) -> set[str]:
        out = set()
        for dirpath, dirnames, filenames in os.walk(root):
            if dirpath == str(root):
                dirnames[:] = [d for d in dirnames if d not in excludes]
                filenames = [f for f in filenames if f not in excludes]
            out.update(os.path.relpath(os.path.join(dirpath, f), root) for f in filenames)
        return out
    want, got = listing(local), listing(remote)
    if want != got:
        raise RuntimeError(f"{what}: {len(want - got)} files missing, {len(got - want)} extra on the remote")
    differ = [rel for rel in sorted(want) if not filecmp.cmp(local / rel, remote / rel, shallow=False)]
    if differ:
        raise RuntimeError(f"{what}: {len(differ)} files differ, e.g. {differ[:3]}")


def measure_second(bench: Any, link: Any, excludes: tuple[str, ...], tool_root: dict[str, Path]) -> None:
    """Fills link.r["second_*"]: medians of --repeat runs, each into new folders."""
    from support.sshd import toml_value

    r = link.r
    reps = bench.args.repeat
    first = bench.rd_root(link)
    if not first.exists() or not any(first.iterdir()):
        t, res = bench.rd(link, "push")        # the first root (when --parts has no init)
        assert not res["errors"], res
    second = bench.tree.parent / "wantree-second"
    picked = make_second(bench.tree, second, excludes)
    changed = len(picked)
    print(f"[{link.label}] second checkout ({changed} files changed) into a new remote_root ...", flush=True)
    roots = [bench.fresh_remote(f"{link.target}-second-rd") for _ in range(reps)]
    lines = []
    for i, root in enumerate(roots):
        lines += [f"[targets.s{i}]", f"host = {toml_value(link.alias)}", f"remote_root = {toml_value(str(root))}",
                  f"ssh_config = {toml_value(str(link.ssh_config))}", 'python = "python3"', ""]
    (second / ".remote-dev.toml").write_text("\n".join(lines))
    ctx = {"cwd": str(second)}
    for i in range(reps):     # connected first, as Neovim is (and the competitors' ControlMaster)
        bench.engine.call_sync("target", ctx, {"name": f"s{i}"}, timeout=60)
        bench.engine.call_sync("status", ctx, {}, timeout=120)
    rd, az, cd, copied, wire = [], [], [], [], []
    copy_dest = tool_root.get("rsync_az") or first
    try:
        for i, root in enumerate(roots):
            change_second(bench.tree, second, picked, i)
            settle_disk()
            warm(second)
            bench.engine.call_sync("target", ctx, {"name": f"s{i}"}, timeout=60)
            t = run_rd(bench, ctx)
            rd.append(t[0])
            copied.append(t[1]["copied"])
            wire.append(t[1]["wire_bytes"])
            same_tree_exactly(second, root, excludes, f"remote_dev second checkout over {link.label}")
            for flags, out in ((["-az"], az), (["-az", f"--copy-dest={copy_dest}"], cd)):
                dest = bench.fresh_remote(f"{link.target}-second-rsync")
                settle_disk()
                out.append(run(["rsync", *flags, *(f"--exclude=/{e}" for e in excludes), "-e", bench.ssh(link),
                                f"{second}/", f"{link.alias}:{dest}/"]))
                same_tree_exactly(second, dest, excludes, f"rsync {' '.join(flags)} second checkout")
                shutil.rmtree(dest, ignore_errors=True)
    finally:
        drop_sessions(bench, second)
    r["second_rd"], r["second_rsync_az"], r["second_copy_dest"] = bench_median(rd), bench_median(az), bench_median(cd)
    r["second_copied"], r["second_wire"], r["second_changed"] = bench_median(copied), bench_median(wire), changed
    print(f"    remote_dev {r['second_rd']:.2f} s ({r['second_copied']:.0f} files copied there, "
          f"{r['second_wire'] / 1e6:.1f} MB on the wire), rsync -az {r['second_rsync_az']:.2f} s, "
          f"rsync -az --copy-dest {r['second_copy_dest']:.2f} s", flush=True)


def drop_sessions(bench: Any, root: Path) -> None:
    async def drop() -> None:
        for proj in bench.engine.projects.values():
            if Path(proj.root) == root:
                for sess in list(proj.sessions.values()):
                    sess.drop()
                proj.sessions.clear()
    bench.engine.submit(drop()).result(10)


def run_rd(bench: Any, ctx: dict[str, Any]) -> tuple[float, dict[str, Any]]:
    import time
    t0 = time.perf_counter()
    res = bench.engine.call_sync("push", ctx, {}, timeout=3600)
    t = time.perf_counter() - t0
    assert not res["errors"] and not res["conflicts"], res
    return t, res


def bench_median(xs: list[float]) -> float:
    import statistics
    return statistics.median(xs)


def report_second(link: Any, rows: list[list[str]], targets: list[tuple[bool, str]], info: list[str],
                  ncols: int, s: Any) -> None:
    r = link.r
    if "second_rd" not in r:
        return
    speedup = r["second_rsync_az"] / r["second_rd"]
    rows.append([f"{link.label}: second checkout ({r['second_changed']} files differ) into a new root",
                 s(r["second_rd"]), "—", s(r["second_rsync_az"]), *("—" for _ in range(ncols - 3)),
                 f"{r['second_rd'] / r['second_rsync_az']:.3f}x ({speedup:.1f}x faster than rsync -az)"])
    targets.append((speedup >= GOAL, f"{link.label}: second checkout into a new remote_root >= {GOAL:g}x faster "
                                     f"than rsync -az into a fresh folder ({speedup:.1f}x)"))
    info.append(f"{link.label}: second checkout: rsync -az --copy-dest=<first copy> {s(r['second_copy_dest'])} "
                f"({r['second_copy_dest'] / r['second_rd']:.1f}x remote_dev's time); remote_dev copied "
                f"{r['second_copied']:.0f} files on the remote and sent {r['second_wire'] / 1e6:.2f} MB")
