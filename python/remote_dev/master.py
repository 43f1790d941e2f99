"""Riding a person's OpenSSH master connection (ControlMaster / ControlPath in their ssh
config, opened in a terminal where they typed the code): no second login, no prompt.

asyncssh cannot speak OpenSSH's private multiplexing protocol, so through the master we
start the remote's own sshd in inetd mode (``sshd -i``) as the user, with a host key and
an authorized key made for this one connection, and speak SSH to it over the master's
channel.  That inner sshd runs as the person (it can only log in the person) and serves
everything a direct connection does: commands, the agent, port and socket forwards.
Its keys travel on stdin of the master's session (never on a command line), land in a
0700 folder of the remote's cache, and are removed once the connection is up.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import shlex
import shutil
from dataclasses import dataclass

import asyncssh

from .config import Target

log = logging.getLogger("remote_dev")

CHECK_TIMEOUT = 5
PREPARE_TIMEOUT = 20

# POSIX sh, read on stdin by `sh -s` over the master (whatever the login shell is).
PREPARE = r"""umask 077
base="${XDG_CACHE_HOME:-$HOME/.cache}/remote-dev/mux"
d="$base/%(id)s"
mkdir -p "$d" && chmod 700 "$base" "$d" || exit 1
cat > "$d/hostkey" <<'REMOTE_DEV_KEY'
%(hostkey)sREMOTE_DEV_KEY
printf '%%s\n' '%(client_pub)s' > "$d/authorized_keys"
cat > "$d/sshd_config" <<REMOTE_DEV_CFG
HostKey $d/hostkey
AuthorizedKeysFile $d/authorized_keys
AuthenticationMethods publickey
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
PidFile none
LogLevel ERROR
MaxSessions 100
Subsystem sftp internal-sftp
REMOTE_DEV_CFG
sshd=$(command -v sshd 2>/dev/null || echo /usr/sbin/sshd)
[ -x "$sshd" ] || { echo "NOSSHD"; exit 1; }
echo "OK $(id -un)"
echo "$d"
echo "$sshd"
"""


@dataclass
class Master:
    """A live OpenSSH master for the target: the ssh arguments that reach it."""
    argv: list[str]      # ssh ... HOST, as a mux client that never prompts


def ssh_argv(target: Target) -> list[str] | None:
    exe = shutil.which("ssh")
    if exe is None:
        return None
    argv = [exe]
    if target.ssh_config:
        argv += ["-F", os.path.expanduser(target.ssh_config)]
    if target.port:
        argv += ["-p", str(target.port)]
    if target.user:
        argv += ["-l", target.user]
    return argv + ["-o", "ControlMaster=no", "-o", "BatchMode=yes", "-q", target.host]


async def find(target: Target) -> Master | None:
    """The person's master connection for the target, when one is open (`ssh -O check`)."""
    argv = ssh_argv(target)
    if argv is None:
        return None
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv[:-1], "-O", "check", argv[-1], stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)
        code = await asyncio.wait_for(proc.wait(), CHECK_TIMEOUT)
    except (OSError, asyncio.TimeoutError):
        return None
    return Master(argv) if code == 0 else None


async def connect(master: Master, target: Target, label: str) -> asyncssh.SSHClientConnection:
    """An SSH connection to the remote's `sshd -i`, started through the master."""
    host_key = asyncssh.generate_private_key("ssh-ed25519")
    client_key = asyncssh.generate_private_key("ssh-ed25519")
    folder_id = secrets.token_hex(8)
    script = PREPARE % {"id": folder_id, "hostkey": host_key.export_private_key().decode(),
                        "client_pub": client_key.export_public_key().decode().strip()}
    proc = await asyncio.create_subprocess_exec(
        *master.argv, "sh -s", stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE)
    try:
        out, err = await asyncio.wait_for(proc.communicate(script.encode()), PREPARE_TIMEOUT)
    except asyncio.TimeoutError:
        proc.kill()
        raise OSError(f"{label}: the OpenSSH master did not answer in {PREPARE_TIMEOUT} s") from None
    lines = out.decode(errors="replace").splitlines()
    ok = next((i for i, line in enumerate(lines) if line.startswith("OK ")), None)
    if ok is None or len(lines) < ok + 3:
        why = "no sshd on the remote" if "NOSSHD" in lines else (err.decode(errors="replace").strip() or out.decode())
        raise OSError(f"{label}: cannot use the OpenSSH master connection: {why}")
    user, folder, sshd = lines[ok][3:].strip(), lines[ok + 1], lines[ok + 2]
    inner = " ".join(shlex.quote(a) for a in (sshd, "-i", "-f", f"{folder}/sshd_config"))
    try:
        conn = await asyncssh.connect(
            target.host, username=user, proxy_command=[*master.argv, inner], config=[],
            known_hosts=([host_key.convert_to_public()], [], []), client_keys=[client_key],
            agent_path=None, preferred_auth="publickey", keepalive_interval=15, keepalive_count_max=4)
    finally:
        await _remove(master, folder)
    via = f"your OpenSSH master connection ({' '.join(master.argv[1:])})"
    conn.set_extra_info(remote_dev_via=via)
    log.info("%s: connected through %s", label, via)
    return conn


async def _remove(master: Master, folder: str) -> None:
    """The keys of this connection are read: gone from the remote."""
    try:
        proc = await asyncio.create_subprocess_exec(
            *master.argv, "rm -rf " + shlex.quote(folder), stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)
        await asyncio.wait_for(proc.wait(), PREPARE_TIMEOUT)
    except (OSError, asyncio.TimeoutError):
        log.warning("could not remove %s through the master", folder)
