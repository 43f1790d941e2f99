"""Sync through the engine against the real sshd: git-exact ignores, incremental atomic
pushes, conflicts both ways, deletes, symlinks, escapes refused by the agent, cut
connections, the size limit, previews, push on save and pull."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import events, wait_for
from remote_dev import rpc
from remote_dev.errors import AgentCallError, RemoteDevError
from remote_dev.sync.ignore import Walker
from remote_dev.sync.scan import git_listing
from remote_dev.sync.records import Record, SyncRecords
from remote_dev.sync.state import sync_state

# --------------------------------------------------------------------------- helpers


def ctx(proj):
    return {"cwd": str(proj.root)}


def push(engine, proj, **args):
    return engine.call_sync("push", ctx(proj), args, timeout=120)


def pull(engine, proj, **args):
    return engine.call_sync("pull", ctx(proj), args, timeout=120)


def messages(engine, level=None):
    return [p["text"] for k, p in engine.reports if k == "message" and (level is None or p["level"] == level)]


def on_engine(engine, proj, fn):
    """Run ``await fn(session)`` on the engine's loop (the only thread that may touch it)."""
    async def go():
        return await fn(engine.project(ctx(proj)).session())
    return engine.submit(go()).result(60)


def agent_call(engine, proj, method, *params):
    return on_engine(engine, proj, lambda sess: sess.call(method, *params))


def remote_files(proj):
    """Every file and symlink under the remote root, relative, as a set."""
    out = set()
    for dirpath, dirnames, filenames in os.walk(proj.remote_root):
        for name in filenames + [d for d in dirnames if os.path.islink(os.path.join(dirpath, d))]:
            out.add(os.path.relpath(os.path.join(dirpath, name), proj.remote_root))
    return out


def temps(path):
    return [os.path.join(d, n) for d, _, names in os.walk(path) for n in names if ".rdtmp-" in n]


def git(root, *args):
    subprocess.run(["git", "-C", str(root), *args], check=True, capture_output=True)


# --------------------------------------------------------------------------- ignores

IGNORE_TREE = {
    ".gitignore": "*.log\n!keep.log\nbuild/\n/top.txt\ndocs/**/*.tmp\n\\#hash.txt\nlogs/*\n!logs/important/\n"
                  "cache\n*.[oa]\nspaced\\ name.txt\ntrailing.txt   \n!build/keep.txt\na/**/z\n# a comment\n\n",
    "src/.gitignore": "!debug.log\ngenerated/\n/local.txt\n*.pyc\n!keep.pyc\n",
    "src/deep/.gitignore": "!*.tmp\n*.txt\n!readme.txt\n",
    "build/.gitignore": "!*\n",
}
IGNORE_FILES = [
    "a.log", "keep.log", "sub/b.log", "sub/keep.log", "build/x.py", "build/keep.txt", "sub/build/y.py",
    "top.txt", "sub/top.txt", "docs/a/b/c.tmp", "docs/c.tmp", "x.tmp", "#hash.txt", "logs/a.txt",
    "logs/important/b.txt", "logs/other/c.txt", "cache", "sub/cache/d.py", "m.o", "m.a", "m.c",
    "spaced name.txt", "trailing.txt", "src/debug.log", "src/generated/g.py", "src/local.txt",
    "src/sub/local.txt", "src/a.pyc", "src/keep.pyc", "src/deep/x.tmp", "src/deep/notes.txt",
    "src/deep/readme.txt", "src/deep/code.py", "f.swp", ".DS_Store", "global_dir/z.py",
    "sub/global_dir/z.py", "normal.py", "a/z", "a/b/c/z", "a/b/y", "ünïcode.py",
]


def build_ignore_tree(root: Path) -> None:
    for rel, text in IGNORE_TREE.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    for rel in IGNORE_FILES:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(rel + "\n")
    os.symlink("normal.py", root / "link.py")
    os.symlink("src", root / "dirlink")


@pytest.fixture
def global_excludes(tmp_path, monkeypatch):
    """A global git config whose core.excludesFile lists patterns, as users have."""
    excludes = tmp_path / "global-ignore"
    excludes.write_text("*.swp\n.DS_Store\nglobal_dir/\n")
    cfg = tmp_path / "gitconfig"
    cfg.write_text(f"[core]\n\texcludesFile = {excludes}\n")
    monkeypatch.setenv("GIT_CONFIG_GLOBAL", str(cfg))
    return excludes


def test_walker_matches_git_ls_files(tmp_path, global_excludes):
    plain = tmp_path / "plain"
    build_ignore_tree(plain)
    repo = tmp_path / "repo"
    shutil.copytree(plain, repo, symlinks=True)
    git(repo, "init", "-q")
    walked = sorted(Walker(plain).listing())
    by_git = sorted(git_listing(repo))
    assert walked == by_git
    # what git answers, spelled out: nested rules, negations, anchors, parents that stay out
    assert "keep.log" in walked and "a.log" not in walked and "sub/keep.log" in walked
    assert not any(p.startswith("build/") for p in walked)  # !build/keep.txt cannot re-include
    assert "src/debug.log" in walked and "src/keep.pyc" in walked and "src/a.pyc" not in walked
    assert "src/local.txt" not in walked and "src/sub/local.txt" in walked
    assert "src/deep/x.tmp" in walked and "src/deep/readme.txt" in walked and "src/deep/notes.txt" not in walked
    assert "logs/important/b.txt" in walked and "logs/a.txt" not in walked
    assert "f.swp" not in walked and "sub/global_dir/z.py" not in walked  # the global excludes file
    assert "link.py" in walked and "dirlink" in walked  # symlinks are entries, never entered
    # the same for a subset of paths
    for paths in (["src"], ["src/deep/x.tmp", "build/x.py", "logs"], ["a"]):
        assert sorted(Walker(plain).listing(paths)) == sorted(git_listing(repo, paths))


