"""The remote of the fault suite, as root or as an unprivileged user the tests create.

A user remote is what most machines are: a user with its own home (`~` in remote_root),
its own ~/.cache (agent, run folders), its own tmux socket, its own authorized_keys, and an
sshd with StrictModes on.  A root remote is the test bed's usual login, with its agent cache
in a temporary folder.  Both give the same handles: where a project's remote_root is on this
machine, the processes that belong to the remote (agents, supervisors, runs), and a way to
run a command as the remote user.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import socket
import stat
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from .sshd import Sshd, start_sshd, stop_sshd, toml_value

USER_PREFIX = "rdfault"


@dataclass
class Remote:
    kind: str                 # "root" | "user"
    base: Path                # the sshd's folder (keys, config, log)
    user: str
    uid: int
    gid: int
    home: Path
    sshd: Sshd
    port: int
    roots: Path               # where remote roots live on this machine
    root_prefix: str          # how a remote_root there is spelled in .remote-dev.toml
    marker: bytes             # in the environment of every process of this remote (root)
    restarts: int = 0
    extra_sshd: list[Sshd] = field(default_factory=list)

    @property
    def cache(self) -> Path:
        """The agent's cache on the remote (agent zip, run folders, debugpy)."""
        if self.kind == "root":
            return self.sshd.remote_cache / "remote-dev"
        return self.home / ".cache" / "remote-dev"

    def remote_root(self, name: str) -> tuple[str, Path]:
        """(remote_root as written in the config, the folder on this machine)."""
        return f"{self.root_prefix}/{name}", self.roots / name

    def target_toml(self, remote_root: str, **extra: object) -> str:
        return self.sshd.target_toml(remote_root, **extra)

    def as_user(self, *argv: str, check: bool = True, **kw: object) -> subprocess.CompletedProcess[str]:
        """Run argv on this machine as the remote user (as root: plainly)."""
        cmd = list(argv) if self.kind == "root" else ["runuser", "-u", self.user, "--", *argv]
        return subprocess.run(cmd, capture_output=True, text=True, check=check, timeout=60, **kw)  # type: ignore[call-overload]

    def chown(self, path: Path) -> None:
        if self.kind == "user":
            for p in [path, *path.rglob("*")] if path.is_dir() else [path]:
                os.lchown(p, self.uid, self.gid)

    # -- processes
    def processes(self, exclude_sshd: bool = True) -> list[int]:
        """Live processes that belong to this remote: the user's (user remote), or those
        carrying the root remote's agent cache in their environment."""
        out = []
        for pid in os.listdir("/proc"):
            if not pid.isdigit() or int(pid) == os.getpid():
                continue
            try:
                st = os.stat(f"/proc/{pid}")
                stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
                if stat[0] == "Z":
                    continue
                if self.kind == "user":
                    if st.st_uid != self.uid:
                        continue
                elif self.marker not in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0"):
                    continue
                comm = Path(f"/proc/{pid}/comm").read_text().strip()
            except (OSError, IndexError):
                continue
            if exclude_sshd and comm.startswith("sshd"):
                continue
            out.append(int(pid))
        return out

    def describe(self, pids: list[int]) -> list[str]:
        out = []
        for pid in pids:
            try:
                cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            out.append(f"{pid}: {cmd[:160]}")
        return out

    def agents(self) -> list[int]:
        """The agent processes (serving an SSH channel) of this remote."""
        return [p for p in self.processes() if cmdline_has(p, b"remote_dev_agent.remote.main")]

    def settle(self, timeout: float = 15.0, keep: set[int] | None = None) -> list[int]:
        """Wait until no process of this remote is left (but those in keep); what is still
        there after timeout (left behind)."""
        deadline = time.monotonic() + timeout
        while True:
            left = [p for p in self.processes() if p not in (keep or set())]
            if not left or time.monotonic() > deadline:
                return left
            time.sleep(0.1)

    def kill_all(self) -> None:
        """End what the tests left on this remote (a failed test): by pid, one by one."""
        for sig in (signal.SIGTERM, signal.SIGKILL):
            pids = self.processes()
            for pid in pids:
                try:
                    os.kill(pid, sig)
                except OSError:
                    pass
            if pids:
                time.sleep(0.5)

    # -- the sshd
    def sshd_pids(self) -> list[int]:
        """This remote's sshd listener and its session processes (one per connection)."""
        listener = self.sshd.proc.pid
        out = [listener]
        out += [p for p in _descendants(listener) if _comm(p).startswith("sshd")]
        return out

    def restart_sshd(self, down: float = 1.0) -> None:
        """Stop sshd with every connection it serves (as a machine going down would cut
        them), wait `down` seconds, start it again on the same port with the same keys."""
        sessions = [p for p in _descendants(self.sshd.proc.pid) if _comm(p).startswith("sshd")]
        self.sshd.proc.terminate()
        self.sshd.proc.wait(10)
        for pid in sessions:
            try:
                os.kill(pid, signal.SIGTERM)
            except OSError:
                pass
        time.sleep(down)
        self.sshd = start_sshd(self.base, alias=self.sshd.alias, port=self.port,
                               user=self.user if self.kind == "user" else None)
        self.restarts += 1


