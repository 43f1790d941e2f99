"""Sync on the wire, against the real sshd: compression round-trips byte for byte (text,
random and empty files, large files staged in chunks, pulls), a remote log that grew is
pulled as its tail only, and a connection cut in the middle of a push ends with one clear
line and nothing half-written.  How fast any of it is: bench/, never here."""
from __future__ import annotations

import gc
import logging
import os
import random
import shutil
import signal
import time
import types

import pytest
from conftest import require, wait_for
from remote_dev import rpc
from remote_dev.errors import RemoteDevError
from remote_dev.sync import transfer, wire
from remote_dev.sync.wire import LinkMeter
from test_sync import agent_pid, cut_after, on_engine, ppid, pull, push, temps


def slow_link(engine, proj, monkeypatch, rate):
    """The session's link taken as a WAN link of rate bytes/s with a 40 ms round trip
    (loopback would be sent raw); measuring it is turned off so it stays so."""
    monkeypatch.setattr(LinkMeter, "update", lambda self, rate: None)
    monkeypatch.setattr(LinkMeter, "raise_to", lambda self, floor: None)

    async def set_link(sess):
        await sess.ensure()
        meter = sess.state(LinkMeter)
        meter.rtt_ms, meter.rate = 40.0, rate
    on_engine(engine, proj, set_link)


def spy_formats(monkeypatch):
    """The formats the local side compresses with."""
    used = []
    real = wire.compress

    def spy(fmt, level, data):
        used.append(fmt)
        return real(fmt, level, data)
    monkeypatch.setattr(wire, "compress", spy)
    return used


def source_text(n, seed):
    rng = random.Random(seed)
    words = ["def", "return", "self", "import", "class", "value", "data", "path", "for", "in", "if", "None"]
    lines = []
    size = 0
    while size < n:
        line = "    " * rng.randint(0, 3) + " ".join(rng.choice(words) for _ in range(rng.randint(2, 9))) + "\n"
        lines.append(line)
        size += len(line)
    return "".join(lines)[:n].encode()


# --------------------------------------------------------------------------- compression


@pytest.mark.parametrize("rate,fmt", [(1e5, "bz2"), (5e7, "zlib"), (5e7, "zstd")],
                         ids=["slow-link-bz2", "fast-wan-zlib", "fast-wan-zstd"])
def test_compressed_push_and_pull_are_byte_exact(engine, make_project, monkeypatch, rate, fmt):
    if fmt == "zlib":
        monkeypatch.setenv("REMOTE_DEV_ZSTD", "0")   # as with a remote without a zstd program
    monkeypatch.setattr(transfer, "LARGE", 256 << 10)   # large files: staged in chunks
    monkeypatch.setattr(transfer, "CHUNK", 64 << 10)
    proj = make_project(config_extra='[sync]\npull = ["results/"]\n')
    files = {
        "src/a.py": source_text(50_000, 1), "src/b.py": source_text(3_000, 2), "src/empty.py": b"",
        "data/random.bin": os.urandom(100_000), "data/big.txt": source_text(1_500_000, 3),
        "data/big_random.bin": os.urandom(700_000), "data/zeros.bin": b"\0" * 300_000,
    }
    for rel, data in files.items():
        proj.write(rel, data)
    os.symlink("a.py", proj.root / "src/link.py")
    slow_link(engine, proj, monkeypatch, rate)
    used = spy_formats(monkeypatch)
    res = push(engine, proj)
    assert res["errors"] == [] and res["files"] == len(files) + 2   # + the symlink and .remote-dev.toml
    for rel, data in files.items():
        assert proj.remote(rel).read_bytes() == data, rel
    assert os.readlink(proj.remote("src/link.py")) == "a.py"
    assert fmt in used
    assert 0 < res["wire_bytes"] < res["bytes"] - 1_000_000   # the text and the zeros shrank, the rest did not grow
    assert temps(proj.remote_root) == []
    # pulls: the agent compresses for the link the local side names
    results = {"results/train.log": source_text(2_000_000, 4), "results/weights.bin": os.urandom(300_000),
               "results/empty.txt": b"", "results/sub/small.csv": b"step,loss\n1,0.5\n"}
    res = pull_results(engine, proj, results)
    assert res["wire_bytes"] < 0.6 * res["bytes"]
    assert temps(proj.root) == []


