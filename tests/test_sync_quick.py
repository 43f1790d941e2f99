"""Tree pushes without any watcher (what a laptop gets where neither inotify nor watchdog
works): after the first whole-tree scan a push asks git status and stats the folders and
the files git does not vouch for (sync/quick.py).  Real file system, real git, real sshd:
every change is pushed, and the no-op pushes really took the quick way (no whole-tree
scan, no git listing)."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest
from test_sync import push, same_as_local

import remote_dev.sync.scan as scan_mod
from remote_dev.sync.scan import git_listing
from remote_dev.sync.state import sync_state
from remote_dev.sync.watch import WATCHER_ENV


def git(root, *args):
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@localhost", *args], cwd=root, check=True,
                   capture_output=True)


@pytest.fixture
def counted(monkeypatch):
    """No watcher; counts whole-tree scans and git listings."""
    monkeypatch.setenv(WATCHER_ENV, "none")
    calls = {"full": 0, "git": 0}
    scan, listing = scan_mod.Scanner.scan, scan_mod.git_listing_start

    def counting_scan(self, paths=None, hint=None, track=True):
        calls["full"] += paths is None
        return scan(self, paths, hint, track)

    def counting_listing(root, paths=None, which=("-c", "-o")):
        calls["git"] += 1
        return listing(root, paths, which)
    monkeypatch.setattr(scan_mod.Scanner, "scan", counting_scan)
    monkeypatch.setattr(scan_mod, "git_listing_start", counting_listing)
    return calls


def quick_push(engine, proj, calls, files, deleted=0, full=False):
    """A tree push; full: it had to scan the whole tree (else it must not have)."""
    before = dict(calls)
    res = push(engine, proj)
    assert res["errors"] == [] and res["conflicts"] == [], res
    assert (res["files"], res["deleted"]) == (files, deleted), res
    assert (calls["full"] > before["full"]) == full, (calls, before)
    scanner = sync_state(engine.projects[proj.root.resolve()]).scanner
    assert scanner.watcher is None
    return res


def test_without_a_watcher_git_status_and_the_folders_say_what_changed(engine, make_project, counted):
    proj = make_project(git=True)
    proj.write(".gitignore", "*.log\nbuild/\n")
    proj.write("a.py", "aaaa\n")
    proj.write("pkg/b.py", "b\n")
    proj.write("pkg/deep/c.py", "c\n")
    proj.write("notes.txt", "untracked\n")
    proj.write("build/out.bin", "ignored\n")
    git(proj.root, "add", ".gitignore", "a.py", "pkg")
    git(proj.root, "commit", "-qm", "one")
    push(engine, proj)

    def expect():
        return {rel for rel in git_listing(proj.root) if os.path.lexists(proj.root / rel)}

    n = counted["git"]
    assert quick_push(engine, proj, counted, 0) and counted["git"] == n   # nothing changed: no listing
    # an edit of the same size in the same second, and one whose mtime was put back into
    # the second it had: git's stat data cannot tell, its racy-entry rule or ctime does
    st = os.stat(proj.root / "a.py")
    proj.write("a.py", "bbbb\n")
    quick_push(engine, proj, counted, 1)
    time.sleep(1.1)
    proj.write("a.py", "cccc\n")
    os.utime(proj.root / "a.py", ns=(st.st_atime_ns, st.st_mtime_ns + 1))
    quick_push(engine, proj, counted, 1)
    same_as_local(proj, expect())
    # back to what the index holds: git no longer names it, it is still looked at
    git(proj.root, "checkout", "--", "a.py")
    quick_push(engine, proj, counted, 1)
    assert proj.remote("a.py").read_text() == "aaaa\n"
    # a new untracked file, in a folder with files and in the root; an untracked one edited
    proj.write("pkg/deep/new.py", "new\n")
    proj.write("notes.txt", "untracked, edited\n")
    quick_push(engine, proj, counted, 2)
    # a tracked file deleted, an untracked one deleted, one ignored appearing
    (proj.root / "pkg/b.py").unlink()
    (proj.root / "pkg/deep/new.py").unlink()
    proj.write("debug.log", "ignored\n")
    quick_push(engine, proj, counted, 0, deleted=2)
    same_as_local(proj, expect())
    # a file changed, then added: the index's content changed -> a whole-tree scan
    proj.write("pkg/deep/c.py", "c2\n")
    git(proj.root, "add", "pkg/deep/c.py")
    quick_push(engine, proj, counted, 1, full=True)
    proj.write("pkg/deep/c.py", "c3\n")
    git(proj.root, "commit", "-qam", "two")
    quick_push(engine, proj, counted, 1, full=True)
    # the index refreshed by another git (stat data only): still the quick way
    os.utime(proj.root / "a.py", ns=(1, 1))
    git(proj.root, "status")
    proj.write("notes.txt", "untracked, edited again\n")
    quick_push(engine, proj, counted, 1)
    # a new folder: a whole-tree scan
    proj.write("fresh/x.py", "x\n")
    quick_push(engine, proj, counted, 1, full=True)
    # a symlink, a mode change (+x: git sees it)
    os.symlink("a.py", proj.root / "alias.py")
    quick_push(engine, proj, counted, 1, full=False)
    os.chmod(proj.root / "fresh/x.py", 0o755)
    git(proj.root, "add", "fresh/x.py")   # the index changes: whole-tree scan
    quick_push(engine, proj, counted, 1, full=True)
    os.chmod(proj.root / "fresh/x.py", 0o644)
    quick_push(engine, proj, counted, 1)
    same_as_local(proj, expect())


def test_without_a_watcher_nothing_is_missed_across_a_checkout(engine, make_project, counted):
    """Another branch checked out rewrites the index and many files (some in the same
    second as the last push): a whole-tree scan, and the remote is the new branch."""
    proj = make_project(git=True)
    for i in range(20):
        proj.write(f"m/f{i}.py", f"main {i}\n")
    git(proj.root, "add", "m")
    git(proj.root, "commit", "-qm", "main")
    git(proj.root, "checkout", "-qb", "other")
    for i in range(0, 20, 2):
        proj.write(f"m/f{i}.py", f"othr {i}\n")   # same sizes
    (proj.root / "m/f1.py").unlink()
    proj.write("m/only-here.py", "x\n")
    git(proj.root, "add", "-A", "m")
    git(proj.root, "commit", "-qm", "other")
    git(proj.root, "checkout", "-q", "-")
    push(engine, proj)
    quick_push(engine, proj, counted, 0)
    git(proj.root, "checkout", "-q", "other")
    quick_push(engine, proj, counted, 11, deleted=1, full=True)
    same_as_local(proj, set(git_listing(proj.root)))
    git(proj.root, "checkout", "-q", "-")
    quick_push(engine, proj, counted, 11, deleted=1, full=True)
    same_as_local(proj, set(git_listing(proj.root)))
    quick_push(engine, proj, counted, 0)


def test_without_a_watcher_included_ignored_files(engine, make_project, counted):
    proj = make_project(git=True, config_extra='[sync]\ninclude = ["data/**/input.txt"]\n')
    proj.write(".gitignore", "data/\n")
    proj.write("run.py", "r\n")
    proj.write("data/a/input.txt", "1\n")
    proj.write("data/a/other.txt", "left out\n")
    git(proj.root, "add", ".gitignore", "run.py")
    git(proj.root, "commit", "-qm", "one")
    push(engine, proj)
    quick_push(engine, proj, counted, 0)
    proj.write("data/a/input.txt", "2\n")
    quick_push(engine, proj, counted, 1)
    proj.write("data/a/other.txt", "still left out\n")
    quick_push(engine, proj, counted, 0)
    proj.write("data/b/input.txt", "new, in an ignored folder\n")
    quick_push(engine, proj, counted, 1)
    assert proj.remote("data/b/input.txt").read_text() == "new, in an ignored folder\n"
    assert not proj.remote("data/a/other.txt").exists()


def test_without_a_watcher_or_git(engine, make_project, counted):
    """A tree without git: the Walker's listing once, then stats of the listed files and
    the folders."""
    proj = make_project()
    proj.write(".gitignore", "*.tmp\n")
    proj.write("a.py", "aaaa\n")
    proj.write("pkg/b.py", "b\n")
    push(engine, proj)
    quick_push(engine, proj, counted, 0)
    proj.write("a.py", "bbbb\n")   # same size, same second
    quick_push(engine, proj, counted, 1)
    proj.write("pkg/c.py", "c\n")
    proj.write("pkg/x.tmp", "ignored\n")
    (proj.root / "pkg/b.py").unlink()
    quick_push(engine, proj, counted, 1, deleted=1)
    os.chmod(proj.root / "a.py", 0o600)
    quick_push(engine, proj, counted, 1)
    proj.write(".gitignore", "*.tmp\nc.py\n")   # the rules changed: a whole-tree scan
    quick_push(engine, proj, counted, 1, full=True)
    time.sleep(0.1)   # (a .gitignore changed within 50 ms of a push is looked at again: a whole-tree scan)
    (proj.root / "pkg/c.py").unlink()   # ignored now and gone here: gone there too
    quick_push(engine, proj, counted, 0, deleted=1)
    same_as_local(proj, {".remote-dev.toml", ".gitignore", "a.py"})


def test_with_neither_inotify_nor_watchdog_importable(tmp_path):
    """What a machine without either gets (the packages cannot be imported, as on a
    platform neither supports): no watcher, and the quick check in its place."""
    root = tmp_path / "tree"
    (root / "pkg").mkdir(parents=True)
    (root / "pkg" / "a.py").write_text("a\n")
    git(root, "init", "-q")
    git(root, "add", ".")
    git(root, "commit", "-qm", "one")
    prog = f"""
