"""A cluster's two-factor login on loopback: a real OpenSSH sshd whose PAM stack is
Debian's pam_google_authenticator, as shared clusters ask for a key and then a one-time
code (TOTP) through keyboard-interactive authentication.

sshd names its PAM service after its program name, so the sshd here is started through a
symlink called ``sshd-rdmfa<pid>`` and ``/etc/pam.d/sshd-rdmfa<pid>`` applies to it alone
(written here as root, removed by ``stop_mfa``).  The login user is made with useradd; its
``~/.google_authenticator`` holds a secret the tests also give to pyotp to compute codes.
"""

from __future__ import annotations

import base64
import os
import pwd
import secrets
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from .remote import remove_user
from .sshd import SSHD, Sshd, start_sshd, stop_sshd

PREFIX = "rdmfa"
PAM_MODULE = "pam_google_authenticator.so"
MFA_AUTH = ("PasswordAuthentication no\nKbdInteractiveAuthentication yes\nUsePAM yes\n"
            "PermitRootLogin prohibit-password\nAuthenticationMethods publickey,keyboard-interactive")
PAM_FILE = ("auth required pam_google_authenticator.so\naccount required pam_permit.so\n"
            "session required pam_permit.so\n")


@dataclass
class MfaSshd:
    sshd: Sshd
    user: str
    home: Path
    secret: str
    pam_file: Path

    def code(self, at: float | None = None) -> str:
        import pyotp
        return pyotp.TOTP(self.secret).at(at if at is not None else time.time())

    def pids(self) -> list[int]:
        """The processes of the login user (its sshd session, its shell, the agent)."""
        uid = pwd.getpwnam(self.user).pw_uid
        out = []
        for pid in os.listdir("/proc"):
            try:
                if pid.isdigit() and os.stat(f"/proc/{pid}").st_uid == uid:
                    out.append(int(pid))
            except OSError:
                pass
        return out

    def wrong_code(self) -> str:
        """A code no step of the server's window accepts (WINDOW_SIZE 17: +-8 steps)."""
        import pyotp
        totp = pyotp.TOTP(self.secret)
        now = time.time()
        near = {totp.at(now + 30 * k) for k in range(-10, 11)}
        for k in range(100, 200):
            candidate = totp.at(now + 3600 * k)
            if candidate not in near:
                return candidate
        raise AssertionError("no wrong code found")


def pam_module_installed() -> bool:
    return any(Path(d, "security", PAM_MODULE).exists()
               for d in ("/lib/x86_64-linux-gnu", "/usr/lib/x86_64-linux-gnu", "/lib/aarch64-linux-gnu",
                         "/usr/lib/aarch64-linux-gnu", "/lib", "/usr/lib"))


def _sweep_stale() -> None:
    for entry in pwd.getpwall():
        digits = entry.pw_name[len(PREFIX):]
        if entry.pw_name.startswith(PREFIX) and digits.isdigit() and not os.path.exists(f"/proc/{digits}"):
            remove_user(entry.pw_name)
            Path("/etc/pam.d", f"sshd-{entry.pw_name}").unlink(missing_ok=True)


def _make_user(name: str, public_key: str, secret: str) -> pwd.struct_passwd:
    remove_user(name)
    subprocess.run(["useradd", "--create-home", "--shell", "/bin/bash", name], check=True,
                   capture_output=True, timeout=60)
    subprocess.run(["usermod", "-p", "*", name], check=True, capture_output=True, timeout=60)
    pw = pwd.getpwnam(name)
    home = Path(pw.pw_dir)
    ssh_dir = home / ".ssh"
    ssh_dir.mkdir(mode=0o700, exist_ok=True)
    keys = ssh_dir / "authorized_keys"
    keys.write_text(public_key)
    ga = home / ".google_authenticator"
    ga.write_text(f'{secret}\n" TOTP_AUTH\n" WINDOW_SIZE 17\n" RATE_LIMIT 100 30\n')
    for path, mode in ((ssh_dir, 0o700), (keys, 0o600), (ga, 0o400)):
        os.chown(path, pw.pw_uid, pw.pw_gid)
        os.chmod(path, mode)
    return pw


def start_mfa(base: Path, alias: str = "rdmfa", extra_config: str = "") -> MfaSshd:
    """The two-factor sshd and its user (as root).  The key in base/id_ed25519 is the user's;
    the ssh config at sshd.ssh_config logs in as that user."""
    _sweep_stale()
    name = f"{PREFIX}{os.getpid()}"
    base.mkdir(parents=True, exist_ok=True)
    os.chmod(base, 0o700)
    key = base / "id_ed25519"
    if not key.exists():
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    secret = base64.b32encode(secrets.token_bytes(20)).decode()
    pw = _make_user(name, (base / "id_ed25519.pub").read_text(), secret)
    service = f"sshd-{name}"
    pam_file = Path("/etc/pam.d") / service
    program = base / service
    try:
        pam_file.write_text(PAM_FILE)
        if not program.exists():
            program.symlink_to(os.path.realpath(SSHD))
        sshd = start_sshd(base, alias=alias, user=name, program=str(program), auth=MFA_AUTH,
                          extra_config=extra_config)
    except BaseException:
        pam_file.unlink(missing_ok=True)
        remove_user(name)
        raise
    return MfaSshd(sshd, name, Path(pw.pw_dir), secret, pam_file)


def stop_mfa(mfa: MfaSshd) -> None:
    stop_sshd(mfa.sshd)
    mfa.pam_file.unlink(missing_ok=True)
    remove_user(mfa.user)
