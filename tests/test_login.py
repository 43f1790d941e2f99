"""Two-factor login against a real OpenSSH sshd whose PAM stack is pam_google_authenticator
(tests/support/mfa.py): the key, then "Verification code:" through keyboard-interactive.
Codes come from pyotp with the secret the user's ~/.google_authenticator holds."""
from __future__ import annotations

import os
import pty
import select
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

import pytest

from conftest import events, wait_for


def mfa_project(tmp_path: Path, mfa: Any, name: str = "proj", **target: Any) -> Path:
    root = tmp_path / name
    root.mkdir()
    (root / ".remote-dev.toml").write_text(mfa.sshd.target_toml(f"~/{name}-{os.getpid()}-{time.time_ns()}", **target))
    (root / "main.py").write_text("import getpass\nprint('hello from', getpass.getuser())\n")
    return root


class Person:
    """Who sits at the front-end: answers each challenge with answer(challenge)."""

    def __init__(self, answer: Callable[[dict], list[str] | None]) -> None:
        self.answer = answer
        self.seen: list[dict] = []

    def __call__(self, challenge: dict, reply: Callable[[Any], None]) -> None:
        self.seen.append(challenge)
        reply(self.answer(challenge))


@pytest.fixture
def make_engine():
    from remote_dev.actions import ACTIONS
    from remote_dev.engine import Engine
    made = []

    def make(prompter: Any = None) -> Any:
        reports: list[tuple[str, dict]] = []
        eng = Engine(report=lambda kind, payload: reports.append((kind, payload)), actions=ACTIONS, prompter=prompter)
        eng.reports = reports  # type: ignore[attr-defined]
        made.append(eng)
        return eng
    yield make
    for eng in made:
        eng.close()


def run_and_exit(eng: Any, root: Path) -> dict:
    res = eng.call_sync("run", {"cwd": str(root)}, {"cmd": "python3 main.py"}, timeout=90)
    return wait_for(lambda: next((e for e in events(eng, "RemoteDevRunExit") if e["id"] == res["id"]), None), 30)


def output_of(eng: Any) -> list[str]:
    return [line for kind, p in eng.reports if kind == "run_output" for line in p["lines"]]


def test_code_asked_once_with_the_servers_prompt_then_the_connection_serves(make_engine, mfa, tmp_path):
    person = Person(lambda c: [mfa.code()])
    eng = make_engine(person)
    root = mfa_project(tmp_path, mfa)
    assert run_and_exit(eng, root)["code"] == 0
    assert f"hello from {mfa.user}" in output_of(eng)
    assert len(person.seen) == 1
    ch = person.seen[0]
    assert ch["prompts"] == [{"text": "Verification code: ", "echo": False}]
    assert ch["host"] == mfa.sshd.alias and ch["user"] == mfa.user and ch["why"] == ""
    # A second run, a push and the status ask nothing: one login serves them all.
    assert run_and_exit(eng, root)["code"] == 0
    eng.call_sync("push", {"cwd": str(root)}, {}, timeout=60)
    status = eng.call_sync("status", {"cwd": str(root)}, {}, timeout=60)
    assert len(person.seen) == 1
    assert status["connected"] and time.time() - 120 < status["connected_since"] <= time.time()


def test_wrong_code_is_one_line_saying_the_code_was_refused(make_engine, mfa, tmp_path):
    from remote_dev.errors import RemoteDevError
    person = Person(lambda c: [mfa.wrong_code()])
    eng = make_engine(person)
    root = mfa_project(tmp_path, mfa)
    with pytest.raises(RemoteDevError) as err:
        eng.call_sync("push", {"cwd": str(root)}, {}, timeout=90)
    msg = err.value.message
    assert "refused the code" in msg and "Verification code:" in msg and "after the key" in msg, msg
    assert "no key was accepted" not in msg and "\n" not in msg
    assert len(person.seen) == 1   # asked once, not again and again
    assert mfa.wrong_code() not in msg


def test_cancelled_prompt_says_what_the_server_wanted(make_engine, mfa, tmp_path):
    from remote_dev.errors import RemoteDevError
    eng = make_engine(Person(lambda c: None))
    with pytest.raises(RemoteDevError) as err:
        eng.call_sync("push", {"cwd": str(mfa_project(tmp_path, mfa))}, {}, timeout=90)
    msg = err.value.message
    assert "login cancelled" in msg and "keyboard-interactive after the key" in msg, msg


