"""A Duo-style login on loopback: a real SSH server (asyncssh's, in a thread of the test
process, as asyncssh's own tests run theirs) that wants the key and then asks, through
keyboard-interactive, "Passcode or option (1-1):" with echo ON and Duo's instructions (or
a password, when told to).  asyncssh's server has no partial success, so here the prompt is
the whole login (no key first): the two-factor sshd of mfa.py is the key-then-code case.  Duo's service cannot exist here; its SSH conversation can, and it
is what the client sees.  Commands run as the test's user through /bin/sh."""

from __future__ import annotations

import asyncio
import subprocess
import threading
from dataclasses import dataclass, field
from pathlib import Path

import asyncssh

from .sshd import free_port

DUO_INSTRUCTIONS = ("Duo two-factor login for {user}\n\nEnter a passcode or select one of the following options:\n\n"
                    " 1. Duo Push to XXX-XXX-1234\n")
DUO_PROMPT = "Passcode or option (1-1): "


@dataclass
class DuoServer:
    port: int
    alias: str
    ssh_config: Path
    user: str
    method: str                       # "duo" (keyboard-interactive) or "password"
    secret: str = "1"                 # the accepted answer (Duo: "1" = push approved)
    answers: list[str] = field(default_factory=list)
    loop: asyncio.AbstractEventLoop | None = None
    server: asyncssh.SSHAcceptor | None = None
    thread: threading.Thread | None = None

    def target_toml(self, remote_root: str) -> str:
        return (f'[targets.duo]\nhost = "{self.alias}"\nremote_root = "{remote_root}"\n'
                f'ssh_config = "{self.ssh_config}"\npython = "python3"\n')


def _server_class(duo: DuoServer) -> type:
    class Server(asyncssh.SSHServer):
        def begin_auth(self, username: str) -> bool:
            return True

        def public_key_auth_supported(self) -> bool:
            return False

        def kbdint_auth_supported(self) -> bool:
            return duo.method == "duo"

        def password_auth_supported(self) -> bool:
            return duo.method == "password"

        def get_kbdint_challenge(self, username: str, lang: str, submethods: str):
            return ("", DUO_INSTRUCTIONS.format(user=username), "", [(DUO_PROMPT, True)])

        def validate_kbdint_response(self, username: str, responses):
            duo.answers.extend(responses)
            return list(responses) == [duo.secret]

        def validate_password(self, username: str, password: str) -> bool:
            duo.answers.append(password)
            return password == duo.secret
    return Server


async def _process(process: asyncssh.SSHServerProcess) -> None:
    """The command through /bin/sh, its stdio bridged (the agent speaks over it)."""
    proc = await asyncio.create_subprocess_shell(process.command or "true", stdin=subprocess.PIPE,
                                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    await process.redirect(stdin=proc.stdin, stdout=proc.stdout, stderr=proc.stderr)
    process.exit(await proc.wait())


def start_duo(base: Path, method: str = "duo", alias: str = "rdduo") -> DuoServer:
    """The server, and an ssh config
    with its alias and a known_hosts holding its host key."""
    base.mkdir(parents=True, exist_ok=True)
    host_key = asyncssh.generate_private_key("ssh-ed25519")
    user_key = asyncssh.generate_private_key("ssh-ed25519")
    user_key.write_private_key(base / "id_ed25519")
    (base / "id_ed25519").chmod(0o600)
    user = subprocess.run(["id", "-un"], capture_output=True, text=True).stdout.strip()
    port = free_port()
    known = base / "known_hosts"
    known.write_text(f"[127.0.0.1]:{port} {host_key.export_public_key().decode()}")
    cfg = base / "ssh_config"
    cfg.write_text(f"Host {alias}\n  HostName 127.0.0.1\n  Port {port}\n  User {user}\n  IdentityFile {base}/id_ed25519\n"
                   f"  IdentitiesOnly yes\n  UserKnownHostsFile {known}\n  StrictHostKeyChecking yes\n")
    duo = DuoServer(port, alias, cfg, user, method)
    ready = threading.Event()

    def run() -> None:
        loop = duo.loop = asyncio.new_event_loop()
        opts = dict(server_host_keys=[host_key], process_factory=_process,
                    server_factory=_server_class(duo), encoding=None)
        duo.server = loop.run_until_complete(asyncssh.listen("127.0.0.1", port, **opts))
        ready.set()
        loop.run_forever()
    duo.thread = threading.Thread(target=run, name="duo-server", daemon=True)
    duo.thread.start()
    ready.wait(10)
    return duo


def stop_duo(duo: DuoServer) -> None:
    if duo.loop is not None and duo.server is not None:
        duo.loop.call_soon_threadsafe(duo.server.close)
        duo.loop.call_soon_threadsafe(duo.loop.stop)
    if duo.thread is not None:
        duo.thread.join(5)