def test_git_listing_as_git_writes_it(tmp_path, global_excludes):
    """The scan reads git's listing as git writes it, tracked and untracked files from two
    processes: the same paths as one `git ls-files -co`, a file in a merge conflict once
    (git lists it per stage), and no listing at all when git fails."""
    from remote_dev.sync.scan import GitListing, Scanner, git_listing_start

    repo = tmp_path / "repo"
    build_ignore_tree(repo)
    ident = ("-c", "user.name=t", "-c", "user.email=t@t")
    git(repo, "init", "-q", "-b", "main")
    git(repo, "add", "normal.py", "src")
    git(repo, *ident, "commit", "-q", "-m", "one")
    git(repo, "checkout", "-q", "-b", "other")
    (repo / "normal.py").write_text("theirs\n")
    git(repo, *ident, "commit", "-q", "-am", "theirs")
    git(repo, "checkout", "-q", "main")
    (repo / "normal.py").write_text("ours\n")
    git(repo, *ident, "commit", "-q", "-am", "ours")
    merge = subprocess.run(["git", "-C", str(repo), *ident, "merge", "other"], capture_output=True)
    assert merge.returncode != 0   # a conflict: normal.py has stages 1-3 in the index
    raw = subprocess.run(["git", "-C", str(repo), "ls-files", "-z", "-c"], capture_output=True).stdout
    assert raw.split(b"\0").count(b"normal.py") == 3
    combined = subprocess.run(["git", "-C", str(repo), "ls-files", "-z", "-co", "--exclude-standard"],
                              capture_output=True).stdout.decode().split("\0")[:-1]
    listed = git_listing(repo)
    assert listed.count("normal.py") == 1 and sorted(listed) == sorted(set(combined))
    assert set(Scanner(repo, watch=False).scan()) == set(combined)
    # git failing (no repository any more): what it listed does not count
    shutil.rmtree(repo / ".git")
    listing = GitListing(git_listing_start(repo))
    assert list(listing) == [] and not listing.ok
    assert git_listing(repo) is None


def test_push_follows_git_ignores_exclude_and_pull(engine, make_project, global_excludes):
    proj = make_project(git=True, config_extra='[sync]\nexclude = ["data/", "*.ckpt", "!keep.ckpt"]\n'
                                               'pull = ["results/"]\n')
    build_ignore_tree(proj.root)
    (proj.root / ".git/info/exclude").write_text("info_excluded.py\n")
    for rel in ("info_excluded.py", "data/big.bin", "sub/data/x.bin", "model.ckpt", "keep.ckpt",
                "results/out.txt", "sub/results/kept.txt"):
        proj.write(rel, rel)
    git(proj.root, "add", "normal.py")
    res = push(engine, proj)
    listed = set(git_listing(proj.root))
    assert "info_excluded.py" not in listed and "f.swp" not in listed and "normal.py" in listed
    expected = listed - {"data/big.bin", "sub/data/x.bin", "model.ckpt", "results/out.txt"}
    assert "sub/results/kept.txt" in expected  # pull folders are anchored at the root
    assert "keep.ckpt" in expected  # a negation in sync.exclude re-includes, as in .gitignore
    assert remote_files(proj) == expected
    assert res["files"] == len(expected)
    assert not (proj.remote_root / ".git").exists()
    assert os.path.islink(proj.remote("dirlink"))


def test_non_git_project_uses_the_walker(engine, make_project, global_excludes):
    proj = make_project()
    build_ignore_tree(proj.root)
    push(engine, proj)
    assert remote_files(proj) == set(Walker(proj.root).listing())


# --------------------------------------------------------------------------- push basics