def test_nobody_to_ask_is_one_honest_line(make_engine, mfa, tmp_path):
    """The issue's report: the key WAS accepted, the server wanted a code next."""
    from remote_dev.errors import RemoteDevError
    eng = make_engine(None)
    with pytest.raises(RemoteDevError) as err:
        eng.call_sync("push", {"cwd": str(mfa_project(tmp_path, mfa))}, {}, timeout=90)
    msg = err.value.message
    assert "keyboard-interactive after the key (Verification code:)" in msg, msg
    assert "no key was accepted" not in msg and "\n" not in msg


def test_a_refused_key_still_says_so(make_engine, mfa, tmp_path):
    from remote_dev.errors import RemoteDevError
    other = tmp_path / "other_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other)], check=True)
    person = Person(lambda c: [mfa.code()])
    eng = make_engine(person)
    root = mfa_project(tmp_path, mfa, identity_file=str(other))
    cfg = root / ".remote-dev.toml"
    # IdentitiesOnly in the ssh config: only identity_file is offered.
    with pytest.raises(RemoteDevError) as err:
        eng.call_sync("push", {"cwd": str(root)}, {}, timeout=90)
    assert "no key was accepted" in err.value.message, err.value.message
    assert person.seen == [] and cfg.exists()


def test_dropped_connection_asks_again_and_says_why(make_engine, mfa, tmp_path):
    person = Person(lambda c: [mfa.code()])
    eng = make_engine(person)
    root = mfa_project(tmp_path, mfa)
    eng.call_sync("push", {"cwd": str(root)}, {}, timeout=90)
    assert len(person.seen) == 1
    # The server side of the connection goes away (a cluster's login node restarts sshd's child).
    for pid in mfa.pids():
        os.kill(pid, 9)
    wait_for(lambda: not eng.call_sync("status", {"cwd": str(root)}, {"refresh": False})["connected"], 15)
    eng.call_sync("push", {"cwd": str(root)}, {}, timeout=90)
    assert len(person.seen) == 2
    assert "lost" in person.seen[1]["why"] and "logging in again" in person.seen[1]["why"], person.seen[1]


# --------------------------------------------------------------------------- the CLI on a terminal

def cli_on_terminal(root: Path, answer: Callable[[str], str | None], timeout: float = 90) -> tuple[int, str]:
    """`remote-dev run` in a real pseudo-terminal (its controlling tty); answer(screen so far)
    types a line when it returns one."""
    cli = str(Path(sys.executable).parent / "remote-dev")
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    pid, fd = pty.fork()
    if pid == 0:
        os.chdir(root)
        os.execve(cli, [cli, "run", "python3", "main.py"], env)
    screen = b""
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([fd], [], [], 0.2)
            if ready:
                try:
                    data = os.read(fd, 4096)
                except OSError:
                    break
                if not data:
                    break
                screen += data
                line = answer(screen.decode(errors="replace"))
                if line is not None:
                    os.write(fd, line.encode() + b"\r")
        _, status = os.waitpid(pid, 0)
    finally:
        os.close(fd)
    return os.waitstatus_to_exitcode(status), screen.decode(errors="replace")


def test_cli_asks_on_its_terminal(mfa, tmp_path):
    root = mfa_project(tmp_path, mfa)
    typed = []

    def answer(screen: str) -> str | None:
        if "Verification code: " in screen and not typed:
            typed.append(mfa.code())
            return typed[-1]
        return None
    code, screen = cli_on_terminal(root, answer)
    assert code == 0, repr(screen)
    assert f"login to {mfa.sshd.alias} as {mfa.user}" in screen
    assert f"hello from {mfa.user}" in screen
    assert typed[0] not in screen   # echo off, as the server asked


def test_cli_wrong_code_on_its_terminal_is_one_line(mfa, tmp_path):
    root = mfa_project(tmp_path, mfa)
    typed: list[str] = []

    def answer(screen: str) -> str | None:
        if "Verification code: " in screen and not typed:
            typed.append(mfa.wrong_code())
            return typed[-1]
        return None
    code, screen = cli_on_terminal(root, answer)
    assert code == 2, repr(screen)
    said = [line for line in screen.splitlines() if line.startswith("remote-dev: ") and "login to" not in line]
    assert len(said) == 1 and "refused the code" in said[0], repr(screen)


