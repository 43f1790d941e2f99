#!/usr/bin/env python3
"""A WAN-like link to a real sshd on this machine, as root: rate and round trip of your choice.

    python bench/wan.py up [--name rdwan] [--rate 100mbit] [--rtt-ms 40] [--queue-ms 100] [--check]
    python bench/wan.py down [--name rdwan]
    python bench/wan.py proxy-ceiling [--mb 1000] [--delay-ms 20]

    with WanBed("rdwan", rate="20mbit", rtt_ms=80) as bed:      # from Python
        subprocess.run(["ssh", "-F", bed.ssh_config, bed.alias, "true"])

What it builds (this kernel has no netem, fq_codel nor cake; tbf works):

  * a network namespace NAME with its own OpenSSH sshd (tests/support/sshd.py writes its
    config, host key and a known_hosts holding that key: host-key checking stays on);
  * a veth pair NAME-h (here) / NAME-n (in the namespace) with addresses of a private /24 of
    10.213.x.0 that no address or route of this machine uses (the first free x);
  * `tc qdisc replace dev IF root tbf rate R burst B latency Q` on BOTH ends: the rate each
    way, B = max(64 KiB, 10 ms at R) (a GSO packet fits), Q = --queue-ms of queue;
  * a userspace TCP delay proxy INSIDE the namespace in front of that sshd, holding each
    direction's bytes RTT/2 before passing them on, in order, unchanged.  Bounded: it stops
    reading a side while 32 MB wait in its delay line or the other side's socket is full, so
    the link's own backpressure reaches the sender as on a real link.

Host aliases in NAME's ssh config (printed by `up`): NAME (rate + round trip, through the
proxy) and NAME-direct (rate only).  Everything of a bed lives in bench/.work/wan-NAME; all
of it is named after NAME, so `up` first removes whatever a crashed earlier run of the same
NAME left (processes in the namespace, the veth, the namespace), and `down` / leaving the
`with` block (also on Ctrl-C, SIGTERM or an exception) removes it all.  A bed in use by a
live process (a lock in /run/lock) is never torn down by another: that one stops with a
message instead.

Limits of the model: the delay is applied per byte in userspace, so TCP's own control loop
(slow start, congestion window) runs at the veth's round trip, not at the configured one;
a new TCP connection costs no extra round trip for its handshake.  Application round trips
(SSH window adjustments, requests and answers) pay the full RTT, and the rate is the
kernel's.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import fcntl
import hashlib
import ipaddress
import json
import os
import random
import re
import signal
import socket
import statistics
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
WORK = REPO / "bench" / ".work"
SUBNET_BASE = "10.213"           # 10.213.x.0/24, the first x nothing on this machine uses
SSHD_PORT = 2222                  # the sshd inside the namespace (NAME-direct)
PROXY_PORT = 22                   # the delay proxy in front of it (NAME)
LOCK_DIR = Path("/run/lock")
if str(REPO / "tests") not in sys.path:
    sys.path.insert(0, str(REPO / "tests"))   # support.sshd


# --------------------------------------------------------------------------- the delay proxy

HIGH_WATER = 32 << 20             # bytes held in one direction's delay line before reading stops
LOW_WATER = 16 << 20


class _Direction:
    """Bytes read from src reach dst `delay` seconds later, in order.  Reading src pauses while
    HIGH_WATER bytes wait here or dst's socket buffer is full; EOF and close follow the data."""

    def __init__(self, loop: asyncio.AbstractEventLoop, delay: float) -> None:
        self.loop = loop
        self.delay = delay
        self.line: collections.deque[tuple[float, bytes | None]] = collections.deque()
        self.held = 0
        self.src: asyncio.Transport | None = None
        self.dst: asyncio.Transport | None = None
        self.dst_full = False
        self.paused = False
        self.timer: asyncio.TimerHandle | None = None
        self.closed = False

    def feed(self, data: bytes | None) -> None:
        """data, or None for "src closed" (EOF first, then close)."""
        self.line.append((self.loop.time() + self.delay, data))
        if data:
            self.held += len(data)
        self._arm()
        self._backpressure()

    def _arm(self) -> None:
        if self.timer is None and self.line and self.dst is not None:
            self.timer = self.loop.call_at(self.line[0][0], self._flush)

    def _flush(self) -> None:
        self.timer = None
        now = self.loop.time()
        out: list[bytes] = []
        dst = self.dst
        assert dst is not None
        while self.line and self.line[0][0] <= now:
            _, data = self.line.popleft()
            if data is None:
                if out:
                    dst.write(b"".join(out))
                    out = []
                self.closed = True
                if not dst.is_closing():
                    try:
                        dst.write_eof()
                    except OSError:       # the peer is gone already
                        dst.abort()
                continue
            self.held -= len(data)
            out.append(data)
        if out and not dst.is_closing():
            dst.write(b"".join(out))
        self._arm()
        self._backpressure()

    def _backpressure(self) -> None:
        if self.src is None or self.src.is_closing():
            return
        if not self.paused and (self.held > HIGH_WATER or self.dst_full):
            self.src.pause_reading()
            self.paused = True
        elif self.paused and self.held < LOW_WATER and not self.dst_full:
            self.src.resume_reading()
            self.paused = False


