"""Sync end to end through a real headless Neovim and the real sshd: push on :write (and
rapid saves coalescing), pull reloading buffers and never clobbering unsaved ones,
conflicts in quickfix, the --dry-run preview, and Neovim answering during a big push."""
from __future__ import annotations

import os
import time

from conftest import wait_for


def open_project(nvim, proj, rel):
    nvim.open(proj.root, proj.root / rel)


def set_lines(nvim, lines):
    nvim.current.buffer[:] = lines


def test_push_on_save_and_rapid_saves_coalesce(nvim, make_project):
    proj = make_project(config_extra="[sync]\npush_on_save = true\n")
    proj.write("main.py", "print('v0')\n")
    proj.write("other.py", "untouched\n")
    open_project(nvim, proj, "main.py")
    nvim.start_host()
    set_lines(nvim, ["print('v1')"])
    nvim.command("write")
    done = nvim.wait_event("RemoteDevPushDone", 30)
    assert done["files"] == 1 and done["conflicts"] == []
    assert proj.remote("main.py").read_text() == "print('v1')\n"
    assert not proj.remote("other.py").exists()  # only the saved file
    # twenty saves as fast as Neovim takes them: the remote ends with the last one
    for i in range(2, 22):
        set_lines(nvim, [f"print('v{i}')"])
        nvim.command("write")
    wait_for(lambda: proj.remote("main.py").read_text() == "print('v21')\n", 30, what="the last save to arrive")
    # every push reads the newest content, so a later one can only confirm it
    assert len(nvim.events("RemoteDevPushDone")) <= 21
    assert not [m for m in nvim.messages() if "failed" in m]


def test_pull_reloads_open_buffer_and_spares_an_unsaved_one(nvim, make_project):
    proj = make_project(config_extra='[sync]\npull = ["results/"]\n')
    proj.write("main.py", "x\n")
    (proj.remote_root / "results").mkdir(parents=True)
    proj.remote("results/a.txt").write_text("first\n")
    proj.remote("results/b.txt").write_text("b first\n")
    open_project(nvim, proj, "main.py")
    nvim.command("RemotePull")
    nvim.wait_event("RemoteDevPullDone", 30)
    assert (proj.root / "results/a.txt").read_text() == "first\n"
    nvim.command(f"edit {proj.root / 'results/a.txt'}")
    a_buf = nvim.current.buffer
    assert a_buf[:] == ["first"]
    nvim.command(f"split {proj.root / 'results/b.txt'}")
    b_buf = nvim.current.buffer
    b_buf[:] = ["typed, not saved"]
    assert nvim.eval("&modified") == 1
    proj.remote("results/a.txt").write_text("second\n")
    proj.remote("results/b.txt").write_text("b second\n")
    nvim.command("RemotePull!")
    done = nvim.wait_event("RemoteDevPullDone", 30, pred=lambda d: d["files"] == 1)
    assert done["conflicts"] == ["results/b.txt"]
    wait_for(lambda: a_buf[:] == ["second"], 10, what="the open buffer to reload")
    assert b_buf[:] == ["typed, not saved"] and nvim.eval(f"getbufvar({b_buf.number}, '&modified')") == 1
    assert (proj.root / "results/b.txt").read_text() == "b first\n"
    qf = wait_for(lambda: (q := nvim.call("getqflist", {"title": 1, "items": 1})) and q["items"] and q, 10)
    assert "pull" in qf["title"] and len(qf["items"]) == 1
    assert nvim.call("bufname", qf["items"][0]["bufnr"]).endswith("results/b.txt")
    assert "unsaved" in qf["items"][0]["text"]