def pull_results(engine, proj, results):
    """results ({rel: bytes}) written on the remote, pulled: each arrived byte for byte."""
    for rel, data in results.items():
        proj.remote(rel).parent.mkdir(parents=True, exist_ok=True)
        proj.remote(rel).write_bytes(data)
    res = pull(engine, proj)
    assert res["errors"] == [] and res["files"] == len(results)
    for rel, data in results.items():
        assert (proj.root / rel).read_bytes() == data, rel
    return res


def pulled_formats(caplog):
    """The formats the agent answered a pull's blocks in, as the pull logged them."""
    said = [r.getMessage() for r in caplog.records if r.getMessage().startswith("pull ")]
    assert said, "the pull logged no formats"
    return said[-1]


@pytest.mark.parametrize("remote", ["program-and-libzstd", "libzstd-only", "no-zstd-there"])
def test_a_pull_comes_in_zstd_where_the_remote_has_it(engine, make_project, monkeypatch, caplog, tmp_path, remote):
    """On a 1 Gbit/s link the agent writes the text in zstd (the local side says it reads
    zstd: zstandard) with the remote's libzstd, or its `zstd` program, and sends random
    bytes raw; an agent with neither writes zlib instead."""
    require(bool(shutil.which("zstd")), "zstd missing here (the remote of the tests); scripts/setup installs it")
    caplog.set_level(logging.INFO, logger="remote_dev")
    remote_has_zstd = remote != "no-zstd-there"
    target = None
    if remote != "program-and-libzstd":   # the agent started with a PATH of an empty folder
        empty = tmp_path / "bin-without-zstd"
        empty.mkdir()
        python3 = shutil.which("python3", path="/usr/bin:/bin")
        require(python3 is not None, "no python3 in /usr/bin or /bin (the remote's, by its path)")
        no_lib = "" if remote_has_zstd else "REMOTE_DEV_ZSTD_LIB=0 "
        target = {"python": f"env PATH={empty} {no_lib}{python3}"}
    proj = make_project(config_extra='[sync]\npull = ["results/"]\n', target=target)
    proj.write("main.py", "x\n")
    slow_link(engine, proj, monkeypatch, 125e6)

    async def codecs(sess):
        await sess.ensure()
        return sess.hello["codecs"]
    assert ("zstd" in on_engine(engine, proj, codecs)) == remote_has_zstd
    results = {"results/train.log": source_text(6_000_000, 5),       # three blocks of text (1, 2, 3 MB)
               "results/weights.bin": os.urandom(1_000_000)}       # one block of random bytes
    res = pull_results(engine, proj, results)
    used = pulled_formats(caplog)
    text = "'zstd': 3" if remote_has_zstd else "'zlib': 3"
    assert text in used and "'raw': 1" in used and ("zstd" in used) == remote_has_zstd, used
    assert len(results["results/weights.bin"]) < res["wire_bytes"] < 0.6 * res["bytes"]
    assert temps(proj.root) == []


def test_a_pulls_blocks_are_counted_as_they_arrive_not_as_they_are_written(engine, make_project, monkeypatch):
    """The link's rate comes from when a pull's answers arrive: the agent answers blocks as
    its threads finish them (a raw block overtakes compressed ones asked for before it),
    and the local side writes them in order.  Counted as they were written, the rate
    measured on the WAN bed was that of the writing, a third of the link's (bench: each
    pull of 32 MB at 100 Mbit/s 40 ms measured a slower link, chose a heavier codec and
    took longer: 1.14 -> 1.52 -> 1.69 s).  Here the writing is made slow (0.2 s a block,
    a slow local disk): every block is counted long before the last is written."""
    from remote_dev.sync import fetch
    proj = make_project(config_extra='[sync]\npull = ["results/"]\n')
    proj.write("main.py", "x\n")
    push(engine, proj)
    times = {"answered": [], "written": []}
    real_answered, real_write = wire.AckClock.answered, fetch.write_block

    def answered(self, weight, wire_bytes=None):
        times["answered"].append(time.perf_counter())
        return real_answered(self, weight, wire_bytes)

    def write_block(*args):
        time.sleep(0.2)
        real_write(*args)
        times["written"].append(time.perf_counter())
    monkeypatch.setattr(wire.AckClock, "answered", answered)
    monkeypatch.setattr(fetch, "write_block", write_block)
    pull_results(engine, proj, {"results/weights.bin": os.urandom(15 << 20)})   # 1 + 2 + 4 + 4 + 4 MB blocks

    assert len(times["answered"]) == len(times["written"]) == 5
    assert max(times["answered"]) < times["written"][2], times

    async def pace(sess):
        return sess.state(LinkMeter).agent_pace()
    assert on_engine(engine, proj, pace) is None   # the agent's pace is that of pushes: reads tell only busy