class _Side(asyncio.Protocol):
    """One socket of a proxied connection: what it reads feeds `out`; `inp` writes to it."""

    def __init__(self, out: _Direction, inp: _Direction, on_lost: Any) -> None:
        self.out, self.inp, self.on_lost = out, inp, on_lost
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        transport.set_write_buffer_limits(high=1 << 20)
        self.out.src = transport
        self.inp.dst = transport
        self.inp._arm()
        self.out._backpressure()

    def data_received(self, data: bytes) -> None:
        self.out.feed(data)

    def eof_received(self) -> bool:
        self.out.feed(None)
        return True               # keep writing the other direction (a half-close)

    def pause_writing(self) -> None:
        self.inp.dst_full = True
        self.inp._backpressure()

    def resume_writing(self) -> None:
        self.inp.dst_full = False
        self.inp._backpressure()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.out.closed:
            self.out.feed(None)   # tell the other side, after the data still on its way
        self.on_lost(self)


async def serve_proxy(listen: tuple[str, int], target: tuple[str, int], delay: float,
                      ready: threading.Event | None = None) -> None:
    """Accept on listen; each connection gets its own to target, every byte delayed by
    `delay` seconds in each direction."""
    loop = asyncio.get_running_loop()

    def accept() -> asyncio.Protocol:
        up, down = _Direction(loop, delay), _Direction(loop, delay)
        sides: list[_Side] = []

        def lost(side: _Side) -> None:
            # the peer's close is queued behind its data; abort only when both are gone
            if all(s.transport is None or s.transport.is_closing() for s in sides):
                for s in sides:
                    if s.transport is not None:
                        s.transport.close()

        client = _Side(up, down, lost)
        sides.append(client)

        async def connect() -> None:
            try:
                _, server = await loop.create_connection(lambda: _Side(down, up, lost), *target)
                sides.append(server)  # type: ignore[arg-type]
            except OSError:
                if client.transport is not None:
                    client.transport.abort()
        loop.create_task(connect())
        return client

    server = await loop.create_server(accept, *listen, reuse_address=True, backlog=128)
    if ready is not None:
        ready.set()
    async with server:
        await server.serve_forever()


def proxy_main(listen: str, target: str, delay_ms: float) -> None:
    def addr(s: str) -> tuple[str, int]:
        host, _, port = s.rpartition(":")
        return host, int(port)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve_proxy(addr(listen), addr(target), delay_ms / 1000))


# --------------------------------------------------------------------------- helpers


def sh(*argv: str, check: bool = True, ns: str | None = None) -> subprocess.CompletedProcess[str]:
    if ns:
        argv = ("ip", "netns", "exec", ns, *argv)
    return subprocess.run(argv, capture_output=True, text=True, check=check, timeout=60)