def test_incremental_push_keeps_modes_and_links(engine, make_project, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_text("outside\n")
    proj = make_project()
    proj.write("main.py", "print(1)\n")
    proj.write("run.sh", "#!/bin/sh\necho hi\n", mode=0o755)
    proj.write("pkg/empty.txt", "")
    os.symlink("main.py", proj.root / "alias.py")
    os.symlink(str(outside), proj.root / "out")            # a link to a folder outside the tree
    os.symlink(str(outside / "secret.txt"), proj.root / "secret.txt")
    res = push(engine, proj)
    assert res["files"] == 7 and res["conflicts"] == []
    assert proj.remote("main.py").read_text() == "print(1)\n"
    assert os.stat(proj.remote("run.sh")).st_mode & 0o777 == 0o755
    assert proj.remote("pkg/empty.txt").read_bytes() == b""
    assert os.readlink(proj.remote("alias.py")) == "main.py"
    assert os.readlink(proj.remote("out")) == str(outside)
    assert os.readlink(proj.remote("secret.txt")) == str(outside / "secret.txt")
    assert sorted(os.listdir(outside)) == ["secret.txt"]
    done = events(engine, "RemoteDevPushDone")[-1]
    assert done["files"] == 7 and done["bytes"] > 0 and done["ms"] > 0 and done["conflicts"] == []
    # nothing changed: nothing sent
    assert push(engine, proj)["files"] == 0
    # one change, a mode change, a touched file with the same content
    proj.write("main.py", "print(2)\n")
    os.chmod(proj.root / "pkg/empty.txt", 0o600)
    os.utime(proj.root / "run.sh")
    res = push(engine, proj)
    assert res["files"] == 2
    assert proj.remote("main.py").read_text() == "print(2)\n"
    assert os.stat(proj.remote("pkg/empty.txt")).st_mode & 0o777 == 0o600
    # writing the remote link's place never writes through it
    (proj.root / "secret.txt").unlink()
    proj.write("secret.txt", "mine now\n")
    push(engine, proj)
    assert (outside / "secret.txt").read_text() == "outside\n"
    assert proj.remote("secret.txt").read_text() == "mine now\n" and not os.path.islink(proj.remote("secret.txt"))
    assert temps(proj.remote_root) == []


def test_push_of_paths_only(engine, make_project):
    proj = make_project()
    proj.write("a.py", "a\n")
    proj.write("pkg/b.py", "b\n")
    proj.write("pkg/c.py", "c\n")
    res = engine.call_sync("push", {"cwd": str(proj.root / "pkg")}, {"paths": ["b.py"]}, timeout=60)
    assert res["files"] == 1 and remote_files(proj) == {"pkg/b.py"}
    push(engine, proj, paths=[str(proj.root / "pkg")])
    assert remote_files(proj) == {"pkg/b.py", "pkg/c.py"}
    with pytest.raises(RemoteDevError, match="outside the project root"):
        push(engine, proj, paths=["/etc/passwd"])


def test_remote_change_is_a_conflict_and_bang_overwrites(engine, make_project):
    proj = make_project()
    proj.write("a.py", "v1\n")
    proj.write("b.py", "b\n")
    push(engine, proj)
    proj.remote("a.py").write_text("edited on the remote\n")
    proj.write("a.py", "v2\n")
    res = push(engine, proj)
    assert res["conflicts"] == ["a.py"] and res["files"] == 0
    assert proj.remote("a.py").read_text() == "edited on the remote\n"
    assert "changed on the remote" in res["conflict_details"][0]["reason"]
    assert res["conflict_details"][0]["local"] == str(proj.root / "a.py")
    assert events(engine, "RemoteDevPushDone")[-1]["conflicts"] == ["a.py"]
    warn = messages(engine, "warn")[-1]
    assert "a.py" in warn and ":RemotePush!" in warn
    # still in conflict on the next push (nothing was recorded)
    assert push(engine, proj)["conflicts"] == ["a.py"]
    res = push(engine, proj, force=True)
    assert res["conflicts"] == [] and proj.remote("a.py").read_text() == "v2\n"
    # a remote file that was never pushed is not overwritten either
    proj.remote("new.py").write_text("theirs\n")
    proj.write("new.py", "mine\n")
    res = push(engine, proj)
    assert res["conflicts"] == ["new.py"] and proj.remote("new.py").read_text() == "theirs\n"
    # but the same content on both sides is no conflict
    proj.remote("same.py").write_text("same\n")
    proj.write("same.py", "same\n")
    assert push(engine, proj)["conflicts"] == ["new.py"]


# --------------------------------------------------------------------------- records are a cache


def test_remote_edit_of_a_file_unchanged_here_is_a_conflict(engine, make_project):
    proj = make_project()
    proj.write("a.py", "v1\n")
    proj.write("b.py", "b\n")
    push(engine, proj)
    proj.remote("a.py").write_text("remote work\n")
    res = push(engine, proj)   # nothing changed here: the remote check finds it
    assert res["files"] == 0 and res["conflicts"] == ["a.py"]
    assert res["conflict_details"][0]["reason"] == "changed on the remote since the last sync"
    assert proj.remote("a.py").read_text() == "remote work\n"
    assert events(engine, "RemoteDevPushDone")[-1]["conflicts"] == ["a.py"]
    assert ":RemotePush!" in messages(engine, "warn")[-1]
    # the dry run says so, a push of that path too; the remote copy stays
    assert push(engine, proj, dry_run=True)["conflicts"] == ["a.py"]
    assert push(engine, proj, paths=[str(proj.root / "a.py")])["conflicts"] == ["a.py"]
    # touched on the remote with the same content: no conflict, just re-recorded
    st = os.stat(proj.remote("b.py"))
    os.utime(proj.remote("b.py"), ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    assert push(engine, proj)["conflicts"] == ["a.py"]
    # ! overwrites
    res = push(engine, proj, force=True)
    assert res["files"] == 1 and res["conflicts"] == [] and proj.remote("a.py").read_text() == "v1\n"
    assert push(engine, proj)["conflicts"] == []


def test_session_b_restores_what_was_deleted_remotely_after_session_a(make_project):
    """Issue 12: Neovim session A pushes; the remote tree is deleted (a reimaged machine);
    the same files are written again here with the same content; session B's push
    restores the tree instead of trusting its records ("3 unchanged")."""
    from remote_dev.actions import ACTIONS
    from remote_dev.engine import Engine

    proj = make_project()
    files = {"a.py": "a\n", "pkg/b.py": "b\n", "run.sh": "echo hi\n"}
    for rel, text in files.items():
        proj.write(rel, text)
    session_a = Engine(actions=ACTIONS)
    try:
        session_a.call_sync("push", ctx(proj), {}, timeout=60)
    finally:
        session_a.close()
    shutil.rmtree(proj.remote_root)
    for rel, text in files.items():
        proj.write(rel, text)
    session_b = Engine(actions=ACTIONS)
    try:
        preview = session_b.call_sync("push", ctx(proj), {"dry_run": True}, timeout=60)
        assert sorted(preview["send"]) == sorted([*files, ".remote-dev.toml"])
        res = session_b.call_sync("push", ctx(proj), {}, timeout=60)
    finally:
        session_b.close()
    assert res["files"] == 4 and res["conflicts"] == [] and res["errors"] == []
    assert remote_files(proj) == {*files, ".remote-dev.toml"}
    assert all(proj.remote(rel).read_text() == text for rel, text in files.items())


def test_a_push_with_nothing_changed_here_restores_what_vanished_remotely(engine, make_project):
    proj = make_project()
    proj.write("a.py", "a\n")
    proj.write("pkg/b.py", "b\n")
    push(engine, proj)
    assert push(engine, proj)["files"] == 0
    shutil.rmtree(proj.remote("pkg"))
    proj.remote("a.py").unlink()
    res = push(engine, proj)
    assert res["files"] == 2 and proj.remote("pkg/b.py").read_text() == "b\n"
    assert push(engine, proj)["files"] == 0
    # a push of one path (a save) checks that path
    proj.remote("a.py").unlink()
    assert push(engine, proj, paths=[str(proj.root / "a.py")])["files"] == 1
    assert proj.remote("a.py").read_text() == "a\n"


def test_deletes_only_what_was_pushed(engine, make_project):
    proj = make_project(config_extra='[sync]\npull = ["results/"]\n')
    proj.write("a.py", "a\n")
    proj.write("pkg/b.py", "b\n")
    push(engine, proj)
    proj.remote("remote_only.txt").write_text("theirs\n")
    (proj.remote_root / "results").mkdir()
    proj.remote("results/r.txt").write_text("result\n")
    pull(engine, proj)
    assert (proj.root / "results/r.txt").read_text() == "result\n"
    (proj.root / "a.py").unlink()
    shutil.rmtree(proj.root / "pkg")
    (proj.root / "results/r.txt").unlink()
    res = push(engine, proj)
    assert res["deleted"] == 2
    assert remote_files(proj) == {".remote-dev.toml", "remote_only.txt", "results/r.txt"}
    assert not proj.remote("pkg").exists()  # emptied folders go too
    # a pushed file changed remotely and deleted here is a conflict
    proj.write("c.py", "c\n")
    push(engine, proj)
    proj.remote("c.py").write_text("remote edit\n")
    (proj.root / "c.py").unlink()
    res = push(engine, proj)
    assert res["conflicts"] == ["c.py"] and proj.remote("c.py").exists()
    assert "deleted locally" in res["conflict_details"][0]["reason"]
    assert push(engine, proj, force=True)["deleted"] == 1 and not proj.remote("c.py").exists()


def test_max_file_size_skips_with_a_message(engine, make_project):
    proj = make_project(config_extra="[sync]\nmax_file_size = 1000\n")
    proj.write("small.py", "x" * 999)
    proj.write("weights.bin", b"\0" * 5000)
    res = push(engine, proj)
    assert res["skipped"] == [{"path": "weights.bin", "size": 5000, "reason": "over sync.max_file_size (1.0 KB)"}]
    assert not proj.remote("weights.bin").exists() and proj.remote("small.py").exists()
    msg = messages(engine, "warn")[-1]
    assert "weights.bin" in msg and "sync.max_file_size" in msg and ".remote-dev.toml" in msg


def test_dry_run_writes_nothing(engine, make_project, isolated_state):
    proj = make_project()
    proj.write("a.py", "a\n")
    proj.write("b.py", "b\n")
    res = push(engine, proj, dry_run=True)
    assert res["dry_run"] is True and sorted(res["send"]) == [".remote-dev.toml", "a.py", "b.py"]
    assert not proj.remote_root.exists()
    assert not events(engine, "RemoteDevPushDone")
    push(engine, proj)
    proj.write("a.py", "a2\n")
    proj.remote("b.py").write_text("remote\n")
    proj.write("b.py", "b2\n")
    proj.write("c.py", "c\n")
    (proj.root / ".remote-dev.toml").touch()  # touched, same content: not sent
    before = {p: proj.remote(p).read_bytes() for p in remote_files(proj)}
    res = push(engine, proj, dry_run=True)
    assert sorted(res["send"]) == ["a.py", "c.py"] and res["conflicts"] == ["b.py"]
    (proj.root / "a.py").unlink()
    res = push(engine, proj, dry_run=True)
    assert res["delete"] == ["a.py"]
    assert {p: proj.remote(p).read_bytes() for p in remote_files(proj)} == before
    # and the real push does what the preview said
    res = push(engine, proj)
    assert res["files"] == 1 and res["deleted"] == 1 and res["conflicts"] == ["b.py"]


def cli_without_root_reads(proj, state, *args):
    """remote-dev as a user who cannot read a mode-000 file: as root, without the
    capabilities that let root read anything (the tests run as root here)."""
    exe = str(Path(sys.executable).parent / "remote-dev")
    argv = [exe, "-C", str(proj.root), *args]
    if os.geteuid() == 0:
        setpriv = shutil.which("setpriv")
        assert setpriv, "setpriv (util-linux) is needed to drop root's read-anything capabilities"
        argv = [setpriv, "--inh-caps=-all", "--bounding-set", "-dac_override,-dac_read_search", "--", *argv]
    return subprocess.run(argv, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "XDG_STATE_HOME": str(state)})


def test_dry_run_and_push_say_why_files_are_skipped(make_project, isolated_state):
    proj = make_project(config_extra="[sync]\nmax_file_size = 1000\n")
    proj.write("small.py", "x\n")
    proj.write("weights.bin", b"\0" * 5000)
    proj.write("locked.py", "secret\n", mode=0o000)
    out = cli_without_root_reads(proj, isolated_state, "--json", "push", "--dry-run")
    assert out.returncode == 0 and "Traceback" not in out.stderr, out.stderr
    res = json.loads(out.stdout)
    assert sorted(res["send"]) == [".remote-dev.toml", "small.py"]
    skipped = sorted(res["skipped"], key=lambda s: s["path"])
    assert skipped == [{"path": "locked.py", "size": 7, "reason": "cannot read: Permission denied"},
                       {"path": "weights.bin", "size": 5000, "reason": "over sync.max_file_size (1.0 KB)"}]
    assert not proj.remote_root.exists()
    # as a person reads it
    text = cli_without_root_reads(proj, isolated_state, "push", "--dry-run").stdout
    assert "skipped (2)" in text and "  locked.py: cannot read: Permission denied" in text
    assert "  weights.bin: over sync.max_file_size (1.0 KB)" in text
    # the real push skips the same files for the same reasons, and says so
    out = cli_without_root_reads(proj, isolated_state, "push")
    assert out.returncode == 0 and "Traceback" not in out.stderr, out.stderr
    said = out.stdout + out.stderr
    assert "locked.py (cannot read: Permission denied)" in said and "weights.bin (5.0 KB)" in said
    assert remote_files(proj) == {".remote-dev.toml", "small.py"}
    out = cli_without_root_reads(proj, isolated_state, "--json", "push")
    res = json.loads(out.stdout)
    assert sorted(res["skipped"], key=lambda s: s["path"]) == skipped and res["errors"] == []


# --------------------------------------------------------------------------- the watcher


def same_as_local(proj, expected):
    """The remote holds exactly the expected paths, each as the local one: content (or a
    symlink's target) and mode."""
    assert remote_files(proj) == expected
    for rel in expected:
        local, remote = proj.root / rel, proj.remote(rel)
        if os.path.islink(local):
            assert os.readlink(remote) == os.readlink(local), rel
        else:
            assert remote.read_bytes() == local.read_bytes(), rel
            assert os.stat(remote).st_mode & 0o777 == os.stat(local).st_mode & 0o777, rel


@pytest.mark.parametrize("backend", ["inotify", "watchdog"])
def test_tree_pushes_follow_what_changed(engine, make_project, monkeypatch, backend):
    """After the first push, tree pushes look only at what the watcher saw change (inotify_simple,
    or watchdog's observer -- Linux's inotify one here, what FSEvents is on macOS); whatever
    the change, the remote ends up as a whole-tree push would leave it."""
    import remote_dev.sync.scan as scan_mod
    import remote_dev.sync.watch as watch_mod

    monkeypatch.setenv(watch_mod.WATCHER_ENV, backend)

    calls = {"git": 0}
    orig = scan_mod.git_listing_start

    def counting(root, paths=None, which=("-c", "-o")):
        calls["git"] += 1
        return orig(root, paths, which)
    monkeypatch.setattr(scan_mod, "git_listing_start", counting)
    proj = make_project(git=True)
    proj.write(".gitignore", "*.tmp\n")
    proj.write("a.py", "a\n")
    proj.write("pkg/b.py", "b\n")
    proj.write("pkg/sub/c.py", "c\n")
    proj.write("x.tmp", "ignored for now\n")
    proj.write("docs/only.tmp", "a folder with nothing listed in it\n")
    push(engine, proj)
    scanner = sync_state(engine.projects[proj.root.resolve()]).scanner
    assert type(scanner.watcher).__name__ == {"inotify": "Watcher", "watchdog": "WatchdogWatcher"}[backend]

    def check():
        res = push(engine, proj)
        res["git_runs"] = calls["git"]
        assert res["errors"] == []
        same_as_local(proj, set(git_listing(proj.root)))
        return res

    n = calls["git"]
    res = check()
    assert res["files"] == 0 and res["git_runs"] == n  # nothing changed: not even git runs
    proj.write("a.py", "a2\n")
    proj.write("docs/guide.md", "appeared where nothing was listed\n")
    proj.write("new/deep/er/d.py", "d\n")
    (proj.root / "pkg/sub/c.py").unlink()
    os.chmod(proj.root / "pkg/b.py", 0o700)
    os.symlink("a.py", proj.root / "alias.py")
    proj.write("editor.swp~", "x")
    (proj.root / "editor.swp~").unlink()  # here and gone between two pushes
    res = check()
    assert res["files"] == 5 and res["deleted"] == 1
    shutil.rmtree(proj.root / "new")
    proj.write("pkg/sub/e.py", "e\n")
    assert check()["deleted"] == 1
    os.rename(proj.root / "pkg", proj.root / "pkg2")  # a folder moved: a whole-tree scan
    check()
    proj.write(".gitignore", "")  # ignore rules changed: a whole-tree scan
    assert "x.tmp" in {*check()["conflicts"], *remote_files(proj)}
    proj.write(".gitignore", "*.tmp\n")
    (proj.root / "x.tmp").unlink()  # ignored again and gone here: gone there too
    (proj.root / "docs/only.tmp").unlink()
    proj.write("y.tmp", "forced\n")
    check()
    assert not proj.remote("y.tmp").exists()
    git(proj.root, "add", "-f", "y.tmp")  # the index changed: git's answer did too
    check()
    assert proj.remote("y.tmp").read_text() == "forced\n"
    # pushing one path: no git run while the rules stay; a new rule is seen at once
    proj.write("late.py", "v1\n")
    check()
    n = calls["git"]
    proj.write("late.py", "v2\n")
    assert push(engine, proj, paths=[str(proj.root / "late.py")])["files"] == 1 and calls["git"] == n
    proj.write(".gitignore", "*.tmp\nlate.py\n")
    proj.write("late.py", "v3\n")
    assert push(engine, proj, paths=[str(proj.root / "late.py")])["files"] == 0
    assert proj.remote("late.py").read_text() == "v2\n"
    (proj.root / "late.py").unlink()
    # a conflict is reported again on the next push, though nothing changed here since
    proj.remote("a.py").write_text("remote edit\n")
    proj.write("a.py", "a3\n")
    assert push(engine, proj)["conflicts"] == ["a.py"]
    assert push(engine, proj)["conflicts"] == ["a.py"]
    assert push(engine, proj, force=True)["conflicts"] == []
    check()


def test_watchdog_hands_over_every_change_made_before_take(tmp_path):
    """watchdog's events pass its threads: take() waits for a barrier event (the root's
    times set to what they are) that comes after every earlier one, so a change made just
    before a push is never left for the next.  The root's mtime stays as it was."""
    from remote_dev.sync.watch import WatchdogWatcher

    (tmp_path / "pkg").mkdir()
    mtime = os.stat(tmp_path).st_mtime_ns
    w = WatchdogWatcher(tmp_path)
    try:
        assert w.take() == []
        for i in range(30):
            (tmp_path / "pkg" / f"f{i % 3}.py").write_text(f"{i}\n")
            os.chmod(tmp_path / "pkg" / f"f{i % 3}.py", 0o600 + (i % 2) * 0o100)
            assert w.take() == [f"pkg/f{i % 3}.py"]
        (tmp_path / "pkg" / "f0.py").unlink()
        os.rename(tmp_path / "pkg" / "f1.py", tmp_path / "pkg" / "g.py")
        assert w.take() == ["pkg/f0.py", "pkg/f1.py", "pkg/g.py"]
        (tmp_path / ".git").mkdir()
        (tmp_path / ".git" / "index").write_text("x")
        assert w.take() == [] and w.valid
        assert os.stat(tmp_path).st_mtime_ns != mtime   # (entries came: the kernel's doing)
        st = os.stat(tmp_path)
        w.take()
        assert os.stat(tmp_path).st_mtime_ns == st.st_mtime_ns
    finally:
        w.close()
    assert not w.valid


def test_what_changes_while_folders_are_not_yet_watched_is_looked_at_again(tmp_path, monkeypatch):
    """A whole-tree scan watches the tree's folders after the scan, in a thread; what
    appeared, changed or went away before its folder's watch was in place (after the scan
    stat'ed it) is named by the next changes(): a listed file through its ctime (even when
    its folder's entries did not change), a folder's entries through its mtime and their
    ctimes.  Folders watched before the scan began are not looked at again: their news
    are inotify events."""
    monkeypatch.setenv("REMOTE_DEV_WATCHER", "inotify")   # its own watches, placed after the scan
    import time

    from remote_dev.sync.scan import MTIME_SLACK_NS, Scanner

    root = tmp_path / "tree"
    for rel in ("a.py", "pkg/b.py", "pkg/c.py", "lib/d.py", "empty/nothing-listed/x.tmp"):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text("x\n")
    (root / ".gitignore").write_text("*.tmp\n")
    time.sleep(2 * MTIME_SLACK_NS / 1e9)   # older than the scan: not looked at again
    sc = Scanner(root)
    try:
        listed = list(sc.scan())
        assert sc.watcher.dirs == {""}    # the others come after the scan
        sc.settle()
        assert {"", "pkg", "lib", "empty", "empty/nothing-listed"} <= sc.watcher.dirs
        assert sc.changes() == []
        # the race, replayed: the scan began at `since`; meanwhile, unwatched, pkg's entries
        # changed, and lib/d.py was rewritten in place (lib's entries did not change)
        since = time.time_ns() - MTIME_SLACK_NS
        time.sleep(0.06)
        (root / "pkg/new.py").write_text("new\n")
        (root / "pkg/c.py").unlink()
        (root / "pkg/b.py").write_text("changed\n")
        with open(root / "lib/d.py", "r+") as f:
            f.write("y")
        sc.watcher.reset()   # as if the watches came after these
        sc._watch_rest(sc.watcher, since, listed, {""})
        assert sc.changes() == ["lib/d.py", "pkg/b.py", "pkg/c.py", "pkg/new.py"]
        # what was watched before the scan began is not looked at again
        with open(root / "lib/d.py", "r+") as f:
            f.write("z")
        sc.watcher.reset()
        sc._watch_rest(sc.watcher, since, listed, set(sc.watcher.dirs))
        assert sc.changes() == []
        # files and folders older than the scan cost nothing
        listed = list(sc.scan())
        sc.settle()
        assert sc.changes() == []
        sc._watch_rest(sc.watcher, time.time_ns(), listed, {""})
        assert sc.changes() == []
        # a file appearing in a folder with nothing listed, after the scan: seen
        (root / "empty/nothing-listed/new.py").write_text("seen\n")
        assert sc.changes() == ["empty/nothing-listed/new.py"]
    finally:
        sc.close()


# --------------------------------------------------------------------------- the agent refuses


def test_agent_refuses_paths_outside_the_root(engine, make_project, tmp_path):
    proj = make_project()
    proj.write("a.py", "a\n")
    push(engine, proj)
    root = str(proj.remote_root)
    outside = tmp_path / "remote" / "elsewhere"
    outside.mkdir()
    os.symlink(str(outside), proj.remote("linkdir"))
    os.symlink(str(outside / "f.txt"), proj.remote("linkfile"))
    (outside / "f.txt").write_text("outside\n")

    def w(path):
        return ["w", path, None, True, None, 0o644, b"evil\n"]
    answers = agent_call(engine, proj, "push", root, [
        w("../escaped.txt"), w("/tmp/abs.txt"), w("linkdir/x.txt"), w("a/../../x.txt"), w("./a.py"),
        w(""), ["l", "../l", None, True, None, None, "/etc"], ["d", "../a.py", None, True],
        ["d", "linkdir/f.txt", None, True],
    ])
    assert [a[0] for a in answers] == ["error"] * 9, answers
    assert "refused" in answers[0][1] and "refused" in answers[1][1] and "symlink" in answers[2][1]
    assert not (tmp_path / "remote" / "escaped.txt").exists() and not Path("/tmp/abs.txt").exists()
    assert sorted(os.listdir(outside)) == ["f.txt"] and (outside / "f.txt").read_text() == "outside\n"
    # old-style map ops get the same checks
    answers = agent_call(engine, proj, "push", root, [{"op": "w", "path": "../m.txt", "data": b"x", "force": True}])
    assert answers[0][0] == "error" and not (tmp_path / "remote" / "m.txt").exists()
    for method, params in (("read", (root, "linkfile", 0, 100)), ("read", (root, "../x", 0, 10)),
                           ("read", (root, "linkdir/f.txt", 0, 100)), ("stage", (root, "../big.bin")),
                           ("stage", (root, "linkdir/big.bin"))):
        with pytest.raises(AgentCallError, match="refused"):
            agent_call(engine, proj, method, *params)
    assert sorted(os.listdir(outside)) == ["f.txt"]
    # writing over a remote symlink replaces the link, never its target
    answers = agent_call(engine, proj, "push", root, [w("linkfile")])
    assert answers[0][0] == "ok" and (outside / "f.txt").read_text() == "outside\n"
    assert proj.remote("linkfile").read_text() == "evil\n" and not os.path.islink(proj.remote("linkfile"))
    # a staged file that does not match what was announced is not written
    token = agent_call(engine, proj, "stage", root, "big.bin")
    agent_call(engine, proj, "append", token, b"half")
    answers = agent_call(engine, proj, "push", root, [["s", "big.bin", None, True, "0" * 32, 0o644, token]])
    assert answers[0][0] == "error" and not proj.remote("big.bin").exists()
    assert temps(proj.remote_root) == []


# --------------------------------------------------------------------------- cut connections


def agent_pid(engine, proj):
    return on_engine(engine, proj, lambda sess: _pid(sess))


async def _pid(sess):
    await sess.ensure()
    return sess.hello["pid"]


def ppid(pid):
    with open(f"/proc/{pid}/stat") as f:
        return int(f.read().rsplit(")", 1)[1].split()[1])


def cut_after(monkeypatch, method, count, cut):
    """Cut the connection right after the count-th request of this method is sent."""
    seen = {"n": 0}
    orig = rpc.AgentChannel.send

    def send(self, m, *params):
        fut = orig(self, m, *params)
        if m == method:
            seen["n"] += 1
            if seen["n"] == count:
                cut()
        return fut
    monkeypatch.setattr(rpc.AgentChannel, "send", send)
    return seen


def assert_remote_whole(proj):
    """Every remote file is complete (equals the local one); no temporary file is left."""
    assert temps(proj.remote_root) == []
    for rel in remote_files(proj):
        assert proj.remote(rel).read_bytes() == (proj.root / rel).read_bytes(), rel


def test_killed_ssh_session_mid_push_leaves_no_partial_file(engine, make_project, monkeypatch):
    proj = make_project()
    blob = os.urandom(48 << 10)
    for i in range(400):
        proj.write(f"pkg{i % 7}/f{i}.bin", blob[i:] + blob[:i])
    import remote_dev.sync.transfer as sync_mod

    monkeypatch.setattr(sync_mod, "EXTRA_CHANNEL_BYTES", 1 << 20)  # more channels, cut as well
    monkeypatch.setattr(sync_mod, "PROGRESS_AFTER", 0.0)
    pid = agent_pid(engine, proj)
    session = ppid(pid)  # sshd's process for this session: the agent was exec'd by it
    cut_after(monkeypatch, "push_packed", 3, lambda: os.kill(session, signal.SIGKILL))
    with pytest.raises(RemoteDevError, match="interrupted"):
        push(engine, proj)
    wait_for(lambda: not os.path.exists(f"/proc/{pid}"), 20, what="the old agent to exit")
    assert_remote_whole(proj)
    assert len(remote_files(proj)) < 401
    monkeypatch.undo()
    monkeypatch.setattr(sync_mod, "EXTRA_CHANNEL_BYTES", 1 << 20)
    monkeypatch.setattr(sync_mod, "PROGRESS_AFTER", 0.0)
    res = push(engine, proj)
    assert res["conflicts"] == [] and res["errors"] == []
    assert len(remote_files(proj)) == 401
    assert_remote_whole(proj)
    progress = [p for k, p in engine.reports if k == "progress"]
    assert progress and progress[-1]["files"] == progress[-1]["total_files"] == res["files"]
    assert progress[-1]["bytes"] == progress[-1]["total_bytes"] > 0


def test_aborted_connection_mid_large_file_leaves_nothing_half_written(engine, make_project, monkeypatch):
    proj = make_project()
    proj.write("small.txt", "small\n")
    big = os.urandom(1 << 20) * 20  # 20 MB: staged in chunks
    proj.write("model/weights.bin", big)
    push(engine, proj)
    proj.write("model/weights.bin", big[::-1])
    pid = agent_pid(engine, proj)

    def abort():
        sess = engine.project(ctx(proj)).session()
        sess.conn.abort()
    cut_after(monkeypatch, "append", 5, abort)
    with pytest.raises(RemoteDevError, match="interrupted"):
        push(engine, proj)
    wait_for(lambda: not os.path.exists(f"/proc/{pid}"), 20, what="the old agent to exit")
    assert temps(proj.remote_root) == []
    assert proj.remote("model/weights.bin").read_bytes() == big  # the old content, whole
    monkeypatch.undo()
    res = push(engine, proj)
    assert res["files"] == 1 and res["conflicts"] == []
    assert proj.remote("model/weights.bin").read_bytes() == big[::-1]
    assert temps(proj.remote_root) == []


# --------------------------------------------------------------------------- pull


def test_pull_fetches_conflicts_and_bang(engine, make_project):
    proj = make_project(config_extra='[sync]\npull = ["results/"]\n')
    proj.write("main.py", "x\n")
    push(engine, proj)
    (proj.remote_root / "results/sub").mkdir(parents=True)
    proj.remote("results/a.txt").write_text("a1\n")
    proj.remote("results/sub/b.csv").write_text("b1\n")
    os.chmod(proj.remote("results/sub/b.csv"), 0o640)
    os.symlink("a.txt", proj.remote("results/latest"))
    res = pull(engine, proj)
    assert res["files"] == 3 and res["conflicts"] == []
    assert (proj.root / "results/a.txt").read_text() == "a1\n"
    assert os.stat(proj.root / "results/sub/b.csv").st_mode & 0o777 == 0o640
    assert os.readlink(proj.root / "results/latest") == "a.txt"
    done = events(engine, "RemoteDevPullDone")[-1]
    assert done["files"] == 3 and sorted(done["pulled"]) == sorted(
        str(proj.root / p) for p in ("results/a.txt", "results/sub/b.csv", "results/latest"))
    assert pull(engine, proj)["files"] == 0
    # both sides changed: the local edit is kept
    proj.remote("results/a.txt").write_text("a2\n")
    proj.write("results/a.txt", "local edit\n")
    res = pull(engine, proj)
    assert res["conflicts"] == ["results/a.txt"]
    assert (proj.root / "results/a.txt").read_text() == "local edit\n"
    assert ":RemotePull!" in messages(engine, "warn")[-1]
    # an unsaved buffer is never overwritten, not even with !
    res = pull(engine, proj, force=True, modified=[str(proj.root / "results/a.txt")])
    assert res["conflicts"] == ["results/a.txt"] and "unsaved" in res["conflict_details"][0]["reason"]
    assert (proj.root / "results/a.txt").read_text() == "local edit\n"
    res = pull(engine, proj, force=True)
    assert res["files"] == 1 and (proj.root / "results/a.txt").read_text() == "a2\n"
    # explicit paths; a local file that already has the remote content is no conflict
    proj.remote("notes.md").write_text("n\n")
    proj.write("notes.md", "n\n")
    res = pull(engine, proj, paths=[str(proj.root / "notes.md")])
    assert res["conflicts"] == [] and res["errors"] == []
    assert temps(proj.root) == []


def test_pull_never_writes_through_a_local_symlink(engine, make_project, tmp_path):
    outside = tmp_path / "local-outside"
    outside.mkdir()
    proj = make_project(config_extra='[sync]\npull = ["results/"]\n')
    proj.write("main.py", "x\n")
    os.symlink(str(outside), proj.root / "results")
    (proj.remote_root / "results").mkdir(parents=True)
    proj.remote("results/a.txt").write_text("a\n")
    res = pull(engine, proj)
    assert res["files"] == 0 and res["errors"] and "symlink" in res["errors"][0]["reason"]
    assert os.listdir(outside) == []


def test_pull_with_nothing_to_pull_says_how(engine, make_project):
    proj = make_project()
    proj.write("main.py", "")
    with pytest.raises(RemoteDevError, match="sync.pull is empty"):
        pull(engine, proj)


# --------------------------------------------------------------------------- push on save


def test_save_pushes_one_file_and_reports_a_failing_remote_once(engine, make_project, tmp_path, sshd):
    proj = make_project(config_extra="[sync]\npush_on_save = true\n")
    a = proj.write("a.py", "a1\n")
    proj.write("b.py", "b\n")
    res = engine.call_sync("save", {"file": str(a)}, {}, timeout=60)
    assert res["files"] == 1 and remote_files(proj) == {"a.py"}
    assert not messages(engine)  # quiet when all went well
    # a remote that refuses us: one message for many saves, then one when it works again
    kh = tmp_path / "kh"
    kh.write_text("")
    broken = make_project(name="broken", config_extra="[sync]\npush_on_save = true\n",
                          target={"known_hosts": str(kh)})
    f = broken.write("x.py", "x\n")
    for _ in range(4):
        engine.call_sync("save", {"file": str(f)}, {}, timeout=60)
    errors = [m for m in messages(engine, "error") if "push on save failed" in m]
    assert len(errors) == 1 and "host key" in errors[0]
    kh.write_text(sshd.known_hosts.read_text())
    engine.call_sync("save", {"file": str(f)}, {}, timeout=60)
    assert broken.remote("x.py").read_text() == "x\n"
    assert any("works again" in m for m in messages(engine))
    # push_on_save off: nothing happens
    off = make_project(name="off")
    g = off.write("g.py", "g\n")
    assert engine.call_sync("save", {"file": str(g)}, {}, timeout=60) is None
    assert not off.remote_root.exists()


def test_saves_in_quick_succession_coalesce(engine, make_project):
    """Saves arriving while a push on save runs are queued into one next push (which reads
    the newest content), not one push each.  The 20 saves are handed to the engine's loop
    together, so the test does not depend on how fast a push is."""
    import asyncio

    proj = make_project(config_extra="[sync]\npush_on_save = true\n")
    a = proj.write("a.py", "v0\n")
    engine.call_sync("save", {"file": str(a)}, {}, timeout=60)
    before = len(events(engine, "RemoteDevPushDone"))

    async def burst() -> list:
        saves = []
        for i in range(1, 21):
            a.write_text(f"v{i}\n")
            saves.append(asyncio.ensure_future(engine.actions["save"](engine, {"file": str(a)})))
        return await asyncio.gather(*saves)
    answers = engine.submit(burst()).result(60)
    assert proj.remote("a.py").read_text() == "v20\n"
    assert sum(1 for r in answers if r == {"queued": True}) == 19
    pushes = events(engine, "RemoteDevPushDone")[before:]
    assert len(pushes) <= 2, pushes  # the running push, then one for every save queued meanwhile


# --------------------------------------------------------------------------- records


def test_a_big_push_folds_its_journal_after_it(engine, make_project):
    """A push's records go to the journal when it ends; one that grew it past the
    threshold has it folded into a snapshot right after (under the sync lock), so the
    push does not wait for that."""
    proj = make_project()
    for i in range(4200):
        proj.write(f"many/f{i}.txt", f"{i}\n")
    res = push(engine, proj)
    assert res["files"] >= 4200 and not res["errors"]
    snaps = wait_for(lambda: [p for p in Path(os.environ["XDG_STATE_HOME"]).rglob("sync-*.msgpack")
                              if not p.with_name(p.name + ".journal").exists()], what="the snapshot")
    assert len(snaps) == 1
    assert len(SyncRecords(snaps[0]).data) == res["files"]


def test_records_journal_and_compaction(tmp_path):
    path = tmp_path / "rec.msgpack"
    r = SyncRecords(path)
    r.set("a", Record("f", 1, 2, "h", 1, 2, 0o644, "push"))
    r.set("b", Record("f", 1, 2, "h", 1, 2, 0o644, "push"))
    r.save()
    r.drop("a")
    r.save()
    assert SyncRecords(path).data == {"b": Record("f", 1, 2, "h", 1, 2, 0o644, "push")}
    with open(r.journal, "ab") as f:
        f.write(b"\x81\xa1c\x98")  # a torn last entry (a crash while appending)
    assert SyncRecords(path).data == {"b": Record("f", 1, 2, "h", 1, 2, 0o644, "push")}
    big = SyncRecords(path)
    for i in range(5000):
        big.set(f"f{i}", Record("f", i, i, "h", i, i, 0o644, "push"))
    big.save()  # folded into the snapshot
    assert not big.journal.exists()
    assert len(SyncRecords(path).data) == 5001