def test_a_grown_remote_log_pulls_only_its_tail(engine, make_project):
    proj = make_project(config_extra='[sync]\npull = ["results/"]\n')
    proj.write("main.py", "x\n")
    push(engine, proj)
    log = proj.remote("results/train.log")
    log.parent.mkdir(parents=True)
    first = os.urandom(3_000_000)   # random: raw on the wire, so bytes on the wire are the bytes read
    log.write_bytes(first)
    res = pull(engine, proj)
    assert res["files"] == 1 and res["wire_bytes"] == len(first)
    tail = os.urandom(100_000)
    with open(log, "ab") as f:
        f.write(tail)
    res = pull(engine, proj)
    assert res["files"] == 1 and res["errors"] == [] and res["conflicts"] == []
    assert res["wire_bytes"] == len(tail) and res["bytes"] == len(tail)
    assert (proj.root / "results/train.log").read_bytes() == first + tail
    assert pull(engine, proj)["wire_bytes"] == 0
    # not only grown: its first bytes changed too -- the whole file comes again
    changed = b"X" + first[1:] + tail + os.urandom(10_000)
    log.write_bytes(changed)
    res = pull(engine, proj)
    assert res["files"] == 1 and res["errors"] == []
    assert (proj.root / "results/train.log").read_bytes() == changed
    assert res["wire_bytes"] >= len(changed)
    # the local copy edited since the last pull is no base for a tail: a conflict, as before
    with open(proj.root / "results/train.log", "ab") as f:
        f.write(b"local note\n")
    with open(log, "ab") as f:
        f.write(b"more\n")
    res = pull(engine, proj)
    assert res["conflicts"] == ["results/train.log"] and res["wire_bytes"] == 0
    assert temps(proj.root) == []


# --------------------------------------------------------------------------- cut connections


NOISE = ("Traceback", "never retrieved", "Exception in callback", "Task exception", "Error on reading")


def test_a_connection_cut_mid_push_ends_with_one_clear_line(engine, make_project, monkeypatch, caplog, capfd):
    """The sshd process serving the session is killed while large files are in flight:
    the push ends with one line saying what happened and what to do, nothing else is
    logged or printed, nothing half-written is left, and the next push completes it."""
    caplog.set_level(logging.DEBUG)
    proj = make_project()
    for i in range(3):
        proj.write(f"model/part{i}.bin", os.urandom(10 << 20))   # large: staged in chunks
    for i in range(40):
        proj.write(f"src/m{i}.py", source_text(20_000, i))
    pid = agent_pid(engine, proj)
    session = ppid(pid)   # sshd's process for this session: the agent was exec'd by it
    cut_after(monkeypatch, "append", 12, lambda: os.kill(session, signal.SIGKILL))
    with pytest.raises(RemoteDevError) as err:
        push(engine, proj)
    text = str(err.value)
    assert "\n" not in text and "interrupted" in text and "completes it" in text, text
    wait_for(lambda: not os.path.exists(f"/proc/{pid}"), 20, what="the old agent to exit")
    gc.collect()
    out, errout = capfd.readouterr()
    said = caplog.text + out + errout
    assert not any(n in said for n in NOISE), said
    assert [r.levelno for r in caplog.records if r.levelno >= logging.WARNING] == []
    assert temps(proj.remote_root) == []
    for dirpath, _dirs, names in os.walk(proj.remote_root):
        for name in names:   # whatever arrived arrived whole
            rel = os.path.relpath(os.path.join(dirpath, name), proj.remote_root)
            assert (proj.root / rel).read_bytes() == proj.remote(rel).read_bytes(), rel
    monkeypatch.undo()
    res = push(engine, proj)
    assert res["errors"] == [] and res["conflicts"] == []
    for i in range(3):
        assert proj.remote(f"model/part{i}.bin").read_bytes() == (proj.root / f"model/part{i}.bin").read_bytes()
    assert len(os.listdir(proj.remote("src"))) == 40 and temps(proj.remote_root) == []