def rate_bits(rate: str) -> float:
    """tc's rate syntax (100mbit, 20mbit, 1gbit, 500kbit, 12mbps) in bits per second."""
    m = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([kmgt]?)(bit|bps)?", rate.strip().lower())
    if not m:
        raise ValueError(f"rate {rate!r}: say e.g. 100mbit or 20mbit")
    mult = {"": 1, "k": 1e3, "m": 1e6, "g": 1e9, "t": 1e12}[m.group(2)]
    return float(m.group(1)) * mult * (8 if m.group(3) == "bps" else 1)


def check_name(name: str) -> None:
    if not re.fullmatch(r"[a-z][a-z0-9]{0,10}", name):
        raise SystemExit(f"bed name {name!r}: 1-11 lower-case letters/digits (interface names "
                         f"NAME-h / NAME-n must fit in 15 characters)")


def netns_exists(name: str) -> bool:
    return name in sh("ip", "netns", "list").stdout.split()


def link_exists(dev: str) -> bool:
    return sh("ip", "link", "show", dev, check=False).returncode == 0


def used_networks() -> list[ipaddress.IPv4Network]:
    nets = []
    for line in sh("ip", "-4", "-o", "addr").stdout.splitlines():
        m = re.search(r"inet (\S+)", line)
        if m:
            nets.append(ipaddress.ip_interface(m.group(1)).network)
    for line in sh("ip", "-4", "route", "show", "table", "all").stdout.splitlines():
        word = line.split()[0] if line.split() else ""
        if word in ("broadcast", "local", "unreachable", "blackhole", "prohibit", "throw"):
            word = line.split()[1]
        if word in ("default", "") or word.startswith("0.0.0.0"):
            continue
        with contextlib.suppress(ValueError):
            nets.append(ipaddress.ip_network(word, strict=False))
    return nets


def free_subnet() -> ipaddress.IPv4Network:
    used = used_networks()
    for x in range(1, 255):
        net = ipaddress.ip_network(f"{SUBNET_BASE}.{x}.0/24")
        if not any(net.overlaps(u) for u in used):
            return net
    raise SystemExit(f"no free /24 in {SUBNET_BASE}.0.0/16")


def kill_pids(pids: list[int], timeout: float = 5.0) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        alive = [p for p in pids if Path(f"/proc/{p}").exists() and not _zombie(p)]
        if not alive:
            return
        time.sleep(0.05)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except (OSError, IndexError):
        return True


def teardown(name: str, base: Path) -> list[str]:
    """Remove everything bed `name` may have left: its ssh ControlMasters, every process in
    its namespace (sshd and what it started, the proxy), the veth pair (its qdiscs go with
    it), the namespace.  Returns what it found."""
    found = []
    for sock in sorted(base.glob("cm-*")):
        found.append(f"ssh master {sock.name}")
        subprocess.run(["ssh", "-S", str(sock), "-O", "exit", "x"], capture_output=True, timeout=10, check=False)
        with contextlib.suppress(OSError):
            sock.unlink()
    if netns_exists(name):
        pids = [int(p) for p in sh("ip", "netns", "pids", name, check=False).stdout.split()]
        if pids:
            found.append(f"{len(pids)} process(es) in netns {name}")
            kill_pids(pids)
    for dev in (f"{name}-h",):
        if link_exists(dev):
            found.append(f"veth {dev}")
            sh("ip", "link", "del", dev, check=False)
    if netns_exists(name):
        found.append(f"netns {name}")
        sh("ip", "netns", "del", name, check=False)
    return found


# --------------------------------------------------------------------------- the bed


