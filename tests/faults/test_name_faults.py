"""Hostile file names round-tripping push and pull: newlines, leading dashes, bytes that are
not UTF-8, spaces, shell and glob characters, names of 255 bytes.  Each arrives byte for
byte with its content, or is reported on one line naming it; nothing lands elsewhere."""
from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from remote_dev.cli import shown

from .conftest import assert_guarantees, cli, log_problems, screen_problems

NAMES: list[bytes] = [
    b"new\nline.py", b"-rf", b"--help.py", b"-", b"bad\xffutf8.txt", b"\xc3\x28latin.txt", b"with space.py",
    b" leading space", b"trailing space ", b"tab\tname", b"back\\slash", b"quote'\"", b"$HOME", b"*glob?",
    b"[x]", b"#hash", b"~tilde", b".hidden", "emoji_\U0001F600.txt".encode(), b"L" * 251 + b".txt",
    "\u00e9".encode() * 127, b"cr\rname", b"x;rm -rf y", b"`cmd`",
]
DIRS: list[bytes] = [b"-dir", b"dir with\nnewline", b"bad\xfedir"]


def paths() -> list[bytes]:
    out = list(NAMES)
    for d in DIRS:
        out += [d + b"/" + n for n in (b"-inner", b"inner\xff")]
    return out


def write_tree(base: Path, rels: list[bytes], tag: bytes) -> dict[bytes, bytes]:
    files = {}
    for rel in rels:
        full = os.path.join(os.fsencode(base), rel)
        os.makedirs(os.path.dirname(full), exist_ok=True)
        data = tag + b":" + rel + b"\n"
        with open(full, "wb") as f:
            f.write(data)
        files[rel] = data
    return files


def read_tree(base: Path) -> dict[bytes, bytes]:
    out = {}
    root = os.fsencode(base)
    for dirpath, _, names in os.walk(root):
        for name in names:
            full = os.path.join(dirpath, name)
            rel = os.path.relpath(full, root)
            if b".rdtmp-" in name or rel.startswith(b".remote-dev") or rel.startswith(b".git/"):
                continue
            with open(full, "rb") as f:
                out[rel] = f.read()
    return out


@pytest.mark.parametrize("git", [False, True], ids=["plain", "git"])
def test_hostile_names_round_trip(remote, fault_project, engines, screen, figures, isolated_state, git):
    proj = fault_project(config_extra='[sync]\npull = ["out/"]\n')
    if git:
        subprocess.run(["git", "init", "-q", str(proj.root)], check=True)
    rels = paths()
    sent = write_tree(proj.root, rels, b"pushed")
    failed: list[str] = []
    # the CLI's preview names each file on one line of its own, quoted when it must be
    pre = cli(proj, "push", "--dry-run", state=isolated_state)
    failed += [f"preview on screen: {s}" for s in screen_problems(pre.stderr)]
    listed = set(pre.stdout.splitlines())
    failed += [f"preview: {rel!r} not on a line of its own" for rel in rels if f"  {shown(os.fsdecode(rel))}" not in listed]
    eng = engines.new()
    try:
        res = eng.call_sync("push", proj.ctx(), {}, timeout=120)
        failed += [f"push error: {e}" for e in res.get("errors") or []]
    except Exception as e:  # noqa: BLE001 - a failed push is a finding, reported below
        failed.append(f"push failed: {e}")
    got = read_tree(proj.remote_dir)
    for rel, data in sent.items():
        if got.get(rel) != data:
            failed.append(f"push: {rel!r} {'missing' if rel not in got else 'differs'} on the remote")
    failed += [f"push: unexpected remote file {rel!r}" for rel in set(got) - set(sent)]
    # the remote makes the same names in a pull folder; they come back byte for byte
    remote_out = proj.remote_dir / "out"
    made = write_tree(remote_out, rels, b"pulled")
    remote.chown(proj.remote_dir)
    try:
        res = eng.call_sync("pull", proj.ctx(), {}, timeout=120)
        failed += [f"pull error: {e}" for e in res.get("errors") or []]
    except Exception as e:  # noqa: BLE001
        failed.append(f"pull failed: {e}")
    back = read_tree(proj.root / "out")
    for rel, data in made.items():
        if back.get(rel) != data:
            failed.append(f"pull: {rel!r} {'missing' if rel not in back else 'differs'} locally")
    # and a push after the pull changes nothing
    try:
        again = eng.call_sync("push", proj.ctx(), {}, timeout=120)
        if again.get("files") or again.get("conflicts") or again.get("errors"):
            failed.append(f"a push after the round trip still had work: {again}")
    except Exception as e:  # noqa: BLE001
        failed.append(f"second push failed: {e}")
    failed += [f"on screen: {s}" for s in screen.seen()]
    failed += [f"in the log: {s}" for s in log_problems(isolated_state)]
    engines.close(eng)
    procs = remote.settle()
    figures.add(f"hostile file names ({'git' if git else 'no git'})", remote.kind, 2 * len(rels),
                len([f for f in failed if f.startswith(("push:", "pull:"))]), len(procs),
                f"{len(rels)} names pushed and pulled back")
    assert not procs, remote.describe(procs)
    assert_guarantees(failed)