# --------------------------------------------------------------------------- round trips


def record_requests(monkeypatch):
    """The requests sent to the agent in order, and "(awaited verify)" where the push
    starts waiting for the remote check's answer: what is sent before that travels in
    the same round trip as the check."""
    sent = []
    orig = rpc.AgentChannel.send

    def send(self, m, *params):
        fut = orig(self, m, *params)
        sent.append("push" if m == "push_packed" else m)   # compressed or not, one request
        return Awaited(fut, lambda: sent.append("(awaited verify)")) if m == "verify" else fut
    monkeypatch.setattr(rpc.AgentChannel, "send", send)
    return sent


class Awaited:
    """A future that says when it is awaited."""

    def __init__(self, fut, said):
        self.fut = fut
        self.said = said

    def __await__(self):
        self.said()
        return self.fut.__await__()

    def __getattr__(self, name):
        return getattr(self.fut, name)


def test_the_remote_check_costs_no_round_trip_of_its_own(engine, make_project, monkeypatch):
    """Records are a cache: every push asks the agent to check them (`verify`), yet that
    request travels with the push's own: nothing the push sends waits for its answer, so it
    adds no round trip (a no-op push makes that one request and nothing else)."""
    proj = make_project()
    for i in range(30):
        proj.write(f"pkg/m{i}.py", source_text(2_000, i))
    push(engine, proj)
    sent = record_requests(monkeypatch)
    assert push(engine, proj)["files"] == 0
    assert sent == ["verify", "(awaited verify)"]   # a no-op push: one request, one round trip
    del sent[:]
    proj.write("pkg/m3.py", "changed\n")
    res = push(engine, proj, paths=[str(proj.root / "pkg/m3.py")])   # a save: one round trip
    assert res["files"] == 1 and sent == ["verify", "push", "(awaited verify)"]
    del sent[:]
    proj.write("pkg/m4.py", "changed\n")
    proj.write("pkg/new.py", "new\n")
    res = push(engine, proj)   # a tree push of what changed
    assert res["files"] == 2 and sent == ["verify", "push", "(awaited verify)"]
    # what the check finds costs the transfer it needs, nothing more
    del sent[:]
    proj.remote("pkg/m5.py").unlink()
    res = push(engine, proj)
    assert res["files"] == 1 and sent == ["verify", "(awaited verify)", "push"]
    assert proj.remote("pkg/m5.py").read_text() == source_text(2_000, 5).decode()


# --------------------------------------------------------------------------- the event loop's share of a push


def test_a_push_writes_its_ssh_packets_in_few_system_calls(engine, make_project):
    """asyncssh writes each SSH packet on its own (a channel's data in packets of the
    server's 32 KB at most): the connection joins the writes of one turn of the loop
    (ssh.CoalescedWrites), so a push of 8 MB makes a fraction of the socket writes its
    packets would, and arrives byte exact."""
    import hashlib

    from remote_dev.ssh import CoalescedWrites

    proj = make_project()
    for i in range(128):
        proj.write(f"d{i % 8}/f{i}.bin", os.urandom(64 << 10))   # random: sent raw, 8 MB of packets
    packets: list[int] = []
    writes: list[int] = []

    async def spy(sess):
        await sess.ensure()
        t = sess.conn._transport
        assert isinstance(t, CoalescedWrites)
        packet, write = t.write, t.inner.write
        t.write = lambda data: (packets.append(len(data)), packet(data))
        t.inner.write = lambda data: (writes.append(len(data)), write(data))
        return t

    async def unspy(sess):
        t = sess.conn._transport
        del t.write, t.inner.write
    on_engine(engine, proj, spy)
    try:
        res = push(engine, proj)
    finally:
        on_engine(engine, proj, unspy)
    assert res["errors"] == [] and res["files"] == 129   # and .remote-dev.toml
    assert sum(writes) == sum(packets) >= 8 << 20
    assert len(packets) >= (8 << 20) // (32 << 10)      # a packet per 32 KB at least
    assert 0 < len(writes) * 4 < len(packets), (len(writes), len(packets))
    for i in range(128):
        rel = f"d{i % 8}/f{i}.bin"
        assert hashlib.sha256(proj.remote(rel).read_bytes()).digest() == \
            hashlib.sha256((proj.root / rel).read_bytes()).digest()