class WanBed:
    """A namespace with its own sshd, behind tbf and a delay proxy; a context manager."""

    def __init__(self, name: str = "rdwan", rate: str = "100mbit", rtt_ms: float = 40.0,
                 queue_ms: float = 100.0, base: Path | None = None, quiet: bool = False) -> None:
        check_name(name)
        self.name = name
        self.rate = rate
        self.rate_bps = rate_bits(rate)
        self.rtt_ms = rtt_ms
        self.queue_ms = queue_ms
        self.base = base or WORK / f"wan-{name}"
        self.alias = name
        self.direct_alias = f"{name}-direct"
        self.ssh_config = self.base / "sshd" / "ssh_config"
        self.quiet = quiet
        self.subnet: ipaddress.IPv4Network | None = None
        self.host_ip = self.ns_ip = ""
        self.sshd: Any = None
        self.proxy: subprocess.Popen[bytes] | None = None
        self._lock_fd: int | None = None

    def say(self, text: str) -> None:
        if not self.quiet:
            print(text, flush=True)

    # -- lifecycle
    def __enter__(self) -> WanBed:
        self.lock()
        try:
            self.up()
        except BaseException:
            self.down()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.down()

    def lock(self) -> None:
        """One live user per name: a second one stops here instead of tearing down a bed in use."""
        LOCK_DIR.mkdir(parents=True, exist_ok=True)
        fd = os.open(LOCK_DIR / f"remote-dev-wan-{self.name}.lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            owner = os.pread(fd, 64, 0).decode(errors="replace").strip()
            os.close(fd)
            raise SystemExit(f"WAN bed {self.name!r} is in use by pid {owner or '?'}; "
                             f"pick another --name") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._lock_fd = fd

    def unlock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def up(self) -> None:
        if os.geteuid() != 0:
            raise SystemExit("the WAN bed needs root (network namespace, veth, tc)")
        from support.sshd import start_sshd

        left = teardown(self.name, self.base)
        if left:
            self.say(f"[{self.name}] removed leftovers of an earlier run: {', '.join(left)}")
        name, h, n = self.name, f"{self.name}-h", f"{self.name}-n"
        self.subnet = free_subnet()
        hosts = list(self.subnet.hosts())
        self.host_ip, self.ns_ip = str(hosts[0]), str(hosts[1])
        plen = self.subnet.prefixlen
        sh("ip", "netns", "add", name)
        sh("ip", "link", "add", h, "type", "veth", "peer", "name", n)
        sh("ip", "link", "set", n, "netns", name)
        sh("ip", "addr", "add", f"{self.host_ip}/{plen}", "dev", h)
        sh("ip", "link", "set", h, "up")
        sh("ip", "addr", "add", f"{self.ns_ip}/{plen}", "dev", n, ns=name)
        sh("ip", "link", "set", n, "up", ns=name)
        sh("ip", "link", "set", "lo", "up", ns=name)
        burst = max(64 << 10, int(self.rate_bps / 8 * 0.010))
        tbf = ["root", "tbf", "rate", self.rate, "burst", str(burst), "latency", f"{self.queue_ms:g}ms"]
        sh("tc", "qdisc", "replace", "dev", h, *tbf)
        sh("tc", "qdisc", "replace", "dev", n, *tbf, ns=name)
        self.sshd = start_sshd(self.base / "sshd", alias=self.direct_alias, extra_config="AcceptEnv SHLVL\n",
                               listen=self.ns_ip, port=SSHD_PORT, wrap=("ip", "netns", "exec", name),
                               new_session=True)
        with open(self.base / "proxy.log", "ab") as log:   # detached: no stdio of ours kept open
            self.proxy = subprocess.Popen(
                ["ip", "netns", "exec", name, sys.executable, str(Path(__file__).resolve()), "proxy",
                 "--listen", f"{self.ns_ip}:{PROXY_PORT}", "--target", f"{self.ns_ip}:{SSHD_PORT}",
                 "--delay-ms", f"{self.rtt_ms / 2:g}"],
                start_new_session=True, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=log)
        deadline = time.monotonic() + 10
        while True:
            try:
                with socket.create_connection((self.ns_ip, PROXY_PORT), timeout=1) as s:
                    if s.recv(4).startswith(b"SSH-"):
                        break
            except OSError:
                pass
            if time.monotonic() > deadline or self.proxy.poll() is not None:
                raise RuntimeError(f"[{name}] the delay proxy did not answer on {self.ns_ip}:{PROXY_PORT}")
            time.sleep(0.05)
        self._write_ssh_config()
        (self.base / "bed.json").write_text(json.dumps(
            {"name": name, "rate": self.rate, "rtt_ms": self.rtt_ms, "queue_ms": self.queue_ms,
             "subnet": str(self.subnet), "alias": self.alias, "ssh_config": str(self.ssh_config)}) + "\n")
        self.say(f"[{name}] up: {self.rate} each way, {self.rtt_ms:g} ms RTT (+ up to {self.queue_ms:g} ms "
                 f"queue), {self.host_ip} <-> {self.ns_ip} (netns {name})")

    def _write_ssh_config(self) -> None:
        user = self.sshd.ssh_config.read_text().split("User ", 1)[1].split()[0]
        with open(self.ssh_config, "a") as f:
            f.write(textwrap.dedent(f"""\
                Host {self.alias}
                  HostName {self.ns_ip}
                  Port {PROXY_PORT}
                  User {user}
                  IdentityFile {self.sshd.user_key}
                  IdentitiesOnly yes
                  UserKnownHostsFile {self.sshd.known_hosts}
                  StrictHostKeyChecking yes
                  ControlMaster auto
                  ControlPath {self.base}/cm-%C
                  ControlPersist 600
                """))
        pub = (self.sshd.dir / "hostkey.pub").read_text().split()
        with open(self.sshd.known_hosts, "a") as f:
            f.write(f"{self.ns_ip} {pub[0]} {pub[1]}\n")   # port 22: no [host]:port form
        # the direct alias's ControlPath next to the others, so teardown finds every master
        text = self.ssh_config.read_text().replace(f"ControlPath {self.sshd.dir}/cm-%C", f"ControlPath {self.base}/cm-%C")
        self.ssh_config.write_text(text)

    def down(self) -> None:
        try:
            left = teardown(self.name, self.base)
            if self.proxy is not None:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self.proxy.wait(5)
            if self.sshd is not None:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self.sshd.proc.wait(5)
            self.proxy = self.sshd = None
            if left:
                self.say(f"[{self.name}] down: removed {', '.join(left)}")
        finally:
            self.unlock()

    # -- using it
    def open_master(self, alias: str | None = None) -> None:
        subprocess.run(["ssh", "-F", str(self.ssh_config), "-fN", alias or self.alias], check=True, timeout=60)

    def check(self, mb: int = 50) -> dict[str, float]:
        """`ssh host true` over a ControlMaster (plain, and lean: SHLVL=1, so the remote bash
        skips ~/.bashrc), and `mb` MB of random bytes through ssh each way."""
        self.open_master()
        cfg = ["-F", str(self.ssh_config)]
        lean_cp = ["-o", "SetEnv=SHLVL=1", "-o", f"ControlPath={self.base}/cm-lean-%C"]
        subprocess.run(["ssh", *cfg, *lean_cp, "-fN", self.alias], check=True, timeout=60)

        def timed(argv: list[str], **kw: Any) -> float:
            # no timeout=: Popen.wait(timeout) polls with sleeps of up to 50 ms, which would be timed
            t0 = time.perf_counter()
            subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, **kw)
            return time.perf_counter() - t0
        plain_argv, lean_argv = ["ssh", *cfg, self.alias, "true"], ["ssh", *cfg, *lean_cp, self.alias, "true"]
        timed(plain_argv), timed(lean_argv)            # each master's first session is slower
        true = statistics.median(timed(plain_argv) for _ in range(5))
        lean = statistics.median(timed(lean_argv) for _ in range(5))
        blob = self.base / "random.bin"
        if not blob.exists() or blob.stat().st_size != mb * 1_000_000:
            blob.write_bytes(os.urandom(mb * 1_000_000))
        with open(blob, "rb") as f:
            up = timed(["ssh", *cfg, *lean_cp, self.alias, "cat > /dev/null"], stdin=f)
        down = timed(["ssh", *cfg, *lean_cp, self.alias, f"cat {blob}"])
        ideal = mb * 8e6 / self.rate_bps
        rtt = self.rtt_ms / 1000
        self.say(f"[{self.name}] check: `ssh host true` over a ControlMaster {true * 1000:.0f} ms "
                 f"(lean, no ~/.bashrc: {lean * 1000:.0f} ms; RTT {self.rtt_ms:g} ms)")
        self.say(f"[{self.name}] check: {mb} MB random through ssh: up {up:.2f} s ({mb * 8 / up:.0f} Mbit/s), "
                 f"down {down:.2f} s ({mb * 8 / down:.0f} Mbit/s); at {self.rate} alone: {ideal:.2f} s")
        return {"true": true, "lean_true": lean, "up": up, "down": down, "ideal": ideal, "rtt": rtt}


