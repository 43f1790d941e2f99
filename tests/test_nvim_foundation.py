"""End to end through a real headless Neovim: :RemoteStatus, :checkhealth, errors, and
Neovim staying responsive while a connection hangs."""
from __future__ import annotations

import socket
import time

from conftest import wait_for


def open_project(nvim, proj):
    nvim.open(proj.root, proj.root / "main.py")


def test_remote_status_shows_connection(nvim, make_project, sshd):
    proj = make_project()
    proj.write("main.py", "print('hi')\n")
    open_project(nvim, proj)
    nvim.command("RemoteStatus")
    st = wait_for(lambda: (s := nvim.exec_lua("return require('remote_dev').status()")) and s.get("connected") and s,
                  30, 0.05, what="status")
    assert st["target"] == "test"
    assert st["host"] == sshd.alias
    assert st["remote_root"] == str(proj.remote_root)
    assert st["python"].startswith("3.")
    assert st["agent"] == "1"
    assert isinstance(st["rtt_ms"], (int, float))
    msgs = wait_for(lambda: "\n".join(nvim.exec_lua("return vim.split(vim.fn.execute('messages'), '\\n')")), 5)
    assert "round trip" in msgs and "connected   yes" in msgs


def test_checkhealth_is_clean(nvim, make_project):
    proj = make_project()
    proj.write("main.py", "print('hi')\n")
    open_project(nvim, proj)
    nvim.command("checkhealth remote_dev")
    text = "\n".join(nvim.current.buffer[:])
    assert "remote_dev: local side" in text and "remote_dev: remote side" in text
    assert "OK Neovim 0.11" in text
    assert "OK remote plugin registered" in text
    assert "OK asyncssh" in text and "OK debugpy" in text
    assert "host key verified" in text
    assert "agent 1 answers" in text
    assert "ERROR" not in text, text


def test_changed_host_key_is_refused_with_a_fix(nvim, make_project, sshd, tmp_path):
    other = tmp_path / "otherkey"
    import subprocess
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other)], check=True)
    kh = tmp_path / "known_hosts_bad"
    pub = (tmp_path / "otherkey.pub").read_text().split()
    kh.write_text(f"[127.0.0.1]:{sshd.port} {pub[0]} {pub[1]}\n")
    proj = make_project(target={"known_hosts": str(kh)})
    proj.write("main.py", "")
    open_project(nvim, proj)
    nvim.command("RemoteStatus")
    err = nvim.wait_event("RemoteDevError")
    assert "REMOTE HOST KEY CHANGED" in err["message"] and "ssh-keygen -R" in err["message"]
    assert sshd.alias in err["message"]


def test_unknown_host_key_is_refused_with_a_fix(nvim, make_project, sshd, tmp_path):
    kh = tmp_path / "known_hosts_empty"
    kh.write_text("")
    proj = make_project(target={"known_hosts": str(kh)})
    proj.write("main.py", "")
    open_project(nvim, proj)
    nvim.command("RemoteStatus")
    err = nvim.wait_event("RemoteDevError")
    assert "host key is not trusted" in err["message"] and "ssh-keyscan" in err["message"]


def test_bad_config_names_file_key_and_reason(nvim, make_project):
    proj = make_project(target={"runer": "process"})
    proj.write("main.py", "")
    open_project(nvim, proj)
    nvim.command("RemoteStatus")
    err = nvim.wait_event("RemoteDevError")
    assert str(proj.root / ".remote-dev.toml") in err["message"]
    assert "targets.test.runer" in err["message"] and "unknown key" in err["message"]


def test_neovim_answers_while_connect_hangs(nvim, tmp_path, sshd):
    # A port that accepts connections and never says anything.
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(16)
    port = srv.getsockname()[1]
    root = tmp_path / "hang"
    root.mkdir()
    (root / ".remote-dev.toml").write_text(
        f'[targets.hang]\nhost = "127.0.0.1"\nport = {port}\nremote_root = "/tmp/x/hang"\n'
        f'known_hosts = "{sshd.known_hosts}"\nidentity_file = "{sshd.user_key}"\n')
    (root / "main.py").write_text("")
    nvim.command(f"cd {root}")
    nvim.command(f"edit {root / 'main.py'}")
    nvim.start_host()
    nvim.command("RemoteStatus")
    worst = 0.0
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline:
        t0 = time.perf_counter()
        assert nvim.eval("1 + 1") == 2
        worst = max(worst, time.perf_counter() - t0)
        time.sleep(0.01)
    # a blocked loop would wait out the connect timeout (seconds); 0.5 s holds on a busy machine
    assert worst < 0.5, f"Neovim took {worst * 1000:.0f} ms to answer: something blocks it"
    assert not nvim.events("RemoteDevError")  # still connecting, not failed
    srv.close()


def test_remote_status_and_the_cli_show_the_same_lines(nvim, make_project, sshd, isolated_state):
    """One renderer (status.py): :RemoteStatus and `remote-dev status` print the lines the
    host rendered, services and all; only what is measured (round trip, when the login was
    made) differs."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    proj = make_project()
    proj.write("main.py", "print('hi')\n")
    open_project(nvim, proj)
    nvim.command("RemoteStatus")
    st = wait_for(lambda: (s := nvim.exec_lua("return require('remote_dev').status()")) and s.get("connected") and s,
                  30, 0.05, what="status")

    def steady(lines):   # the measured round trip and the minute each login was made differ
        return [ln.split(", since")[0] for ln in lines if not ln.startswith("round trip")]
    msgs = wait_for(lambda: "runs        " in (m := nvim.exec_lua("return vim.fn.execute('messages')")) and m, 10)
    assert all(ln in msgs.splitlines() for ln in st["lines"] if not ln.startswith("round trip")), (msgs, st["lines"])
    exe = str(Path(sys.executable).parent / "remote-dev")
    out = subprocess.run([exe, "-C", str(proj.root), "status"], capture_output=True, text=True, timeout=60,
                         env={**os.environ, "XDG_STATE_HOME": str(isolated_state)})
    assert out.returncode == 0, out.stderr
    assert steady(out.stdout.splitlines()) == steady(st["lines"])
    assert [ln.split()[0] for ln in st["lines"]] == ["target", "host", "remote_root", "connected", "python", "agent",
                                                      "round", "last", "runs", "shells", "kernel", "notebook"]