def test_an_aead_connection_sends_no_empty_ignore_packets_and_pads_from_a_pool(engine, make_project, monkeypatch):
    """asyncssh sends an empty ignore packet before each packet it encrypts and asks the
    kernel for each packet's few padding bytes.  On the engine's AES-GCM connection a push
    of 8 MB goes in about one packet per 32 KB (not two), and its padding comes from a
    pool read a few times, not from a getrandom per packet."""
    import asyncssh.connection
    from asyncssh.encryption import ChachaEncryption, GCMEncryption
    from remote_dev.ssh import PaddingBytes

    proj = make_project()
    for i in range(128):
        proj.write(f"d{i % 8}/f{i}.bin", os.urandom(64 << 10))   # random: sent raw
    packets: list[int] = []
    reads: list[int] = []

    async def spy(sess):
        await sess.ensure()
        assert isinstance(sess.conn._send_encryption, (GCMEncryption, ChachaEncryption))
        t = sess.conn._transport
        packet = t.write
        t.write = lambda data: (packets.append(len(data)), packet(data))

    async def unspy(sess):
        del sess.conn._transport.write
    on_engine(engine, proj, spy)
    urandom = os.urandom
    monkeypatch.setattr(os, "urandom", lambda n: (reads.append(n), urandom(n))[1])
    try:
        res = push(engine, proj)
    finally:
        monkeypatch.undo()
        on_engine(engine, proj, unspy)
    assert res["errors"] == [] and res["files"] == 129
    data_packets = (8 << 20) // (32 << 10)
    assert data_packets <= len(packets) < 1.3 * data_packets, len(packets)   # with the ignores: 2x
    assert isinstance(asyncssh.connection.os, PaddingBytes)
    assert len(reads) <= 8, reads   # (~3,000 paddings per 64 KB read; a getrandom per packet: > 256)


def test_padding_bytes_are_random_bytes_never_served_twice():
    from remote_dev.ssh import PaddingBytes

    pad = PaddingBytes()
    got = [pad.urandom(n) for n in [4, 19, 8] * 3000 + [PaddingBytes.POOL + 5, 7]]
    assert [len(b) for b in got] == [4, 19, 8] * 3000 + [PaddingBytes.POOL + 5, 7]
    joined = b"".join(got)
    # fresh random bytes everywhere: no 16-byte window repeats (served twice, or zeros)
    windows = {joined[i:i + 16] for i in range(0, len(joined) - 16, 16)}
    assert len(windows) == len(range(0, len(joined) - 16, 16))
    assert pad.environ is os.environ and pad.access is os.access   # the rest of os, as it is


