"""The guard the debug bootstrap puts on every listener debugpy opens (agent/remote/debug_boot.py):
the owner's own sockets get in at once, another local user's are closed before a byte is read
(tests/faults/test_attacker_faults.py tries that as a real second user), and a connection
from another host must open with the run's secret. This machine has no second host: for
that path the owner lookup is told the peer is not local (said in the test)."""
from __future__ import annotations

import re
import socket
import threading
import time

import pytest

from conftest import events, wait_for

from remote_dev.agent.remote import debug_boot
from remote_dev.errors import RemoteDevError


def listener(token: str, kind: str = "") -> debug_boot.GuardedListener:
    sock = socket.create_server(("127.0.0.1", 0))
    return debug_boot.GuardedListener(sock, token, kind)


def accepted(guard: debug_boot.GuardedListener, timeout: float = 3.0) -> socket.socket | None:
    guard.settimeout(timeout)
    try:
        return guard.accept()[0]
    except socket.timeout:
        return None


def closed_unanswered(client: socket.socket) -> bool:
    """The guard closed the client's connection without a byte (reset: its bytes unread)."""
    client.settimeout(3)
    try:
        return client.recv(100) == b""
    except ConnectionResetError:
        return True


def test_the_owners_connection_gets_in_at_once():
    guard = listener("s3cret")
    try:
        client = socket.create_connection(guard.getsockname()[:2])
        conn = accepted(guard)
        assert conn is not None
        client.sendall(b"Content-Length: 2\r\n\r\n{}")
        assert conn.recv(100).startswith(b"Content-Length")
        assert debug_boot.socket_owner(client.getsockname(), conn.getsockname()) == debug_boot.os.getuid()
    finally:
        guard.close()


@pytest.mark.parametrize("sent, ok", [(b"s3cret\n", True), (b"wrong!\n", False), (b"", False),
                                       (b"Content-Length: 2\r\n\r\n{}", False)])
def test_from_another_host_only_with_the_runs_secret(monkeypatch, sent, ok):
    # MOCK: a peer on another host cannot exist on this one machine; the owner lookup says
    # "not a socket of this host" as it does for such a peer.
    monkeypatch.setattr(debug_boot, "socket_owner", lambda peer, local: None)
    monkeypatch.setattr(debug_boot, "TOKEN_WAIT", 1.0)
    guard = listener("s3cret")
    try:
        client = socket.create_connection(guard.getsockname()[:2])
        client.sendall(sent)
        conn = accepted(guard, 3.0)
        if ok:
            assert conn is not None
            client.sendall(b"after")
            assert conn.recv(100) == b"after"      # the secret itself never reaches debugpy
        else:
            assert conn is None and guard.refused == 1
            assert closed_unanswered(client)
    finally:
        guard.close()


def test_no_secret_no_way_in_from_another_host(monkeypatch):
    """A run without a secret (none handed down) takes no connection from another host."""
    monkeypatch.setattr(debug_boot, "socket_owner", lambda peer, local: None)
    guard = listener("")
    try:
        client = socket.create_connection(guard.getsockname()[:2])
        client.sendall(b"\n")
        assert accepted(guard, 1.0) is None and guard.refused == 1
    finally:
        guard.close()


def test_close_wakes_a_waiting_accept():
    guard = listener("s3cret")
    errors: list[BaseException] = []

    def wait() -> None:
        try:
            guard.settimeout(None)
            guard.accept()
        except OSError as e:
            errors.append(e)
    t = threading.Thread(target=wait)
    t.start()
    guard.close()
    t.join(5)
    assert not t.is_alive() and errors


ZMQ_GREETING = b"\xff" + b"\0" * 8 + b"\x7f"   # what a ZMQ client reconnecting to a port it once knew sends


def knock(address: tuple[str, int]) -> socket.socket:
    sock = socket.create_connection(address, timeout=1)
    sock.sendall(ZMQ_GREETING)
    return sock


