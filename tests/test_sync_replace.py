"""A path that changed kind between pushes (a file replaced by a folder of the same name,
a folder by a file), against the real sshd: the remote follows, whatever the push's order
of writes and deletes (sync/transfer.py sends the deletes in the way first)."""
from __future__ import annotations

import os
import shutil

import pytest
from test_sync import git, push, temps

from remote_dev.sync.reconcile import Send, in_the_way
from remote_dev.sync.scan import LocalEntry


def committed(proj):
    git(proj.root, "init", "-q")
    git(proj.root, "add", "-A")
    git(proj.root, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "t")


@pytest.mark.parametrize("in_git", [False, True])
def test_a_folder_that_replaced_a_file_of_its_name_is_pushed(engine, make_project, in_git):
    proj = make_project()
    proj.write("x", "was a file\n")
    proj.write("keep.txt", "keep\n")
    proj.write("deep/a", "a file too\n")
    if in_git:   # the listing then comes from git (and, without a watcher, so do the changes: quick.py)
        committed(proj)
    assert push(engine, proj)["errors"] == []
    os.unlink(proj.root / "x")
    proj.write("x/y", "now in a folder\n")
    os.unlink(proj.root / "deep/a")
    proj.write("deep/a/b/c.txt", "two folders deeper\n")
    res = push(engine, proj)
    assert res["errors"] == [] and res["conflicts"] == []
    assert proj.remote("x").is_dir(), str(res)
    assert proj.remote("x/y").read_text() == "now in a folder\n"
    assert proj.remote("deep/a/b/c.txt").read_text() == "two folders deeper\n"
    assert proj.remote("keep.txt").read_text() == "keep\n"
    assert temps(proj.remote_root) == []
    again = push(engine, proj)
    assert again["errors"] == [] and again["files"] == 0 and again["deleted"] == 0


@pytest.mark.parametrize("in_git", [False, True])
def test_a_file_that_replaced_a_folder_of_its_name_is_pushed(engine, make_project, in_git):
    proj = make_project()
    proj.write("x/y", "in a folder\n")
    proj.write("x/z/w", "deeper\n")
    proj.write("keep.txt", "keep\n")
    if in_git:
        committed(proj)
    assert push(engine, proj)["errors"] == []
    shutil.rmtree(proj.root / "x")
    proj.write("x", "now a file\n")
    res = push(engine, proj)
    assert res["errors"] == [] and res["conflicts"] == []
    assert proj.remote("x").is_file() and proj.remote("x").read_text() == "now a file\n"
    assert proj.remote("keep.txt").read_text() == "keep\n"
    assert temps(proj.remote_root) == []
    again = push(engine, proj)
    assert again["errors"] == [] and again["files"] == 0 and again["deleted"] == 0


def test_only_the_deletes_in_the_way_go_first():
    sends = [Send(rel, LocalEntry("f", 1, 0, 0o644), None) for rel in ("x/y", "a/b/c", "file", "xy/z")]
    deletes = ["x", "a/b", "file/old", "file/old/deeper", "x2", "xy0", "other/x/y", "a/bc"]
    assert in_the_way(sends, deletes) == (["x", "a/b", "file/old", "file/old/deeper"],
                                          ["x2", "xy0", "other/x/y", "a/bc"])
    assert in_the_way(sends, ["x2"]) == ([], ["x2"]) and in_the_way(sends, []) == ([], [])