# --------------------------------------------------------------------------- proxy ceiling


def intact(port: int, mb: int = 64) -> float:
    """Random bytes in writes of random sizes (1 B .. 256 KiB, with pauses) through an echo
    server behind the proxy: what comes back must be the same bytes in the same order."""
    rng = random.Random(7)
    data = rng.randbytes(mb * 1_000_000)
    back = bytearray()
    with socket.create_connection(("127.0.0.1", port)) as c:
        c.sendall(b"e")

        def send() -> None:
            i = 0
            while i < len(data):
                n = rng.choice((1, 7, 1500, 65536, 262144, rng.randrange(1, 300000)))
                c.sendall(data[i:i + n])
                i += n
                if rng.random() < 0.001:
                    time.sleep(0.01)
            c.shutdown(socket.SHUT_WR)
        t = threading.Thread(target=send)
        t.start()
        while chunk := c.recv(1 << 20):
            back += chunk
        t.join()
    if hashlib.sha256(back).digest() != hashlib.sha256(data).digest():
        raise RuntimeError(f"the delay proxy changed the byte stream ({len(back)} bytes back of {len(data)})")
    return mb


def proxy_ceiling(mb: int, delay_ms: float) -> dict[str, float]:
    """The proxy alone on loopback (no namespace, no tbf): MB/s each way through it, with a
    plain TCP source and sink in this process's threads."""
    from support.sshd import free_port

    sink_port, proxy_port = free_port(), free_port()
    total = mb * 1_000_000
    chunk = os.urandom(1 << 20)
    results: dict[str, float] = {}
    srv = socket.create_server(("127.0.0.1", sink_port))

    def serve() -> None:
        while True:
            try:
                c, _ = srv.accept()
            except OSError:
                return
            threading.Thread(target=sink, args=(c,), daemon=True).start()

    def sink(c: socket.socket) -> None:
        with c, contextlib.suppress(OSError):
                cmd = c.recv(1)
                if cmd == b"u":                       # read until EOF, answer the count
                    n = 0
                    while data := c.recv(1 << 20):
                        n += len(data)
                    c.sendall(str(n).encode())
                elif cmd == b"d":                     # send `total` bytes
                    left = total
                    while left > 0:
                        c.sendall(chunk[:min(left, len(chunk))])
                        left -= min(left, len(chunk))
                elif cmd == b"e":                     # echo until EOF
                    while data := c.recv(1 << 16):
                        c.sendall(data)
                    c.shutdown(socket.SHUT_WR)
    threading.Thread(target=serve, daemon=True).start()
    proxy = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "proxy",
                              "--listen", f"127.0.0.1:{proxy_port}", "--target", f"127.0.0.1:{sink_port}",
                              "--delay-ms", str(delay_ms)])
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", proxy_port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        results["intact_mb"] = intact(proxy_port)
        for port, label in ((sink_port, "direct"), (proxy_port, "proxy")):
            with socket.create_connection(("127.0.0.1", port)) as c:   # up: we send, the sink counts
                t0 = time.perf_counter()
                c.sendall(b"u")
                left = total
                while left > 0:
                    c.sendall(chunk[:min(left, len(chunk))])
                    left -= min(left, len(chunk))
                c.shutdown(socket.SHUT_WR)
                got = int(c.recv(64) or b"0")
                results[f"{label}_up"] = total / 1e6 / (time.perf_counter() - t0)
                assert got == total, (label, got, total)
            with socket.create_connection(("127.0.0.1", port)) as c:   # down: the sink sends
                t0 = time.perf_counter()
                c.sendall(b"d")
                n = 0
                while n < total and (data := c.recv(1 << 20)):
                    n += len(data)
                results[f"{label}_down"] = total / 1e6 / (time.perf_counter() - t0)
                assert n == total, (label, n, total)
            with socket.create_connection(("127.0.0.1", port)) as c:   # a round trip
                c.sendall(b"d")
                t0 = time.perf_counter()
                c.recv(1)
                results[f"{label}_first_byte_ms"] = (time.perf_counter() - t0) * 1000
    finally:
        proxy.terminate()
        proxy.wait(5)
        srv.close()
    print(f"delay proxy: {results['intact_mb']:.0f} MB echoed through it in writes of 1 B .. 256 KiB came back "
          f"intact (sha256)")
    print(f"delay proxy alone on loopback ({mb} MB each way, {delay_ms:g} ms each way, no tbf): "
          f"up {results['proxy_up']:.0f} MB/s, down {results['proxy_down']:.0f} MB/s "
          f"(plain TCP without it: {results['direct_up']:.0f} / {results['direct_down']:.0f} MB/s); "
          f"request to first byte {results['proxy_first_byte_ms']:.1f} ms (2 x {delay_ms:g} ms expected)")
    return results