def test_cli_without_a_terminal_says_so_in_one_line(mfa, tmp_path):
    root = mfa_project(tmp_path, mfa)
    cli = str(Path(sys.executable).parent / "remote-dev")
    out = subprocess.run([cli, "-C", str(root), "push"], capture_output=True, text=True, timeout=90,
                         stdin=subprocess.DEVNULL, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    assert out.returncode == 2
    lines = [line for line in out.stderr.splitlines() if "Warning" not in line and line.strip()
             and not line.startswith("  ")]
    assert len(lines) == 1 and "Verification code:" in lines[0] and "nothing here can ask you" in lines[0], out.stderr



# --------------------------------------------------------------------------- bastions and certificates

def test_proxyjump_bastion_asks_for_its_code_naming_itself(make_engine, mfa, sshd, tmp_path):
    """The cluster's bastion (the two-factor sshd) asks for a code; the node behind it takes
    the key.  The prompt names the bastion, not the target."""
    cfg = tmp_path / "ssh_config"
    behind = sshd.ssh_config.read_text().replace(f"Host {sshd.alias}\n", f"Host {sshd.alias}\n  ProxyJump {mfa.sshd.alias}\n")
    cfg.write_text(behind + mfa.sshd.ssh_config.read_text())
    root = tmp_path / "proj"
    root.mkdir()
    (root / ".remote-dev.toml").write_text(sshd.target_toml(str(tmp_path / "remote")).replace(str(sshd.ssh_config), str(cfg)))
    person = Person(lambda c: [mfa.code()])
    eng = make_engine(person)
    log = mfa.sshd.dir / "sshd.log"
    before = log.read_text().count("Accepted keyboard-interactive/pam")
    status = eng.call_sync("status", {"cwd": str(root)}, {}, timeout=90)
    assert status["connected"]
    assert [(c["host"], c["user"], c["prompts"][0]["text"]) for c in person.seen] == \
        [(mfa.sshd.alias, mfa.user, "Verification code: ")]
    # The hop really carried it: the bastion's log has the login.
    assert log.read_text().count("Accepted keyboard-interactive/pam") == before + 1


def test_proxyjump_refused_code_names_the_bastion(make_engine, mfa, sshd, tmp_path):
    from remote_dev.errors import RemoteDevError
    cfg = tmp_path / "ssh_config"
    behind = sshd.ssh_config.read_text().replace(f"Host {sshd.alias}\n", f"Host {sshd.alias}\n  ProxyJump {mfa.sshd.alias}\n")
    cfg.write_text(behind + mfa.sshd.ssh_config.read_text())
    root = tmp_path / "proj"
    root.mkdir()
    (root / ".remote-dev.toml").write_text(sshd.target_toml(str(tmp_path / "remote")).replace(str(sshd.ssh_config), str(cfg)))
    eng = make_engine(Person(lambda c: [mfa.wrong_code()]))
    with pytest.raises(RemoteDevError) as err:
        eng.call_sync("status", {"cwd": str(root)}, {}, timeout=90)
    assert err.value.message.startswith(f"{mfa.sshd.alias} (ProxyJump to {sshd.alias}"), err.value.message
    assert "refused the code" in err.value.message


def test_ssh_certificate_next_to_the_key_is_offered(make_engine, tmp_path):
    """A centre's short-lived certificate (id_*-cert.pub beside the key) logs in where the
    key alone is not authorized, as with OpenSSH; once it expired the line says no key."""
    from remote_dev.errors import RemoteDevError
    from support.sshd import start_sshd, stop_sshd
    base = tmp_path / "sshd"
    ca = tmp_path / "ca"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(ca)], check=True)
    s = start_sshd(base, alias="rdcert", extra_config=f"TrustedUserCAKeys {ca}.pub\n")
    try:
        (base / "authorized_keys").write_text("")   # the key alone is no longer enough
        user = subprocess.run(["id", "-un"], capture_output=True, text=True).stdout.strip()

        def sign(validity: str) -> None:
            subprocess.run(["ssh-keygen", "-q", "-s", str(ca), "-I", "test", "-n", user, "-V", validity,
                            str(s.user_key) + ".pub"], check=True)
        root = tmp_path / "proj"
        root.mkdir()
        (root / ".remote-dev.toml").write_text(s.target_toml(str(tmp_path / "remote")))
        sign("-5m:+1h")
        eng = make_engine(None)
        assert eng.call_sync("status", {"cwd": str(root)}, {}, timeout=60)["connected"]
        sign("-2h:-1h")   # expired
        eng2 = make_engine(None)
        with pytest.raises(RemoteDevError) as err:
            eng2.call_sync("status", {"cwd": str(root)}, {}, timeout=60)
        assert "no key was accepted" in err.value.message, err.value.message
    finally:
        stop_sshd(s)


