"""A real OpenSSH sshd on loopback for the tests, the benchmarks and the demo: generated
host and user keys, a private ssh config with a Host alias, and a known_hosts holding the
host key, so host-key checking stays on."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SSHD = shutil.which("sshd") or "/usr/sbin/sshd"


DEFAULT_AUTH = "PasswordAuthentication no\nKbdInteractiveAuthentication no\nPermitRootLogin prohibit-password\nUsePAM no"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Sshd:
    dir: Path
    port: int
    alias: str
    ssh_config: Path
    known_hosts: Path
    user_key: Path
    remote_cache: Path
    proc: subprocess.Popen[bytes]

    def ssh_argv(self, *cmd: str) -> list[str]:
        return ["ssh", "-F", str(self.ssh_config), self.alias, *cmd]

    def ssh(self, *cmd: str, check: bool = True, **kw: Any) -> subprocess.CompletedProcess[str]:
        return subprocess.run(self.ssh_argv(*cmd), capture_output=True, text=True, check=check, timeout=60, **kw)

    def target_toml(self, remote_root: str, name: str = "test", **extra: Any) -> str:
        extra = {"python": "python3", **extra}
        lines = [f"[targets.{name}]", f'host = "{self.alias}"', f'remote_root = "{remote_root}"',
                 f'ssh_config = "{self.ssh_config}"']
        for k, v in extra.items():
            lines.append(f"{k} = {toml_value(v)}")
        return "\n".join(lines) + "\n"


def toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return str(v)
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{ " + ", ".join(f"{k} = {toml_value(x)}" for k, x in v.items()) + " }"
    raise TypeError(v)


def start_sshd(base: Path, alias: str = "rdtest", extra_config: str = "", listen: str = "127.0.0.1",
               port: int | None = None, wrap: tuple[str, ...] = (), new_session: bool = False,
               user: str | None = None, program: str | None = None, auth: str | None = None) -> Sshd:
    """sshd -D on listen:port (default: a free loopback port).  wrap prefixes its command
    (e.g. ("ip", "netns", "exec", NAME) for a network namespace); new_session detaches it: its
    own session (a Ctrl-C reaches only the caller, which stops it) and no inherited stdio (a
    pipe the caller writes to still ends when the caller does; sshd logs to sshd.log).
    user: log in as this (unprivileged) user instead, as on a real machine: StrictModes on,
    its own ~/.ssh/authorized_keys (the caller installs base/id_ed25519.pub there), no
    environment set for it (its own ~/.cache, its own tmux socket).  program: the sshd to
    start (a symlink to it with another name has a PAM service of its own); auth: sshd_config
    lines that replace the key-only defaults (PasswordAuthentication .. UsePAM)."""
    if not os.path.exists(SSHD):
        raise RuntimeError(f"OpenSSH server not installed ({SSHD}); scripts/setup installs it")
    base.mkdir(parents=True, exist_ok=True)
    os.chmod(base, 0o700)
    Path("/run/sshd").mkdir(parents=True, exist_ok=True)
    hostkey = base / "hostkey"
    userkey = base / "id_ed25519"
    for key in (hostkey, userkey):
        if not key.exists():
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    (base / "authorized_keys").write_text((base / "id_ed25519.pub").read_text())
    remote_cache = base / "remote-cache"
    remote_cache.mkdir(exist_ok=True)
    tmux_dir = base / "tmux"   # the remote's tmux servers of this sshd (:RemoteShell)
    tmux_dir.mkdir(exist_ok=True)
    port = port or free_port()
    cfg = base / "sshd_config"
    # A login shell killed inside `pyenv rehash` (a root .bashrc running `pyenv init`, as on
    # this testbed) leaves pyenv's lock behind, and every later login waits 60 s for it; the
    # fault tests kill shells on purpose. One second is enough for pyenv to give up.
    quiet = "PYENV_REHASH_TIMEOUT=1"
    if user is None:
        login = textwrap.dedent(f"""\
            AuthorizedKeysFile {base}/authorized_keys
            StrictModes no
            SetEnv XDG_CACHE_HOME={remote_cache} TMUX_TMPDIR={tmux_dir} {quiet}
            """)
    else:
        login = f"AuthorizedKeysFile .ssh/authorized_keys\nStrictModes yes\nAllowUsers {user}\nSetEnv {quiet}\n"
    cfg.write_text(textwrap.dedent(f"""\
        Port {port}
        ListenAddress {listen}
        HostKey {hostkey}
        PidFile {base}/sshd.pid
        Subsystem sftp internal-sftp
        MaxSessions 100
        MaxStartups 100
        """) + (auth or DEFAULT_AUTH) + "\n" + login + extra_config)
    user = user or os.environ.get("USER") or subprocess.run(["id", "-un"], capture_output=True,
                                                            text=True).stdout.strip()
    ssh_config = base / "ssh_config"
    known_hosts = base / "known_hosts"
    ssh_config.write_text(textwrap.dedent(f"""\
        Host {alias}
          HostName {listen}
          Port {port}
          User {user}
          IdentityFile {userkey}
          IdentitiesOnly yes
          UserKnownHostsFile {known_hosts}
          StrictHostKeyChecking yes
          ControlMaster auto
          ControlPath {base}/cm-%C
          ControlPersist 60
        """))
    pub = (base / "hostkey.pub").read_text().split()
    known_hosts.write_text(f"[{listen}]:{port} {pub[0]} {pub[1]}\n")
    detached: dict[str, Any] = {"start_new_session": True, "stdin": subprocess.DEVNULL, "stdout": subprocess.DEVNULL,
                                "stderr": subprocess.DEVNULL} if new_session else {}
    proc = subprocess.Popen([*wrap, program or SSHD, "-D", "-f", str(cfg), "-E", str(base / "sshd.log")], **detached)
    sshd = Sshd(base, port, alias, ssh_config, known_hosts, userkey, remote_cache, proc)

    def ready() -> bool:
        try:
            with socket.create_connection((listen, port), timeout=0.5) as s:
                return s.recv(4).startswith(b"SSH-")
        except OSError:
            return False
    deadline = time.monotonic() + 10
    while not ready():
        if time.monotonic() > deadline or proc.poll() is not None:
            raise RuntimeError(f"sshd did not start: {(base / 'sshd.log').read_text(errors='replace')[-2000:]}")
        time.sleep(0.02)
    return sshd


def stop_sshd(sshd: Sshd) -> None:
    if shutil.which("tmux"):   # shells the tests left (a failed test) go with the bed
        subprocess.run(["tmux", "-L", "remote-dev", "kill-server"], capture_output=True, timeout=10,
                       env={**os.environ, "TMUX_TMPDIR": str(sshd.dir / "tmux")})
    subprocess.run(["ssh", "-F", str(sshd.ssh_config), "-O", "exit", sshd.alias], capture_output=True, timeout=10)
    sshd.proc.terminate()
    try:
        sshd.proc.wait(10)
    except subprocess.TimeoutExpired:
        sshd.proc.kill()