def test_ignore_packets_stay_where_the_cipher_is_not_aead(sshd):
    """A CBC-era defence kept where it may matter: on a connection whose cipher is not an
    AEAD (aes128-ctr here, a real connection to the sshd), the empty ignore packets still
    go; on an AES-GCM one they do not."""
    import asyncio
    import getpass

    import asyncssh
    from asyncssh.constants import MSG_IGNORE
    from remote_dev.ssh import skip_empty_ignores

    async def ignores(cipher):
        conn = await asyncssh.connect("127.0.0.1", sshd.port, username=getpass.getuser(),
                                      client_keys=[str(sshd.user_key)], known_hosts=str(sshd.known_hosts),
                                      encryption_algs=[cipher], config=None)
        try:
            kinds = []
            cls_send = type(conn).send_packet

            def spy(pkttype, *args, handler=None):
                kinds.append(pkttype)
                cls_send(conn, pkttype, *args, handler=handler)
            conn.send_packet = spy
            skip_empty_ignores(conn)
            kinds.clear()
            res = await conn.run("cat > /dev/null", input="x" * 200_000)
            assert res.exit_status == 0
            return kinds.count(MSG_IGNORE), len(kinds)
        finally:
            conn.close()
            await conn.wait_closed()

    ctr_ignores, ctr_all = asyncio.run(ignores("aes128-ctr"))
    gcm_ignores, gcm_all = asyncio.run(ignores("aes128-gcm@openssh.com"))
    assert ctr_ignores * 2 >= ctr_all - 2 and ctr_ignores >= 6, (ctr_ignores, ctr_all)   # one before each
    assert gcm_ignores == 0 and gcm_all >= 6, (gcm_ignores, gcm_all)


def test_a_push_collects_only_its_own_garbage(engine, make_project, monkeypatch):
    """No collection while the scan runs; from the first request on, what the process
    held before (the scan's listing with it) is frozen, so the push's collections look
    at its own batches only; it is thawed when the push ends, collections on."""
    from remote_dev.sync.apply import PushCommit

    proj = make_project()
    for i in range(300):
        proj.write(f"pkg/m{i}.py", source_text(2_000, i))
    seen = []
    sent = PushCommit.sent

    def spy(self, *a, **k):
        seen.append((gc.isenabled(), gc.get_freeze_count()))
        return sent(self, *a, **k)
    monkeypatch.setattr(PushCommit, "sent", spy)
    assert gc.isenabled() and gc.get_freeze_count() == 0
    res = push(engine, proj)
    assert res["files"] == 301 and len(seen) == 301
    assert all(on and frozen > 1000 for on, frozen in seen), seen[:3]
    assert gc.isenabled() and gc.get_freeze_count() == 0


def test_coalesced_writes_keep_their_order_and_go_before_a_close():
    """On a real socket: the writes of one turn go out as one, in order; a close right
    after them still sends them (as the transport's own close does); an abort drops what
    was not yet written, as it drops the transport's own buffer."""
    import asyncio
    import socket

    from remote_dev.ssh import CoalescedWrites

    async def main():
        loop = asyncio.get_running_loop()
        got = []
        for end in ("close", "abort", "turn"):
            a, b = socket.socketpair()
            transport, _ = await loop.create_connection(asyncio.Protocol, sock=a)
            sent = []
            inner_write = transport.write
            transport.write = lambda data: (sent.append(data), inner_write(data))
            t = CoalescedWrites(transport, loop)
            for part in (b"one ", b"two ", b"three"):
                t.write(part)
            assert sent == [] and t.get_write_buffer_size() == 13
            if end == "close":
                t.close()
            elif end == "abort":
                t.abort()
            else:
                await asyncio.sleep(0)   # the next turn of the loop
                assert sent == [b"one two three"]
                t.close()
            await asyncio.sleep(0.05)
            b.settimeout(5)
            data = b""
            while chunk := b.recv(100):
                data += chunk
            got.append(data)
            b.close()
        return got
    assert asyncio.run(main()) == [b"one two three", b"", b"one two three"]


# --------------------------------------------------------------------------- memory


