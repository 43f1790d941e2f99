"""A small DAP client for the engine-level protocol tests (tests/test_debug.py): it speaks the
Debug Adapter Protocol through a debug run's local listener with the exact attach
configuration the plugin generates. The user flows run the real nvim-dap instead
(support/nvim_dap.py, tests/test_debug_nvim.py)."""
from __future__ import annotations

import json
import socket
import time
from typing import Any


class DapClient:
    def __init__(self, host: str, port: int, timeout: float = 30) -> None:
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.sock.settimeout(timeout)
        self.buf = b""
        self.seq = 0
        self.messages: list[dict[str, Any]] = []

    def close(self) -> None:
        self.sock.close()

    def send(self, command: str, **arguments: Any) -> int:
        self.seq += 1
        body = json.dumps({"seq": self.seq, "type": "request", "command": command, "arguments": arguments}).encode()
        self.sock.sendall(b"Content-Length: %d\r\n\r\n" % len(body) + body)
        return self.seq

    def _read(self) -> dict[str, Any] | None:
        while b"\r\n\r\n" not in self.buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                return None
            self.buf += chunk
        head, rest = self.buf.split(b"\r\n\r\n", 1)
        length = int([h for h in head.split(b"\r\n") if h.lower().startswith(b"content-length")][0].split(b":")[1])
        while len(rest) < length:
            chunk = self.sock.recv(65536)
            if not chunk:
                return None
            rest += chunk
        self.buf = rest[length:]
        msg = json.loads(rest[:length])
        self.messages.append(msg)
        return msg

    def wait(self, pred, timeout: float = 30) -> dict[str, Any]:
        for msg in self.messages:
            if pred(msg):
                self.messages.remove(msg)
                return msg
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            msg = self._read()
            if msg is None:
                raise EOFError("debug adapter closed the connection")
            if pred(msg):
                self.messages.remove(msg)
                return msg
        raise TimeoutError("no matching DAP message")

    def response(self, seq: int, timeout: float = 30) -> dict[str, Any]:
        msg = self.wait(lambda m: m.get("type") == "response" and m.get("request_seq") == seq, timeout)
        assert msg["success"], msg
        return msg

    def event(self, name: str, timeout: float = 30) -> dict[str, Any]:
        return self.wait(lambda m: m.get("type") == "event" and m.get("event") == name, timeout)

    def request(self, command: str, **arguments: Any) -> dict[str, Any]:
        return self.response(self.send(command, **arguments))