def test_conflict_lands_in_quickfix_and_bang_overwrites(nvim, make_project):
    proj = make_project()
    proj.write("main.py", "v1\n")
    open_project(nvim, proj, "main.py")
    nvim.command("RemotePush")
    nvim.wait_event("RemoteDevPushDone", 30)
    proj.remote("main.py").write_text("edited remotely\n")
    set_lines(nvim, ["v2"])
    nvim.command("write")  # push_on_save is off: nothing goes
    nvim.command("RemotePush")
    done = nvim.wait_event("RemoteDevPushDone", 30, pred=lambda d: d["conflicts"])
    assert done["conflicts"] == ["main.py"]
    assert proj.remote("main.py").read_text() == "edited remotely\n"
    qf = wait_for(lambda: (q := nvim.call("getqflist", {"title": 1, "items": 1})) and q["items"] and q, 10)
    assert "RemotePush!" in qf["title"]
    assert nvim.call("fnamemodify", nvim.call("bufname", qf["items"][0]["bufnr"]), ":p") == str(proj.root / "main.py")
    assert "changed on the remote" in qf["items"][0]["text"]
    assert any("conflict" in m and ":RemotePush!" in m for m in nvim.messages())
    n = len(nvim.events("RemoteDevPushDone"))
    nvim.command("RemotePush!")
    wait_for(lambda: len(nvim.events("RemoteDevPushDone")) > n, 30)
    assert nvim.events("RemoteDevPushDone")[-1]["data"]["conflicts"] == []
    assert proj.remote("main.py").read_text() == "v2\n"
    # the stale conflict list is emptied
    wait_for(lambda: nvim.call("getqflist", {"items": 1})["items"] == [], 10)


def test_dry_run_preview_in_a_scratch_buffer(nvim, make_project):
    proj = make_project()
    proj.write("main.py", "x\n")
    proj.write("pkg/mod.py", "y\n")
    open_project(nvim, proj, "main.py")
    nvim.command("RemotePush --dry-run")
    buf = wait_for(lambda: next((b for b in nvim.buffers if b.name == "remote-dev://push-preview"), None),
                   30, 0.05, what="the preview buffer")
    lines = buf[:]
    assert "nothing was written" in lines[0]
    assert "send (3)" in lines and "  main.py" in lines and "  pkg/mod.py" in lines
    assert nvim.eval(f"getbufvar({buf.number}, '&buftype')") == "nofile"
    assert not proj.remote_root.exists()
    assert not nvim.events("RemoteDevPushDone")


def test_dry_run_shows_skipped_files_with_their_reason(nvim, make_project):
    proj = make_project(config_extra="[sync]\nmax_file_size = 1000\n")
    proj.write("main.py", "x\n")
    proj.write("big.bin", os.urandom(5000))
    open_project(nvim, proj, "main.py")
    nvim.command("RemotePush --dry-run")
    buf = wait_for(lambda: next((b for b in nvim.buffers if b.name == "remote-dev://push-preview"), None),
                   30, 0.05, what="the preview buffer")
    lines = buf[:]
    assert "  main.py" in lines and "  big.bin" not in lines
    skipped = lines[lines.index("skipped (1)") + 1]
    assert skipped.startswith("  big.bin: ") and "over sync.max_file_size" in skipped, lines


def test_preview_shows_the_hosts_reason_for_each_skipped_file(nvim):
    # The host's answer to a dry run, as its contract says (sync.max_file_size, unreadable files).
    nvim.exec_lua("""require('remote_dev.sync').preview({ target = 'gpu', send = { 'a.py' }, delete = {},
        conflict_details = {}, skipped = {
          { path = 'model.ckpt', size = 250000000, reason = 'over sync.max_file_size (100.0 MB)' },
          { path = 'secret.key', reason = 'unreadable: Permission denied' },
          { path = 'old.bin', size = 2500000 } } })""")
    lines = nvim.current.buffer[:]
    at = lines.index("skipped (3)")
    assert lines[at + 1:at + 4] == ["  model.ckpt: over sync.max_file_size (100.0 MB)",
                                    "  secret.key: unreadable: Permission denied",
                                    "  old.bin: 2.5 MB, over sync.max_file_size"]
    assert lines[lines.index("send (1)") + 1] == "  a.py"