def status_bytes(pid, field):
    """A size from /proc/PID/status (VmHWM, VmRSS), in bytes."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise AssertionError(f"no {field}")


def vm_hwm(pid):
    """Peak resident set of a process, in bytes (reset first with reset_hwm)."""
    return status_bytes(pid, "VmHWM")


def settled_rss(pid, timeout=10.0):
    """The resident set of a process once it stopped moving (within 256 KB over 0.25 s):
    an agent reads the content index in the background after its hello."""
    readings = []
    deadline = time.monotonic() + timeout
    while True:
        readings.append(status_bytes(pid, "VmRSS"))
        last = readings[-6:]
        if len(last) == 6 and max(last) - min(last) <= 256 << 10 or time.monotonic() > deadline:
            return readings[-1]
        time.sleep(0.05)


def reset_hwm(pid):
    with open(f"/proc/{pid}/clear_refs", "w") as f:
        f.write("5")


def test_large_files_are_streamed_both_ways(engine, make_project, monkeypatch):
    """A 64 MB file pushed and pulled: neither side ever holds it whole (Python's own
    allocations here, the agent's peak resident set there, above what it held as each
    began), and it arrives byte exact.  No offers: a lookup would read the content index,
    whose size depends on what the other tests pushed (seen in CI under load: +27 MB)."""
    import hashlib
    import tracemalloc

    from remote_dev.sync import fetch

    monkeypatch.setattr(fetch, "PULL_WINDOW", 4 << 20)
    monkeypatch.setattr(fetch, "READ_SIZE", 1 << 20)
    monkeypatch.setenv("REMOTE_DEV_REUSE", "never")
    size = 64 << 20
    proj = make_project(config_extra='[sync]\npull = ["results/"]\n')
    block = os.urandom(1 << 20)
    with open(proj.root / "model.bin", "wb") as f:
        for i in range(size >> 20):
            f.write(bytes([i]) + block[1:])
    pid = agent_pid(engine, proj)
    base = settled_rss(pid)
    reset_hwm(pid)
    tracemalloc.start()
    try:
        res = push(engine, proj)
        _, pushed_peak = tracemalloc.get_traced_memory()
        agent_push_peak = vm_hwm(pid)
        assert res["errors"] == [] and res["files"] == 2
        remote = proj.remote("results/log.bin")
        remote.parent.mkdir(parents=True)
        with open(proj.remote("model.bin"), "rb") as src, open(remote, "wb") as dst:
            while chunk := src.read(1 << 20):
                dst.write(chunk)
        reset_hwm(pid)
        pull_base = vm_hwm(pid)   # (reset: the peak starts again at what it holds now)
        tracemalloc.reset_peak()
        res = pull(engine, proj)
        _, pulled_peak = tracemalloc.get_traced_memory()
        agent_pull_peak = vm_hwm(pid)
    finally:
        tracemalloc.stop()
    assert res["errors"] == [] and res["files"] == 1

    def sha(path):
        h = hashlib.sha256()
        with open(path, "rb") as f:
            while chunk := f.read(1 << 20):
                h.update(chunk)
        return h.hexdigest()
    assert sha(proj.remote("model.bin")) == sha(proj.root / "model.bin") == sha(proj.root / "results/log.bin")
    limit = 24 << 20   # chunks and blocks in flight: well under the 64 MB file
    assert pushed_peak < limit and pulled_peak < limit, (pushed_peak, pulled_peak)
    assert agent_push_peak < base + limit and agent_pull_peak < pull_base + limit, \
        (base, agent_push_peak, pull_base, agent_pull_peak)


def test_batches_start_small_and_end_small():
    """Batches of small files double from FIRST_BATCH up to BATCH_BYTES (the wire starts at
    once) and halve again towards the end (the last answer follows the last byte closely);
    sorted by suffix, then path; each file once."""
    from remote_dev.sync.reconcile import Send
    from remote_dev.sync.scan import LocalEntry

    rng = random.Random(3)
    items = [Send(f"d{i % 37}/f{i}.{('py', 'txt', 'json')[i % 3]}", LocalEntry("f", rng.randint(1000, 40000), 0, 0o644),
                  None) for i in range(3000)]
    batches = transfer.batches_of(items)
    sizes = [sum(i.entry.size + 200 for i in b) for b in batches]
    flat = [i for b in batches for i in b]
    assert sorted(i.rel for i in flat) == sorted(i.rel for i in items) and len(flat) == len(items)
    assert flat == sorted(items, key=transfer.by_suffix)
    assert sizes[0] < 2 * transfer.FIRST_BATCH and sizes[1] < 3 * transfer.FIRST_BATCH
    assert max(sizes) < transfer.BATCH_BYTES + 40200
    assert sizes[-1] < 2 * transfer.FIRST_BATCH and sizes[-2] < 3 * transfer.FIRST_BATCH
    assert sizes[-3] <= sizes[-4] + 40200 <= transfer.BATCH_BYTES + 80400


def test_the_meter_assumes_more_only_where_the_answers_measured_this_side(monkeypatch):
    """Until measured, a link counts by its round trip; answers that measured a busy agent
    raise what is assumed, doubling, between twice and four times what they saw; a wire
    waiting for batches says twice what went out; answers that measured the link below it
    end the assumption; and what is only assumed never opens extra channels."""
    monkeypatch.setattr(wire, "RAISE_EVERY", 0.0)
    m = LinkMeter(rtt_ms=40.0)
    assert m.link() == wire.WAN_GUESS and not m.window_limited()
    m.rtt_ms = 2.9
    assert m.link() == wire.LAN_GUESS
    m.rate = 20e6
    for _ in range(3):
        m.agent_busy(1 << 20, 0.01)     # ~100 MB/s of raw bytes per second the agent spends
    assert m.agent_pace() == pytest.approx(104.9e6, rel=0.01) and m.ceiling() is None   # the link decides
    m.agent_bound(20e6)
    assert m.link() == 40e6 and m.ceiling() == m.agent_pace()   # the agent's pace bounds every codec
    m.agent_bound(20e6)
    assert m.link() == 80e6
    m.agent_bound(20e6)
    assert m.link() == 80e6          # at most four times what the answers saw
    m.starved(30e6)
    assert m.link() == 80e6          # the wire waiting for batches: twice what went out, when more
    m.starved(50e6)
    assert m.link() == 100e6
    assert not m.window_limited()    # 80 MB/s x 2.9 ms is only assumed
    m.update(30e6)                   # the link held the answers back: it is what it measures
    assert m.link() == m.rate == 25e6 and m.ceiling() is None
    m.starved(5e6)
    assert m.link() == 25e6
    m.rtt_ms = 0.5
    assert m.link() is None          # loopback-class: raw
    m2 = LinkMeter(rtt_ms=40.0)
    monkeypatch.setattr(wire, "RAISE_EVERY", 60.0)
    m2.agent_bound(10e6)
    m2.agent_bound(10e6)             # once per RAISE_EVERY
    assert m2.link() == 25e6


def test_answers_that_came_while_the_sender_waited_for_its_batches_never_lower_the_link(monkeypatch):
    """The answers of a push whose sender kept waiting for its own batches (a second
    checkout's small files, read and compressed slower than the link carries them) came at
    this side's pace: they may raise the link's rate, never lower it (they lowered a 12.5
    MB/s link to 4-5 MB/s, and the session's next pushes planned heavier codecs for it).
    The same answers with the sender never waiting measure the link.  (Time is the
    clock's own here: a unit of the meter, no link.)"""
    now = [0.0]
    monkeypatch.setattr(wire, "time", types.SimpleNamespace(perf_counter=lambda: now[0]))

    def answers(starved_share, size=400_000):
        meter = LinkMeter(rtt_ms=40.0)
        clock = wire.AckClock(meter)
        for _ in range(4):
            clock.sent(size)
        for _ in range(12):   # size answered every 0.1 s, more behind it: 4 MB/s by default
            now[0] += 0.1
            clock.waited(0.1 * starved_share)
            clock.answered(size)
            clock.sent(size)
        return meter
    assert answers(0.6).rate is None and answers(0.6).link() == wire.WAN_GUESS
    assert answers(0.0).rate == pytest.approx(4e6, rel=0.01)
    # answers faster than the guess raise it, waiting or not
    assert answers(0.6, 4_000_000).rate == pytest.approx(40e6, rel=0.01)


def test_the_agent_says_how_long_it_took(engine, make_project, monkeypatch):
    """A packed push's answers carry the agent's seconds on it: after a push of a few MB,
    the session's meter knows the agent's pace (raw bytes per second it spends)."""
    proj = make_project()
    for i in range(6):
        proj.write(f"src/m{i}.py", source_text(600_000, 10 + i))
    slow_link(engine, proj, monkeypatch, 5e7)
    res = push(engine, proj)
    assert res["errors"] == [] and res["files"] == 7

    async def pace(sess):
        return sess.state(LinkMeter).agent_pace()
    got = on_engine(engine, proj, pace)
    assert got is not None and 1e6 < got < 1e11