# --------------------------------------------------------------------------- an OpenSSH master

def open_master(mfa: Any, tmp_path: Path) -> None:
    """What the person did in a terminal: `ssh -M` and typed the code (SSH_ASKPASS types it here)."""
    askpass = tmp_path / "askpass"
    askpass.write_text(f"#!/bin/sh\necho {mfa.code()}\n")
    askpass.chmod(0o700)
    env = {**os.environ, "SSH_ASKPASS": str(askpass), "SSH_ASKPASS_REQUIRE": "force", "DISPLAY": ":0"}
    subprocess.run(["ssh", "-F", str(mfa.sshd.ssh_config), "-o", "ControlPersist=120", "-M", "-N", "-f",
                    mfa.sshd.alias], env=env, check=True, timeout=60, stdin=subprocess.DEVNULL)
    subprocess.run(["ssh", "-F", str(mfa.sshd.ssh_config), "-O", "check", mfa.sshd.alias], check=True,
                   capture_output=True, timeout=10)


def close_master(mfa: Any) -> None:
    subprocess.run(["ssh", "-F", str(mfa.sshd.ssh_config), "-O", "exit", mfa.sshd.alias], capture_output=True,
                   timeout=10)


def test_an_open_openssh_master_is_used_instead_of_asking(make_engine, mfa, tmp_path):
    """Everything rides the master: the run (agent, output), a port forward; nothing asks,
    the remote keeps no key of it afterwards; once the master is gone, we ask again."""
    from remote_dev.errors import RemoteDevError
    open_master(mfa, tmp_path)
    log = mfa.sshd.dir / "sshd.log"
    logins = log.read_text().count("Accepted keyboard-interactive/pam")
    try:
        asked: list[dict] = []
        eng = make_engine(Person(lambda c: asked.append(c) or None))
        root = mfa_project(tmp_path, mfa)
        assert run_and_exit(eng, root)["code"] == 0
        assert f"hello from {mfa.user}" in output_of(eng)
        status = eng.call_sync("status", {"cwd": str(root)}, {}, timeout=60)
        assert "OpenSSH master" in (status["connected_via"] or "")
        # a forward over it (as debug, notebooks and :RemoteForward use)
        fwd = eng.call_sync("forward", {"cwd": str(root)}, {"port": mfa.sshd.port}, timeout=60)
        import socket
        with socket.create_connection(("127.0.0.1", fwd["local_port"]), timeout=10) as s:
            assert s.recv(4) == b"SSH-"
        assert asked == [] and log.read_text().count("Accepted keyboard-interactive/pam") == logins
        assert list((mfa.home / ".cache" / "remote-dev" / "mux").iterdir()) == []
    finally:
        close_master(mfa)
    eng2 = make_engine(None)
    with pytest.raises(RemoteDevError) as err:
        eng2.call_sync("status", {"cwd": str(root)}, {}, timeout=60)
    assert "Verification code:" in err.value.message


# --------------------------------------------------------------------------- Duo-style and password prompts

@pytest.fixture
def duo(tmp_path):
    from support.duo import start_duo, stop_duo
    servers = []

    def make(method: str = "duo") -> Any:
        servers.append(start_duo(tmp_path / f"duo-{method}", method))
        return servers[-1]
    yield make
    for s in servers:
        stop_duo(s)


def duo_project(tmp_path: Path, server: Any) -> Path:
    root = tmp_path / "duo-proj"
    root.mkdir()
    (root / ".remote-dev.toml").write_text(server.target_toml(str(tmp_path / "duo-remote")))
    return root


def test_duo_style_prompt_echoes_and_carries_the_instructions(make_engine, duo, tmp_path):
    from support.duo import DUO_PROMPT
    server = duo("duo")
    person = Person(lambda c: ["1"])
    eng = make_engine(person)
    status = eng.call_sync("status", {"cwd": str(duo_project(tmp_path, server))}, {}, timeout=60)
    assert status["connected"]
    (ch,) = person.seen
    assert ch["prompts"] == [{"text": DUO_PROMPT, "echo": True}]
    assert "1. Duo Push to" in ch["instructions"] and ch["host"] == server.alias
    assert server.answers == ["1"]


