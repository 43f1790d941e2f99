"""asyncssh connections from ~/.ssh/config (or the target's ssh_config) and known_hosts.

Host keys are always checked.  Every expected failure becomes one ConnectError whose
message names the host and says what to do.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import threading
from typing import Any, Coroutine, TypeVar

import asyncssh
import asyncssh.connection
from asyncssh.constants import MSG_IGNORE
from asyncssh.encryption import ChachaEncryption, GCMEncryption, get_default_encryption_algs

from .config import Target
from . import master
from .errors import ConnectError
from .login import Ask, LoginClient, LoginState, MasterCheck, refusal

log = logging.getLogger("remote_dev")

KEEPALIVE_INTERVAL = 15
KEEPALIVE_COUNT_MAX = 4
CONNECT_TIMEOUT = 15
T = TypeVar("T")


def _expand(path: str | None) -> str | None:
    return os.path.expanduser(path) if path else None


def default_known_hosts() -> str:
    return os.path.expanduser("~/.ssh/known_hosts")


async def connection_options(target: Target) -> tuple[dict[str, Any], asyncssh.SSHClientConnectionOptions]:
    """The keyword arguments for asyncssh.connect, and the options they resolve to (so
    errors can name the real address and known_hosts file)."""
    kwargs: dict[str, Any] = {
        "keepalive_interval": KEEPALIVE_INTERVAL,
        "keepalive_count_max": KEEPALIVE_COUNT_MAX,
        "connect_timeout": CONNECT_TIMEOUT,
    }
    if target.ssh_config:
        kwargs["config"] = [_expand(target.ssh_config)]
    if target.port:
        kwargs["port"] = target.port
    if target.user:
        kwargs["username"] = target.user
    if target.identity_file:
        kwargs["client_keys"] = [_expand(target.identity_file)]
    if target.known_hosts:
        kwargs["known_hosts"] = _expand(target.known_hosts)
    try:
        options = await asyncssh.SSHClientConnectionOptions.construct(None, host=target.host, **kwargs)
    except (OSError, ValueError, asyncssh.Error) as e:
        raise ConnectError(f"{target.host}: bad ssh settings: {e}", kind="config") from None
    if options.known_hosts is None:
        # A config saying `UserKnownHostsFile none` would turn checking off: never.
        kwargs["known_hosts"] = default_known_hosts()
        options = await asyncssh.SSHClientConnectionOptions.construct(None, host=target.host, **kwargs)
    if [bytes(a) for a in options.encryption_algs] == list(get_default_encryption_algs()):
        # No Ciphers configured: AES-GCM first.  With AES-NI it costs asyncssh (and sshd)
        # well under chacha20-poly1305's CPU, which bounds push throughput; both are secure.
        gcm = [b"aes128-gcm@openssh.com", b"aes256-gcm@openssh.com"]
        kwargs["encryption_algs"] = [a.decode() for a in gcm + [a for a in options.encryption_algs if a not in gcm]]
    return kwargs, options


def _known_hosts_files(options: asyncssh.SSHClientConnectionOptions) -> list[str]:
    kh = options.known_hosts
    if kh is None or kh == ():
        return [default_known_hosts()]
    if isinstance(kh, (str, bytes, os.PathLike)):
        return [os.fsdecode(kh)]
    if isinstance(kh, (list, tuple)):
        return [os.fsdecode(p) for p in kh if isinstance(p, (str, bytes, os.PathLike))]
    return []


def _has_known_key(files: list[str], host: str, port: int) -> bool:
    for f in files:
        if not os.path.exists(f):
            continue
        try:
            trusted = asyncssh.read_known_hosts(f).match(host, "", port)
        except (OSError, ValueError, asyncssh.Error):
            continue
        if any(trusted[:2]):
            return True
    return False


def _host_label(target: Target, options: asyncssh.SSHClientConnectionOptions) -> tuple[str, str, int]:
    real = getattr(options, "host", None) or target.host
    port = getattr(options, "port", None) or 22
    label = target.host if real == target.host else f"{target.host} ({real})"
    if port != 22:
        label += f" port {port}"
    return label, real, port


class CoalescedWrites:
    """An SSH connection's transport whose writes of one turn of the event loop go out as
    one.  asyncssh writes every packet on its own (a channel's data in packets of at most
    the server's 32 KB, each after an empty ignore packet unless skip_empty_ignores left it
    out): a big push made a send() system call per packet, the sshd at the other end woke
    for each, and the wire took one TCP push per packet (TCP_NODELAY).  The writes are
    joined and written once, at the loop's next turn (a few microseconds later; no data
    waits for a timer)."""

    def __init__(self, inner: Any, loop: asyncio.AbstractEventLoop) -> None:
        self.inner = inner
        self.loop = loop
        self.pending: list[bytes] = []

    def write(self, data: bytes) -> None:
        if not self.pending:
            self.loop.call_soon(self.flush)
        self.pending.append(data)

    def flush(self) -> None:
        if not self.pending:
            return
        data = self.pending[0] if len(self.pending) == 1 else b"".join(self.pending)
        self.pending = []
        closing = getattr(self.inner, "is_closing", None)   # a ProxyCommand's pipe has none
        if closing is None or not closing():
            self.inner.write(data)

    def get_write_buffer_size(self) -> int:
        size = getattr(self.inner, "get_write_buffer_size", None)
        return sum(map(len, self.pending)) + (size() if size is not None else 0)

    def close(self) -> None:
        """What was written goes first (as the transport's own close does)."""
        self.flush()
        self.inner.close()

    def abort(self) -> None:
        self.pending = []
        self.inner.abort()

    def __getattr__(self, name: str) -> Any:   # get_extra_info, is_closing, pause_reading, ...
        return getattr(self.inner, name)


class PaddingBytes:
    """os as asyncssh's connection module sees it, but for urandom: a packet's padding
    (4-19 bytes a packet) is served from a pool read from os.urandom POOL bytes at a time
    -- the same random bytes, none served twice -- instead of one getrandom system call
    per packet, on the event loop, which gives up the GIL there and waits behind the push's
    worker threads to take it back."""

    POOL = 1 << 16

    def __init__(self) -> None:
        self.buf = b""
        self.pos = 0
        self.lock = threading.Lock()

    def urandom(self, n: int) -> bytes:
        with self.lock:
            if self.pos + n > len(self.buf):
                self.buf, self.pos = os.urandom(max(self.POOL, n)), 0
            self.pos += n
            return self.buf[self.pos - n:self.pos]

    def __getattr__(self, name: str) -> Any:
        return getattr(os, name)


_EMPTY_STRING = b"\0\0\0\0"    # asyncssh's String(b"")


def skip_empty_ignores(conn: asyncssh.SSHClientConnection) -> None:
    """asyncssh puts an empty ignore packet before every packet it encrypts (two packets,
    two encryptions per 32 KB of a channel's data): a defence of CBC modes, whose next IV
    is the last block sent.  With an AEAD cipher (AES-GCM, ChaCha20-Poly1305: a nonce per
    packet) it defends nothing, and OpenSSH never sends them: they are left out there."""
    send = conn.send_packet

    def send_packet(pkttype: int, *args: bytes, handler: Any = None) -> None:
        if pkttype == MSG_IGNORE and args == (_EMPTY_STRING,) and \
                isinstance(getattr(conn, "_send_encryption", None), (GCMEncryption, ChachaEncryption)):
            return
        send(pkttype, *args, handler=handler)
    conn.send_packet = send_packet  # type: ignore[method-assign]


def coalesce_writes(conn: asyncssh.SSHClientConnection) -> None:
    """conn's writes joined per turn of the loop (CoalescedWrites).  This reaches into
    asyncssh's connection (its _transport, which only its _send writes and its close
    paths close or abort; the version is locked): where that is not as expected, conn is
    left as it is."""
    inner = getattr(conn, "_transport", None)
    if inner is None or isinstance(inner, CoalescedWrites) or not callable(getattr(inner, "write", None)):
        log.info("ssh: writes not coalesced (asyncssh's connection has no transport as expected)")
        return
    conn._transport = CoalescedWrites(inner, asyncio.get_running_loop())  # type: ignore[attr-defined]


def lighter_packets(conn: asyncssh.SSHClientConnection) -> asyncssh.SSHClientConnection:
    """conn with asyncssh's per-packet costs cut: its writes coalesced, no empty ignore
    packets with an AEAD cipher, padding from a pool (PaddingBytes, for the whole process)."""
    coalesce_writes(conn)
    skip_empty_ignores(conn)
    if not isinstance(asyncssh.connection.os, PaddingBytes):
        asyncssh.connection.os = PaddingBytes()  # type: ignore[assignment]
    return conn


async def connect(target: Target, ask: Ask | None = None, why: str = "") -> asyncssh.SSHClientConnection:
    """The connection to the target, through its ProxyJump hops (each hop's prompts name
    their host).  ask answers the servers' prompts (a one-time code, a password); why says
    to the person why a login is asked for (again).  When a server would ask and the person
    holds an OpenSSH master connection to the target, that is used instead of asking.  Its
    per-packet costs are cut (lighter_packets)."""
    return lighter_packets(await _connect(target, ask, why))


async def _connect(target: Target, ask: Ask | None, why: str) -> asyncssh.SSHClientConnection:
    kwargs, options = await connection_options(target)
    kwargs.pop("connect_timeout", None)   # ours (_patient) does not count the person's typing
    label, real, port = _host_label(target, options)
    held: list[master.Master] = []

    async def master_open() -> bool:
        found = await master.find(target)
        if found is not None:
            held.append(found)
        return found is not None
    clients: list[LoginClient] = []
    try:
        return await _login(target, kwargs, options, ask, why, clients, master_open)
    except ConnectError:
        if not (held and any(c.state.use_master for c in clients)):
            raise
    try:
        return await asyncio.wait_for(master.connect(held[0], target, label), CONNECT_TIMEOUT)
    except (OSError, asyncssh.Error, asyncio.TimeoutError) as e:
        log.warning("%s: not through the OpenSSH master connection (%s): asking", label, e)
    return await _login(target, kwargs, options, ask, why, [], None)


async def _login(target: Target, kwargs: dict[str, Any], options: asyncssh.SSHClientConnectionOptions,
                 ask: Ask | None, why: str, clients: list[LoginClient], master_open: MasterCheck | None,
                 ) -> asyncssh.SSHClientConnection:
    """A login of our own: each ProxyJump hop, then the target."""
    label, real, port = _host_label(target, options)
    tunnel: asyncssh.SSHClientConnection | None = None
    try:
        for hop in _proxy_jumps(options):
            tunnel = await _open_hop(hop, tunnel, kwargs.get("config"), LoginClient(hop, "?", ask, why, master_open),
                                     clients, label)
        user = getattr(options, "username", None) or target.user or "?"
        client = LoginClient(target.host, user, ask, why, master_open)
        clients.append(client)
        extra = {"tunnel": tunnel} if tunnel is not None else {}
        conn = await _patient(asyncssh.connect(target.host, client_factory=lambda: client, **kwargs, **extra), clients)
        if tunnel is not None:
            conn.set_tunnel(tunnel)
        return conn
    except ConnectError:
        if tunnel is not None:
            tunnel.close()
        raise
    except BaseException as e:
        if tunnel is not None:
            tunnel.close()
        err = _connect_error(e, target, options, label, real, port, clients[-1] if clients else None) \
            if isinstance(e, Exception) else None
        if err is None:
            raise
        raise err from None


def _proxy_jumps(options: asyncssh.SSHClientConnectionOptions) -> list[str]:
    tunnel = getattr(options, "tunnel", None)
    if not isinstance(tunnel, str) or tunnel.lower() == "none":
        return []
    return [h.strip() for h in tunnel.split(",") if h.strip()]


async def _open_hop(hop: str, tunnel: asyncssh.SSHClientConnection | None, config: Any, client: LoginClient,
                    clients: list[LoginClient], label: str) -> asyncssh.SSHClientConnection:
    """One ProxyJump hop ([user@]host[:port]), with its own prompts naming it."""
    user, _, hostport = hop.rpartition("@")
    host, _, port = hostport.partition(":")
    client.host, client.user = host, user or "?"
    clients.append(client)
    try:
        return await _patient(asyncssh.connect(
            host, int(port) if port.isdigit() else (), username=user or (), tunnel=tunnel or (),
            config=config or (), client_factory=lambda: client), clients)
    except asyncssh.PermissionDenied:
        kind, text = refusal(f"{host} (ProxyJump to {label})", client.user, client.state)
        raise ConnectError(text, kind=kind) from None
    except asyncssh.HostKeyNotVerifiable as e:
        raise ConnectError(f"{host} (ProxyJump to {label}): host key not trusted ({e.reason}): check it and trust it "
                           f"by connecting once with `ssh {host}`", kind="hostkey") from None
    except (OSError, asyncssh.Error, asyncio.TimeoutError) as e:
        raise ConnectError(f"{label}: cannot reach the ProxyJump host {host}: {e or type(e).__name__}",
                           kind="network", retry=True) from None


async def _patient(coro: Coroutine[Any, Any, T], clients: list[LoginClient]) -> T:
    """coro, given up after CONNECT_TIMEOUT s without progress; the time a person takes to
    answer a prompt does not count."""
    task = asyncio.ensure_future(coro)
    seen = 0
    try:
        while True:
            done, _ = await asyncio.wait({task}, timeout=CONNECT_TIMEOUT)
            if done:
                return task.result()
            progress = sum(c.state.progress for c in clients)
            if any(c.state.asking for c in clients) or progress != seen:
                seen = progress
                continue
            raise asyncio.TimeoutError()
    finally:
        if not task.done():
            task.cancel()


def _connect_error(e: Exception, target: Target, options: asyncssh.SSHClientConnectionOptions, label: str,
                   real: str, port: int, client: LoginClient | None) -> ConnectError | None:
    """The one-line error for an expected failure of a connect; None for the others (their
    traceback goes to the log)."""
    if isinstance(e, asyncssh.HostKeyNotVerifiable):
        return _host_key_error(target, options, label, real, port)
    if isinstance(e, asyncssh.PermissionDenied):
        user = getattr(options, "username", None) or target.user or "?"
        kind, text = refusal(label, user, client.state if client else LoginState())
        return ConnectError(text, kind=kind)
    if isinstance(e, socket.gaierror):
        return ConnectError(f"{target.host}: unknown host: it is neither a Host alias in the ssh config nor a "
                            f"name that resolves", kind="unknown-host")
    if isinstance(e, asyncio.TimeoutError):
        return ConnectError(f"{label}: timed out connecting after {CONNECT_TIMEOUT} s", kind="timeout", retry=True)
    if isinstance(e, ConnectionRefusedError):
        return ConnectError(f"{label}: connection refused (is sshd running there?)", kind="refused", retry=True)
    if isinstance(e, asyncssh.DisconnectError):
        return ConnectError(f"{label}: disconnected: {e.reason}", kind="disconnect", retry=True)
    if isinstance(e, OSError):
        return ConnectError(f"{label}: cannot connect: {e.strerror or e}", kind="network", retry=True)
    return None


def _host_key_error(target: Target, options: asyncssh.SSHClientConnectionOptions, label: str, real: str,
                    port: int) -> ConnectError:
    files = _known_hosts_files(options)
    where = ", ".join(files) or "known_hosts"
    hostspec = real if port == 22 else f"[{real}]:{port}"
    if _has_known_key(files, real, port):
        return ConnectError(
            f"{label}: REMOTE HOST KEY CHANGED — it does not match the key in {where}. "
            f"This can be an attack. If the host was really reinstalled, remove the old key with "
            f"`ssh-keygen -R '{hostspec}'` and connect once with ssh to check and trust the new one.",
            kind="hostkey")
    pflag = f" -p {port}" if port != 22 else ""
    return ConnectError(
        f"{label}: host key is not trusted: no key for {hostspec} in {where}. "
        f"Check the fingerprint and trust it by connecting once with `ssh{pflag} {target.host}` "
        f"(answer yes), or add it with `ssh-keyscan{pflag} {real} >> {where.split(', ')[0]}`.",
        kind="hostkey")


def tcp_owner(peer: tuple[Any, ...], local: tuple[Any, ...]) -> int | None:
    """The uid owning the socket at peer connected to local when it is a socket of this
    machine (Linux: /proc/net/tcp names every socket's owner), else None.  The debug
    bootstrap on the remote does the same for debugpy's listeners (debug_boot.socket_owner)."""
    import socket
    import struct

    def spelled(host: str, port: int) -> str:
        if host.startswith("::ffff:") and "." in host:
            host = host[7:]
        if ":" in host:
            words = struct.unpack("=4I", socket.inet_pton(socket.AF_INET6, host))
            return "%08X%08X%08X%08X:%04X" % (*words, port)
        return "%08X:%04X" % (struct.unpack("=I", socket.inet_aton(host))[0], port)
    try:
        want = (spelled(peer[0], peer[1]), spelled(local[0], local[1]))
    except (OSError, ValueError, IndexError):
        return None
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as f:
                for line in f.readlines()[1:]:
                    fields = line.split()
                    if len(fields) > 7 and (fields[1], fields[2]) == want:
                        return int(fields[7])
        except OSError:
            continue
    return None


def own_peer(peer: tuple[Any, ...] | None, local: tuple[Any, ...] | None) -> bool:
    """A connection to one of our local listeners (a debug run's, a forward's) from a
    socket of this user -- where the machine says whose a socket is (Linux: a cluster's
    login node, shared by hundreds, where many run Neovim); elsewhere any local one."""
    if not os.path.exists("/proc/net/tcp"):
        return True
    return peer is not None and local is not None and tcp_owner(peer, local) == os.getuid()