def test_the_endpoints_port_takes_the_adapters_json_only():
    """A program of the owner that finds listen()'s endpoints port first (a ZMQ client of a
    kernel that went, reconnecting; one that connects and says nothing) is closed; the
    adapter's JSON after it reaches debugpy as the adapter sent it."""
    guard = listener("s3cret", "endpoints")
    try:
        address = guard.getsockname()[:2]
        zmq = knock(address)
        silent = socket.create_connection(address)
        assert accepted(guard, 1.0) is None
        wait_for(lambda: guard.refused == 1, 3, what="the ZMQ greeting refused")
        adapter = socket.create_connection(address)
        sent = b'{"client": {"host": "127.0.0.1", "port": 1}, "server": {"host": "127.0.0.1", "port": 2}}'
        adapter.sendall(sent)
        adapter.close()
        conn = accepted(guard)
        assert conn is not None
        with conn.makefile("rb", 0) as f:        # as debugpy reads it
            assert f.read() == sent
        assert closed_unanswered(zmq)
        silent.close()
    finally:
        guard.close()


def test_the_adapters_ports_take_what_debugpy_expects_there():
    """In debugpy's adapter (whose listener for debuggees waits on each connection in turn):
    an owner's connection that opens with something else than DAP or the run's secret is
    closed; DAP, the secret and a silent one (pydevd waits to be asked) get in."""
    guard = listener("s3cret", "adapter")
    try:
        address = guard.getsockname()[:2]
        knock(address)
        wait_for(lambda: guard.refused == 1, 3, what="the ZMQ greeting refused")
        for first in (b"Content-Length: 2\r\n\r\n{}", b"s3cret\n", b""):
            client = socket.create_connection(address)
            client.sendall(first)
            conn = accepted(guard)
            assert conn is not None, first
            if first:
                assert conn.recv(100) == first        # nothing of it taken by the guard
            client.close()
        assert guard.refused == 1
    finally:
        guard.close()


def listening_sockets() -> dict[int, str]:
    """The ports this user listens on at 127.0.0.1 and their sockets' inodes (from
    /proc/net/tcp, as the guard reads it)."""
    found = {}
    with open("/proc/net/tcp") as f:
        next(f)
        for line in f:
            fields = line.split()
            local, state, uid = fields[1], fields[3], int(fields[7])
            if state == "0A" and local.startswith("0100007F:") and uid == debug_boot.os.getuid():
                found[int(local.split(":")[1], 16)] = fields[9]
    return found


def owner_of(inode: str) -> tuple[int, str] | None:
    """(pid, command line) of the process holding the socket inode."""
    def link(path: str) -> str:
        try:
            return debug_boot.os.readlink(path)
        except OSError:      # closed meanwhile
            return ""
    want = f"socket:[{inode}]"
    for pid in debug_boot.os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            fds = debug_boot.os.listdir(f"/proc/{pid}/fd")
            if any(link(f"/proc/{pid}/fd/{fd}") == want for fd in fds):
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    return int(pid), f.read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:      # a process that went
            continue
    return None


class PortKnocker:
    """A program of the same user that connects to every port that starts listening on
    127.0.0.1 (the debugged program's, debugpy's adapter's, the engine's debug listener)
    and sends a ZMQ greeting, as a ZMQ client of a kernel that went does when a port it
    once knew is listened on again."""

    def __init__(self) -> None:
        self.seen = set(listening_sockets())
        self.knocked: list[tuple[int, str]] = []
        self.socks: list[socket.socket] = []
        self.done = threading.Event()
        self.thread = threading.Thread(target=self.knock, daemon=True)
        self.thread.start()

    def knock(self) -> None:
        while not self.done.is_set():
            for port, inode in listening_sockets().items():
                if port in self.seen:
                    continue
                self.seen.add(port)
                owner = owner_of(inode)
                try:
                    sock = knock(("127.0.0.1", port))
                except OSError:
                    continue
                self.knocked.append((port, "?" if owner is None else "engine" if owner[0] == debug_boot.os.getpid()
                                     else "adapter" if "debugpy/adapter" in owner[1] else "main.py"))
                self.socks.append(sock)
            time.sleep(0.001)

    def stop(self) -> None:
        self.done.set()
        self.thread.join(5)
        for sock in self.socks:
            sock.close()


