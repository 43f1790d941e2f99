"""A TCP proxy in front of a test sshd whose connections can be cut at any moment, as a
network would cut them: both sides get a reset, nothing is flushed.  Its answers (what
the server sends) can also be held back first, so that a cut loses exactly the answers
to requests the server has carried out."""

from __future__ import annotations

import socket
import struct
import threading
from pathlib import Path


class CutProxy:
    def __init__(self, dest_port: int, dest_host: str = "127.0.0.1") -> None:
        self.dest = (dest_host, dest_port)
        self.listener = socket.socket()
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(64)
        self.port = self.listener.getsockname()[1]
        self.lock = threading.Lock()
        self.pairs: list[tuple[socket.socket, socket.socket]] = []
        self.cuts = 0
        self.closed = False
        self.flowing = threading.Event()   # cleared: what the server sends is held back
        self.flowing.set()
        self.sent = 0                      # bytes the clients sent
        self.hold_at: int | None = None    # hold once they sent this many
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self.closed:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            try:
                server = socket.create_connection(self.dest, timeout=10)
                server.settimeout(None)
            except OSError:
                _reset(client)
                continue
            with self.lock:
                self.pairs.append((client, server))
            for a, b in ((client, server), (server, client)):
                threading.Thread(target=self._pump, args=((client, server), a, b), daemon=True).start()

    def _pump(self, pair: tuple[socket.socket, socket.socket], src: socket.socket, dst: socket.socket) -> None:
        try:
            while True:
                data = src.recv(1 << 16)
                if not data:
                    break
                if src is pair[1]:
                    self.flowing.wait()
                else:
                    self.sent += len(data)
                    if self.hold_at is not None and self.sent >= self.hold_at:
                        self.flowing.clear()
                dst.sendall(data)
        except OSError:
            pass
        with self.lock:
            if pair not in self.pairs:
                return   # cut: no orderly end on the other side
            try:
                dst.shutdown(socket.SHUT_WR)
            except OSError:
                pass

    def hold(self, after: int = 0) -> None:
        """Hold back what the server sends (until the next cut) from now on, or once the
        clients sent `after` bytes more; requests still go through."""
        if after:
            self.hold_at = self.sent + after
        else:
            self.flowing.clear()

    def cut(self) -> int:
        """Reset every connection going through (what was held back is lost); how many
        were cut."""
        with self.lock:
            pairs, self.pairs = self.pairs, []
            for a, b in pairs:
                _reset(a)
                _reset(b)
        self.hold_at = None
        self.flowing.set()
        self.cuts += 1
        return len(pairs)

    def close(self) -> None:
        self.closed = True
        self.listener.close()
        self.cut()

    def known_hosts(self, hostkey_pub: Path, where: Path) -> Path:
        """A known_hosts file trusting the sshd's host key at the proxy's address."""
        kind, key = hostkey_pub.read_text().split()[:2]
        where.write_text(f"[127.0.0.1]:{self.port} {kind} {key}\n")
        return where


def _reset(sock: socket.socket) -> None:
    """Close with a reset (linger 0), waking the thread reading it."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.shutdown(socket.SHUT_RD)
    except OSError:
        pass
    try:
        sock.close()
    except OSError:
        pass
