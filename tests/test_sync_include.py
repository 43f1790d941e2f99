"""Data files .gitignore leaves out (nanoGPT ignores its input.txt): a push of a named path
says which rule leaves it out, and sync.include pushes it, on every push after, in a git
work tree and without git (the Walker), through the real sshd."""
from __future__ import annotations

import pytest

from remote_dev.errors import RemoteDevError

DATA = "data/shakespeare_char/input.txt"
GITIGNORE = "__pycache__/\ninput.txt\n*.bin\n"   # input.txt: line 2


def ctx(proj):
    return {"cwd": str(proj.root)}


def push(engine, proj, **args):
    return engine.call_sync("push", ctx(proj), args, timeout=120)


def messages(engine):
    return [p["text"] for k, p in engine.reports if k == "message"]


def nano_project(make_project, git, config_extra=""):
    proj = make_project(git=git, config_extra=config_extra)
    proj.write(".gitignore", GITIGNORE)
    proj.write("train.py", "print('train')\n")
    proj.write("data/shakespeare_char/prepare.py", "print('prepare')\n")
    proj.write(DATA, "First Citizen:\nBefore we proceed any further, hear me speak.\n")
    proj.write("data/shakespeare_char/train.bin", b"\0" * 100)
    return proj


@pytest.mark.parametrize("git", [True, False], ids=["git", "no-git"])
def test_a_named_ignored_file_says_which_rule_leaves_it_out(engine, make_project, git):
    proj = nano_project(make_project, git)
    want = {"path": DATA, "reason": "ignored by .gitignore:2 (sync.include in .remote-dev.toml pushes it)"}
    preview = push(engine, proj, paths=[DATA], dry_run=True)
    assert preview["send"] == [] and preview["skipped"] == [want]
    res = push(engine, proj, paths=[DATA])
    assert res["files"] == 0 and res["skipped"] == [want]
    assert "ignored by .gitignore:2" in messages(engine)[-1] and DATA in messages(engine)[-1]
    assert not (proj.remote_root / DATA).exists()
    # a whole-tree push says nothing of ignored files (there are many: caches, builds)
    res = push(engine, proj)
    assert res["skipped"] == [] and (proj.remote_root / "train.py").exists()


@pytest.mark.parametrize("git", [True, False], ids=["git", "no-git"])
def test_sync_include_pushes_what_gitignore_leaves_out(engine, make_project, git):
    proj = nano_project(make_project, git, '[sync]\ninclude = ["data/**/input.txt"]\n')
    res = push(engine, proj)
    assert (proj.remote_root / DATA).read_text().startswith("First Citizen")
    assert not (proj.remote_root / "data/shakespeare_char/train.bin").exists()   # still ignored
    assert res["skipped"] == []
    # it stays: the next pushes list it (a change goes, nothing deletes it)
    proj.write(DATA, "changed\n")
    push(engine, proj)
    assert (proj.remote_root / DATA).read_text() == "changed\n"
    res = push(engine, proj, paths=[DATA])
    assert res["skipped"] == [] and (proj.remote_root / DATA).exists()
    assert push(engine, proj)["deleted"] == 0 and (proj.remote_root / DATA).exists()


def test_sync_exclude_still_wins_over_include(engine, make_project):
    proj = nano_project(make_project, True, '[sync]\ninclude = ["input.txt"]\nexclude = ["data/"]\n')
    res = push(engine, proj, paths=[DATA])
    assert res["files"] == 0 and res["skipped"][0]["reason"].startswith("excluded by sync.exclude")


def test_include_must_be_strings(engine, make_project):
    proj = make_project(config_extra="[sync]\ninclude = \"input.txt\"\n")
    with pytest.raises(RemoteDevError, match=r"\.remote-dev\.toml: sync\.include: must be an array of strings"):
        push(engine, proj)