# --------------------------------------------------------------------------- CLI


def catch_signals() -> None:
    """SIGTERM and SIGINT (even when started with SIGINT ignored, as `cmd &` in a script does)
    raise KeyboardInterrupt, so `with WanBed(...)` and finally blocks tear down."""
    def interrupt(*_: object) -> None:
        raise KeyboardInterrupt
    signal.signal(signal.SIGTERM, interrupt)
    signal.signal(signal.SIGINT, interrupt)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    up = sub.add_parser("up", help="bring the bed up and leave it running; prints the ssh config to use")
    up.add_argument("--name", default="rdwan")
    up.add_argument("--rate", default="100mbit", help="tbf rate each way (default 100mbit)")
    up.add_argument("--rtt-ms", type=float, default=40.0, help="round trip added by the proxy (default 40)")
    up.add_argument("--queue-ms", type=float, default=100.0, help="tbf queue (its latency; default 100)")
    up.add_argument("--check", action="store_true", help="then measure ssh true and 50 MB each way")
    down = sub.add_parser("down", help="remove the bed (and the leftovers of a crashed run)")
    down.add_argument("--name", default="rdwan")
    ceil = sub.add_parser("proxy-ceiling", help="the delay proxy alone on loopback: its MB/s")
    ceil.add_argument("--mb", type=int, default=1000)
    ceil.add_argument("--delay-ms", type=float, default=20.0)
    px = sub.add_parser("proxy", help="(internal) run the delay proxy in the foreground")
    px.add_argument("--listen", required=True)
    px.add_argument("--target", required=True)
    px.add_argument("--delay-ms", type=float, required=True)
    args = p.parse_args(argv)
    if args.cmd == "proxy":
        proxy_main(args.listen, args.target, args.delay_ms)
        return
    if args.cmd == "proxy-ceiling":
        proxy_ceiling(args.mb, args.delay_ms)
        return
    catch_signals()
    if args.cmd == "down":
        check_name(args.name)
        bed = WanBed(args.name)
        bed.lock()
        left = teardown(args.name, bed.base)
        bed.unlock()
        print(f"[{args.name}] " + (f"removed {', '.join(left)}" if left else "nothing to remove"))
        return
    bed = WanBed(args.name, args.rate, args.rtt_ms, args.queue_ms)
    bed.lock()
    try:
        bed.up()
        if args.check:
            bed.check()
    except BaseException:
        bed.down()
        raise
    bed.unlock()   # the bed stays up; `down` (or the next `up` of this name) removes it
    print(textwrap.dedent(f"""\

        ssh -F {bed.ssh_config} {bed.alias} ...          # {bed.rate}, {bed.rtt_ms:g} ms RTT
        ssh -F {bed.ssh_config} {bed.direct_alias} ...   # {bed.rate}, no added delay
        remote_dev target: host = "{bed.alias}", ssh_config = "{bed.ssh_config}"
        python bench/wan.py down --name {bed.name}      # when done"""))


if __name__ == "__main__":
    main()