def cmdline_has(pid: int, what: bytes) -> bool:
    try:
        return what in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def _children() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            ppid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        kids.setdefault(ppid, []).append(int(pid))
    return kids


def _descendants(pid: int) -> Iterator[int]:
    kids = _children()
    todo = list(kids.get(pid, []))
    while todo:
        p = todo.pop()
        yield p
        todo.extend(kids.get(p, []))


# --------------------------------------------------------------------------- users


def _user_alive_pid(name: str) -> bool:
    """Users are named rdfault<pid of the pytest that made them>: is that pytest alive?"""
    digits = name[len(USER_PREFIX):].rstrip("abcdefghijklmnopqrstuvwxyz")
    return digits.isdigit() and os.path.exists(f"/proc/{digits}")


def remove_user(name: str) -> None:
    try:
        uid = pwd.getpwnam(name).pw_uid
    except KeyError:
        return
    for sig in (signal.SIGTERM, signal.SIGKILL):
        pids = []
        for pid in os.listdir("/proc"):
            try:
                if pid.isdigit() and os.stat(f"/proc/{pid}").st_uid == uid:
                    pids.append(int(pid))
            except OSError:
                pass
        for pid in pids:
            try:
                os.kill(pid, sig)
            except OSError:
                pass
        if pids:
            time.sleep(0.5)
    subprocess.run(["userdel", "-r", "-f", name], capture_output=True, timeout=60)
    shutil.rmtree(f"/tmp/tmux-{uid}", ignore_errors=True)


def sweep_stale_users() -> None:
    """Users an earlier, aborted session made (its pytest is gone)."""
    for entry in pwd.getpwall():
        if entry.pw_name.startswith(USER_PREFIX) and not _user_alive_pid(entry.pw_name):
            remove_user(entry.pw_name)


def make_user(shell: str = "/bin/bash", suffix: str = "") -> pwd.struct_passwd:
    """A fresh unprivileged user with its own home (mode 0755 as useradd makes it here,
    StrictModes-sane) and a login shell; no password (key login only, not locked)."""
    sweep_stale_users()
    name = f"{USER_PREFIX}{os.getpid()}{suffix}"
    remove_user(name)
    subprocess.run(["useradd", "--create-home", "--shell", shell, name], check=True,
                   capture_output=True, timeout=60)
    # `!` (locked) would make sshd refuse a key login without PAM; `*`: no password login
    subprocess.run(["usermod", "-p", "*", name], check=True, capture_output=True, timeout=60)
    return pwd.getpwnam(name)


def start_root_remote(base: Path) -> Remote:
    sshd = start_sshd(base, alias="rdfault")
    roots = base / "roots"
    roots.mkdir()
    return Remote("root", base, "root", 0, 0, Path(os.path.expanduser("~")), sshd, sshd.port, roots,
                  str(roots), b"XDG_CACHE_HOME=" + str(sshd.remote_cache).encode())


def start_user_remote(base: Path, shell: str = "/bin/bash", suffix: str = "") -> Remote:
    pw = make_user(shell, suffix)
    home = Path(pw.pw_dir)
    try:
        sshd = start_sshd(base, alias=f"rdfaultu{suffix}", user=pw.pw_name)
        ssh_dir = home / ".ssh"
        ssh_dir.mkdir(mode=0o700, exist_ok=True)
        keys = ssh_dir / "authorized_keys"
        keys.write_text((base / "id_ed25519.pub").read_text())
        keys.chmod(0o600)
        for p in (ssh_dir, keys):
            os.chown(p, pw.pw_uid, pw.pw_gid)
        roots = home / "t"
        roots.mkdir()
        os.chown(roots, pw.pw_uid, pw.pw_gid)
    except BaseException:
        remove_user(pw.pw_name)
        raise
    return Remote("user", base, pw.pw_name, pw.pw_uid, pw.pw_gid, home, sshd, sshd.port, roots, "~/t", b"")


def stop_remote(remote: Remote) -> None:
    remote.kill_all()
    stop_sshd(remote.sshd)
    if remote.kind == "user":
        remove_user(remote.user)


def toml_of(value: object) -> str:
    return toml_value(value)


def loose_modes(folder: Path | str) -> list[str]:
    """Files and folders under folder (itself included) that others than the owner may use.
    One removed between the listing and its lstat is skipped: agents of other tests share
    the remote's cache and drop what is theirs to drop meanwhile (an index file of a root
    gone; seen in CI)."""
    out = []
    for dirpath, dirnames, filenames in os.walk(folder):
        for p in [dirpath, *(os.path.join(dirpath, n) for n in filenames)]:
            try:
                mode = os.lstat(p).st_mode
            except FileNotFoundError:
                continue
            if not stat.S_ISLNK(mode) and mode & 0o077:
                out.append(f"{p} {stat.filemode(mode)}")
    return out


def hello_server() -> socket.socket:
    """A service on the remote's 127.0.0.1 (a thread here) that greets each connection with
    one line and closes it, for forward tests; close the socket to end it."""
    srv = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        while True:
            try:
                c, _ = srv.accept()
            except OSError:
                return
            c.sendall(b"hello from the remote\n")
            c.close()
    threading.Thread(target=serve, daemon=True).start()
    return srv