def test_a_same_user_program_knocking_on_new_ports_does_not_stop_the_debugger(engine, make_project):
    """Every port the debug run opens on 127.0.0.1 (the endpoints port debugpy.listen waits
    on, the adapter's ports, the engine's local debug listener) is knocked on by a program
    of the same user at once: the debugger attaches, stops at the breakpoint and the run
    ends well all the same."""
    from test_debug import MAIN, UTIL, drive_session

    proj = make_project()
    proj.write("pkg/__init__.py", "")
    util = proj.write("pkg/util.py", UTIL)
    proj.write("main.py", MAIN)
    engine.call_sync("push", {"cwd": str(proj.root)}, {}, timeout=60)
    knocker = PortKnocker()
    try:
        res = engine.call_sync("debug", {"cwd": str(proj.root)}, {"cmd": "python3 main.py"}, timeout=180)
        drive_session(res["config"], util)
    finally:
        knocker.stop()
    ex = wait_for(lambda: next((e for e in events(engine, "RemoteDevRunExit") if e["id"] == res["id"]), None), 60)
    assert ex["code"] == 0
    assert {"adapter", "engine", "main.py"} <= {who for _, who in knocker.knocked}, knocker.knocked


def test_the_adapter_is_found_by_its_command_line():
    assert debug_boot.adapter_package(["python3", "/c/debugpy/1.8.22-x/debugpy/adapter", "--for-server", "1"]) \
        == "/c/debugpy/1.8.22-x/debugpy"
    assert debug_boot.adapter_package(["python3", "-m", "debugpy.adapter"]) == ""
    assert debug_boot.adapter_package(["python3", "main.py"]) is None


def messages(engine) -> list[str]:
    return [p["text"] for k, p in engine.reports if k == "message"]


def test_a_process_that_cannot_start_its_debugger_says_so_at_once(engine, make_project):
    """debugpy cannot listen (an address of no interface here, REMOTE_DEV_DEBUG_ADDR): the
    debug request fails at once naming the process and host, the run goes on undebugged (the
    user decides), and nothing calls it stopped."""
    proj = make_project(target={"env": {"REMOTE_DEV_DEBUG_ADDR": "203.0.113.7"}})
    proj.write("main.py", "import time\nprint('working', flush=True)\ntime.sleep(30)\n")
    started = time.monotonic()
    with pytest.raises(RemoteDevError) as e:
        engine.call_sync("debug", {"cwd": str(proj.root)}, {"cmd": "python3 main.py"}, timeout=120)
    assert time.monotonic() - started < 30                  # not at the end of the run
    assert re.search(rf"run \S+: pid \d+ on {socket.gethostname()} runs WITHOUT the debugger: RuntimeError: .*:RemoteStop",
                     e.value.message), e.value.message
    run_id = e.value.message.split()[1].rstrip(":")
    assert not any(ex["id"] == run_id for ex in events(engine, "RemoteDevRunExit"))   # it goes on
    assert not any("stopped" in m for m in messages(engine)), messages(engine)
    engine.call_sync("stop", {"cwd": str(proj.root)}, {"id": run_id}, timeout=60)
    wait_for(lambda: any(ex["id"] == run_id for ex in events(engine, "RemoteDevRunExit")), 30)


def test_a_debug_run_that_ends_by_itself_is_not_called_stopped(engine, make_project):
    proj = make_project()
    with pytest.raises(RemoteDevError) as e:
        engine.call_sync("debug", {"cwd": str(proj.root)}, {"cmd": "sh -c 'exit 3'"}, timeout=120)
    assert "ended (exit 3)" in e.value.message, e.value.message
    assert not any("stopped" in m for m in messages(engine)), messages(engine)