def test_neovim_answers_during_a_large_initial_push(nvim, make_project):
    proj = make_project()
    blob = os.urandom(1 << 20)
    for i in range(3000):
        off = (i * 7919) % (len(blob) - 12000)
        proj.write(f"pkg{i % 40}/mod{i}.py", blob[off:off + 4000 + i % 8000])
    for i in range(3):
        proj.write(f"data/chunk{i}.bin", os.urandom(10 << 20))  # staged in chunks
    open_project(nvim, proj, "pkg0/mod0.py")
    nvim.start_host()
    nvim.command("RemoteStatus")
    wait_for(lambda: (s := nvim.exec_lua("return require('remote_dev').status()")) and s.get("connected"), 30, 0.05)
    nvim.command("RemotePush")
    worst = 0.0
    samples = 0
    while not nvim.events("RemoteDevPushDone"):
        t0 = time.perf_counter()
        assert nvim.eval("1 + 1") == 2
        worst = max(worst, time.perf_counter() - t0)
        samples += 1
        time.sleep(0.005)
    done = nvim.events("RemoteDevPushDone")[0]["data"]
    print(f"worst eval {worst * 1000:.1f} ms over {samples} evals; push {done['ms']:.0f} ms")
    assert done["files"] == 3004 and done["conflicts"] == []
    assert samples > 20, "the push was too quick to measure anything"
    # Not a performance target (bench/sync_bench.py measures the worst answer against 50 ms):
    # a bound that only something blocking Neovim's loop during the push can break, however
    # busy the machine is.
    assert worst < 0.5, f"Neovim took {worst * 1000:.0f} ms to answer during the push: something blocks it"
    assert proj.remote("data/chunk2.bin").read_bytes() == (proj.root / "data/chunk2.bin").read_bytes()


def test_a_new_session_restores_a_wiped_remote_and_a_hand_edit_is_a_conflict(nvim, make_project):
    """Issue 12, in Neovim: session A pushed (here: the test's own engine); the remote tree
    is wiped and the same files written again here; session B's :RemotePush restores them
    rather than trusting its records.  A remote file then edited by hand, unchanged here,
    is a conflict in quickfix and in the dry run, and only :RemotePush! overwrites it."""
    from remote_dev.actions import ACTIONS
    from remote_dev.engine import Engine

    proj = make_project()
    files = {"main.py": "print('a')\n", "pkg/b.py": "b = 1\n"}
    for rel, text in files.items():
        proj.write(rel, text)
    session_a = Engine(actions=ACTIONS)
    try:
        assert session_a.call_sync("push", {"cwd": str(proj.root)}, {}, timeout=60)["files"] == 3
    finally:
        session_a.close()
    import shutil
    shutil.rmtree(proj.remote_root)
    for rel, text in files.items():
        proj.write(rel, text)
    open_project(nvim, proj, "main.py")
    nvim.command("RemotePush")
    done = nvim.wait_event("RemoteDevPushDone", 30)
    assert done["files"] == 3 and done["conflicts"] == []
    assert all(proj.remote(rel).read_text() == text for rel, text in files.items())
    proj.remote("pkg/b.py").write_text("b = 2  # edited on the remote\n")
    nvim.command("RemotePush --dry-run")
    buf = wait_for(lambda: next((b for b in nvim.buffers if b.name == "remote-dev://push-preview"), None),
                   30, 0.05, what="the preview buffer")
    wait_for(lambda: any("pkg/b.py" in line for line in buf[:]), 10, what="the conflict in the preview")
    nvim.command("RemotePush")
    done = nvim.wait_event("RemoteDevPushDone", 30, pred=lambda d: d["conflicts"])
    assert done["conflicts"] == ["pkg/b.py"] and done["files"] == 0
    qf = wait_for(lambda: (q := nvim.call("getqflist", {"title": 1, "items": 1})) and q["items"] and q, 10)
    assert nvim.call("fnamemodify", nvim.call("bufname", qf["items"][0]["bufnr"]), ":p") == str(proj.root / "pkg/b.py")
    assert "changed on the remote" in qf["items"][0]["text"]
    assert proj.remote("pkg/b.py").read_text() == "b = 2  # edited on the remote\n"
    n = len(nvim.events("RemoteDevPushDone"))
    nvim.command("RemotePush!")
    wait_for(lambda: len(nvim.events("RemoteDevPushDone")) > n, 30)
    assert nvim.events("RemoteDevPushDone")[-1]["data"]["conflicts"] == []
    assert proj.remote("pkg/b.py").read_text() == "b = 1\n"