import sys, time
for name in ("inotify_simple", "watchdog", "watchdog.events", "watchdog.observers"):
    sys.modules[name] = None
from remote_dev.sync.scan import Scanner
s = Scanner({str(root)!r})
assert set(s.scan()) == {{"pkg/a.py"}}
s.start_watch(); s.settle()
assert s.watcher is None and s.quick is not None and s.quick.valid
time.sleep(0.1)
assert s.changes() == []
open({str(root / "pkg" / "a.py")!r}, "w").write("b\\n")
assert s.changes() == ["pkg/a.py"], s.changes()
print("ok")
"""
    env = {k: v for k, v in os.environ.items() if k != WATCHER_ENV}
    out = subprocess.run([sys.executable, "-c", prog], capture_output=True, text=True, env=env, timeout=60)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr


def test_without_a_watcher_pull_folders_are_not_looked_into(engine, make_project, counted):
    """sync.pull folders fill up with what runs write (and pulls bring): new folders there
    do not cost a whole-tree scan, and nothing there is pushed."""
    proj = make_project(git=True, config_extra='[sync]\npull = ["results"]\n')
    proj.write("run.py", "r\n")
    proj.write("results/old.txt", "o\n")
    git(proj.root, "add", "run.py")
    git(proj.root, "commit", "-qm", "one")
    push(engine, proj)
    time.sleep(0.1)
    proj.write("results/run1/out.txt", "x\n")
    proj.write("results/new.txt", "n\n")
    quick_push(engine, proj, counted, 0)
    proj.write("run.py", "r2\n")
    quick_push(engine, proj, counted, 1)
    assert not proj.remote("results").exists()


@pytest.mark.parametrize("tracked", [True, False])
def test_without_a_watcher_a_folder_where_a_file_was_means_a_whole_tree_scan(tmp_path, monkeypatch, tracked):
    """(The folder must be walked from then on: new files in it are seen.)"""
    monkeypatch.setenv(WATCHER_ENV, "none")
    root = tmp_path / "tree"
    root.mkdir()
    (root / "a.py").write_text("a\n")
    (root / "b.txt").write_text("b\n")
    git(root, "init", "-q")
    git(root, "add", "a.py")
    git(root, "commit", "-qm", "one")
    time.sleep(0.1)   # (files changed within 50 ms of a scan are looked at again by the next push)
    s = scan_mod.Scanner(root)
    s.scan()
    s.start_watch()
    time.sleep(0.1)
    assert s.changes() == []
    name = "a.py" if tracked else "b.txt"
    (root / name).unlink()
    (root / name).mkdir()
    (root / name / "inside.py").write_text("i\n")
    assert s.changes() is None
    assert f"{name}/inside.py" in s.scan()
    s.start_watch()
    time.sleep(0.1)
    (root / name / "later.py").write_text("l\n")
    assert f"{name}/later.py" in s.changes()   # (and a.py itself while git's index says it is a file)
    s.close()


def test_a_stale_index_makes_whole_tree_scans_until_git_writes_it_anew(engine, make_project, counted):
    """A tree whose index no longer holds its files' stat data (copied, or every file
    touched) makes git's status compare each file by content, every time: git refreshes
    the index only where it may write it, which a check never does.  When git's check
    costs more than the whole-tree scan, pushes scan the tree instead until another git
    writes the index; every change is pushed all along."""
    from remote_dev.sync import quick
    proj = make_project(git=True)
    blob = os.urandom(256 * 1024)
    for i in range(400):   # ~100 MB for git to hash, 400 files to stat
        proj.write(f"d{i % 8}/f{i:03d}.bin", blob[i:] + blob[:i])
    git(proj.root, "add", ".")
    git(proj.root, "commit", "-qm", "one")
    quick_push(engine, proj, counted, files=401, full=True)
    quick_push(engine, proj, counted, files=0)          # a fresh index: git's quick check
    git_dir = str(proj.root / ".git")
    assert not quick.stale_index(git_dir)
    later = time.time() + 5
    for path in proj.root.rglob("*.bin"):
        os.utime(path, (later, later))                   # same content, other stat data
    quick_push(engine, proj, counted, files=0)           # git: the same content (it hashed it all)
    assert quick.stale_index(git_dir)
    proj.write("d1/f001.bin", b"edited")
    quick_push(engine, proj, counted, files=1, full=True)     # the edit (the others: the same content)
    quick_push(engine, proj, counted, files=0, full=True)
    git(proj.root, "update-index", "-q", "--refresh")   # the user's git writes the index anew
    assert not quick.stale_index(git_dir)
    quick_push(engine, proj, counted, files=0, full=True)   # a new baseline
    quick_push(engine, proj, counted, files=0)
    same_as_local(proj, set(git_listing(proj.root)))