def test_password_when_the_server_offers_it(make_engine, duo, tmp_path):
    from remote_dev.errors import RemoteDevError
    server = duo("password")
    server.secret = "correct horse"
    person = Person(lambda c: ["correct horse"])
    eng = make_engine(person)
    root = duo_project(tmp_path, server)
    assert eng.call_sync("status", {"cwd": str(root)}, {}, timeout=60)["connected"]
    assert person.seen[0]["prompts"] == [{"text": f"{server.user}@{server.alias}'s password: ", "echo": False}]
    eng2 = make_engine(Person(lambda c: ["wrong"]))
    with pytest.raises(RemoteDevError) as err:
        eng2.call_sync("status", {"cwd": str(root)}, {}, timeout=60)
    assert "refused the password" in err.value.message and "wrong" not in err.value.message


def test_a_host_that_takes_the_key_alone_is_reached_directly_despite_a_master(make_engine, make_project, sshd):
    """The master is for logins that would ask: a key-only host keeps its direct connection."""
    proj = make_project()
    subprocess.run(["ssh", "-F", str(sshd.ssh_config), "-o", "ControlPersist=30", "-M", "-N", "-f", sshd.alias],
                   check=True, timeout=60, stdin=subprocess.DEVNULL)
    try:
        status = make_engine(None).call_sync("status", {"cwd": str(proj.root)}, {}, timeout=60)
        assert status["connected"] and status["connected_via"] is None
    finally:
        subprocess.run(["ssh", "-F", str(sshd.ssh_config), "-O", "exit", sshd.alias], capture_output=True, timeout=10)


def test_status_says_since_when_and_through_what():
    """The one renderer of :RemoteStatus and `remote-dev status` (status.status_lines)."""
    from remote_dev.status import status_lines
    base = {"target": "t", "runner": "process", "host": "h", "remote_root": "~/p", "connected": True}
    t = time.time() - 3 * 3600 - 5 * 60 - 10
    line = [ln for ln in status_lines({**base, "connected_since": t}) if ln.startswith("connected")][0]
    assert line == f"connected   yes, since {time.strftime('%H:%M', time.localtime(t))} (3 h 5 min)"
    via = "\n".join(status_lines({**base, "connected_since": t, "connected_via": "your OpenSSH master connection (x)"}))
    assert "(3 h 5 min), through your OpenSSH master connection (x)" in via


def test_proxyjump_bastion_with_an_untrusted_host_key_is_one_line_naming_it(make_engine, mfa, sshd, tmp_path):
    from remote_dev.errors import RemoteDevError
    empty = tmp_path / "empty_known_hosts"
    empty.write_text("")
    cfg = tmp_path / "ssh_config"
    behind = sshd.ssh_config.read_text().replace(f"Host {sshd.alias}\n", f"Host {sshd.alias}\n  ProxyJump {mfa.sshd.alias}\n")
    cfg.write_text(behind + mfa.sshd.ssh_config.read_text().replace(str(mfa.sshd.known_hosts), str(empty)))
    root = tmp_path / "proj"
    root.mkdir()
    (root / ".remote-dev.toml").write_text(sshd.target_toml(str(tmp_path / "remote")).replace(str(sshd.ssh_config), str(cfg)))
    person = Person(lambda c: [mfa.code()])
    with pytest.raises(RemoteDevError) as err:
        make_engine(person).call_sync("status", {"cwd": str(root)}, {}, timeout=60)
    msg = err.value.message
    assert msg.startswith(f"{mfa.sshd.alias} (ProxyJump to {sshd.alias}") and "host key not trusted" in msg, msg
    assert person.seen == [] and "\n" not in msg


def test_after_a_cancel_background_reconnects_do_not_ask_until_the_person_acts(make_engine, mfa, tmp_path):
    from remote_dev.errors import RemoteDevError
    answers: list[Any] = [None]
    person = Person(lambda c: answers[0])
    eng = make_engine(person)
    root = mfa_project(tmp_path, mfa)
    with pytest.raises(RemoteDevError):
        eng.call_sync("push", {"cwd": str(root)}, {}, timeout=60)
    assert len(person.seen) == 1
    sess = eng.projects[root.resolve()].session()

    async def background() -> list[Any]:   # what output followers and forwards do after a drop
        import asyncio
        return await asyncio.gather(sess.ensure(), sess.ensure(), return_exceptions=True)
    results = eng.submit(background()).result(60)
    assert all(isinstance(r, RemoteDevError) and "login cancelled" in r.message for r in results), results
    assert len(person.seen) == 1
    answers[0] = [mfa.code()]
    eng.call_sync("push", {"cwd": str(root)}, {}, timeout=60)   # the person acts: asked again
    assert len(person.seen) == 2
