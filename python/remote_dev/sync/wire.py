"""What goes on the wire and how fast it goes: the link's rate as measured, the choice of
compression per batch (protocol.choose_codec), and the worker threads that compress.

The rate is measured from the answers of pipelined requests: wire bytes answered per
second while more was in flight behind them (the link, not this side, was what held them
back).  It is kept per connection (LinkMeter, in the session's state), so a pull knows
what the last push saw; until the first measurement a link counts as WAN_GUESS (LAN_GUESS
under LAN_RTT_MS).  Answers that measured this side or the agent rather than the link
(the wire waiting for batches; the agent busy all along, as its answers say) only raise
what is assumed of the link, and while the agent is what they measure its own pace bounds
every codec alike.  A link
with a round trip under FAST_RTT_MS (loopback, a LAN) is never compressed: there the
rate is bounded by the CPU of both ends (ssh, the agent), which compressing would only
take from them.

Compression runs in a pool of worker threads (zlib and bz2 release the GIL), one per core;
the speed they really reach on this machine, busy as it may be, scales the codec table's
figures (``Compressor.speed``), so a loaded machine picks cheaper codecs.

The zlib format is written here with zlib-ng (the remote inflates it with its stdlib zlib):
on the ~108 MB bench tree in 2 MB batches it compresses 1.5-2x faster than zlib at each
ratio (zlib-ng 4: ratio 4.50 at 91 MB/s a core; zlib 3: 4.12 at 80, zlib 6: 4.67 at 36),
which is what a 100 Mbit/s link needs to be CPU-bound no longer.  Without zlib-ng
(not installed) the stdlib's zlib and its table are used.
"""

from __future__ import annotations

import os
import threading
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from ..agent.protocol import BZ2, CODECS, RAW, ZLIB, ZSTD, choose_codec, sample_ratio
from ..agent.protocol import decompress as protocol_decompress
from ..packer import deflate_with

try:
    from zlib_ng import zlib_ng as deflate
except ImportError:  # pragma: no cover - a dependency; the stdlib's zlib does the same, slower
    deflate = None
try:
    import zstandard
except ImportError:  # pragma: no cover - a dependency; without it zlib is used
    zstandard = None

# (format, level, raw MB/s per core, ratio relative to stdlib zlib level 1) of zlib-ng,
# measured like protocol.CODECS (the bench tree, 2 MB batches sorted by suffix; zlib 1:
# 105 MB/s, ratio 3.81).  zlib-ng's level 1 is a different, weaker strategy: left out.
NG_CODECS = (
    (ZLIB, 2, 146.0, 1.05),
    (ZLIB, 3, 111.0, 1.14),
    (ZLIB, 4, 91.0, 1.18),
    (ZLIB, 6, 64.0, 1.22),
    (BZ2, 9, 13.5, 1.50),
)
# zstd (zstandard here, the remote's `zstd` program there: protocol.ZSTD), measured the same
# way: level 3 compresses like zlib-ng 6 at ~3.5x its speed; 5 and 6 send 7% and 10% fewer
# bytes than zlib-ng 6.  Taken only when the remote lists the format.
ZSTD_CODECS = (
    (ZSTD, 1, 451.0, 1.11),
    (ZSTD, 3, 285.0, 1.22),
    (ZSTD, 5, 139.0, 1.31),
    (ZSTD, 6, 79.0, 1.37),
)
LOCAL_CODECS = (NG_CODECS if deflate is not None else CODECS) + (ZSTD_CODECS if zstandard is not None else ())

FAST_RTT_MS = 1.5          # below this round trip a link counts as fast until measured
WAN_GUESS = 12.5e6         # wire bytes/s assumed of other links until measured (100 Mbit/s)
LAN_RTT_MS = 10.0          # ... but below this round trip (a campus, a lab: 1 Gbit/s)
LAN_GUESS = 125e6
RATE_WINDOW = 0.4          # seconds of answers a rate is measured over (at least)
WINDOW = 1 << 20           # bandwidth-delay product above which one SSH channel's window limits
RAISE_EVERY = 0.15         # seconds between two raises of the rate assumed (starved, agent_bound)
STARVED_SHARE = 0.3        # share of a rate's window the sender waited for batches: the rate measured this side
AGENT_BOUND = 0.8          # share of a rate's window the agent was busy: the rate measured the agent
PACE_DECAY = 0.8           # weight of the earlier answers in the agent's pace, per answer
PACE_MIN = 1 << 20         # raw bytes answered before the agent's pace counts


@dataclass
class LinkMeter:
    """Per connection: the link's rate in wire bytes per second, when measured; and the
    agent's own pace, raw bytes applied per second it spends (push_packed's answers say
    how long each took), which no codec can beat: where the agent is the slower end (a
    fast link; a busy remote), answers arrive at the agent's pace, not the link's, and a
    heavier codec would only burn this side's cores for nothing."""
    rate: float | None = None
    rtt_ms: float | None = None
    paced_raw: float = 0.0     # raw bytes of the answers measured, decaying
    paced_busy: float = 0.0    # the agent's seconds on them, decaying
    assumed: float | None = None   # more than measured, as starved/agent_bound say
    raised_at: float = -1e9    # when they last raised it
    agent_limits: bool = False     # the last answers measured the agent, not the link

    def agent_busy(self, raw: int, busy: float) -> None:
        """An agent took busy seconds to apply a request of raw bytes."""
        self.paced_raw = PACE_DECAY * self.paced_raw + raw
        self.paced_busy = PACE_DECAY * self.paced_busy + busy

    def agent_pace(self) -> float | None:
        """Raw bytes per second one agent applies, once PACE_MIN bytes are measured."""
        if self.paced_raw < PACE_MIN or self.paced_busy <= 0:
            return None
        return self.paced_raw / self.paced_busy

    def ceiling(self) -> float | None:
        """The agent's pace while the last answers measured the agent (agent_bound), not
        the link: what bounds every codec alike then.  None otherwise: where the link
        holds the answers back, its rate decides alone (a slow link's wire bytes count
        even while the agent has short busy spells, such as a batch of tiny files)."""
        return self.agent_pace() if self.agent_limits else None

    def update(self, rate: float) -> None:
        """The answers measured the link at rate wire bytes/s (it held them back)."""
        self.rate = rate if self.rate is None else 0.5 * self.rate + 0.5 * rate
        self.agent_limits = False
        if self.assumed is not None and rate < self.assumed:
            self.assumed = None   # what was assumed above the link's rate no longer counts

    def starved(self, sent_rate: float) -> None:
        """The lanes waited for batches (more than for room on the wire) while sent_rate
        wire bytes/s went out: the link is faster than that (a 1 Gbit/s link taken for
        WAN_GUESS picks a codec too slow for it); twice that is assumed until the answers
        measure it.  (Not more: a push's first batches wait for their reads on any link.)"""
        if 2 * sent_rate > (self.link() or float("inf")):
            self.assumed = 2 * sent_rate

    def agent_bound(self, rate: float) -> None:
        """The answers came at rate wire bytes/s while the agent was busy all along: they
        measured the agent, and the link is faster than that.  What is assumed doubles,
        once per RAISE_EVERY while it lasts, between twice and four times rate (the
        agent's pace bounds every codec alike, so a lighter one then wins), until answers
        measure the link itself (update)."""
        self.agent_limits = True
        self.raise_to(2 * rate)

    def raise_to(self, floor: float) -> None:
        now = time.perf_counter()
        if now - self.raised_at < RAISE_EVERY:
            return
        self.raised_at = now
        self.assumed = max(floor, min(2 * (self.link() or floor), 2 * floor))

    def guess(self) -> float:
        """The rate as measured, else a guess by the round trip."""
        if self.rate is not None:
            return self.rate
        return LAN_GUESS if self.rtt_ms is not None and self.rtt_ms < LAN_RTT_MS else WAN_GUESS

    def link(self) -> float | None:
        """The rate to plan a codec with: None on a fast link (nothing compressed), else
        as measured or guessed, or what starved/agent_bound assume when that is more."""
        if self.rtt_ms is not None and self.rtt_ms < FAST_RTT_MS:
            return None
        return max(self.guess(), self.assumed or 0.0)

    def describe(self) -> str:
        """For the log: the link planned with, as measured, and the agent's pace."""
        link, pace = self.link(), self.agent_pace()
        return (f"link {f'{link / 1e6:.1f} MB/s' if link else 'fast'} "
                f"(measured {f'{self.rate / 1e6:.1f} MB/s' if self.rate else 'not'}), "
                f"agent {f'{pace / 1e6:.0f} MB/s' if pace else 'not measured'}")

    @property
    def fast(self) -> bool:
        return self.rtt_ms is not None and self.rtt_ms < FAST_RTT_MS

    def window_limited(self) -> bool:
        """More than one channel's SSH window (~2 MB) is in flight per round trip (by the
        rate measured or guessed, never by what is only assumed)."""
        return not self.fast and self.rtt_ms is not None and self.guess() * self.rtt_ms / 1000 > WINDOW


class AckClock:
    """Wire bytes answered per second, from requests pipelined on one connection; a rate
    measured while the agent was busy nearly all along (AGENT_BOUND, by the seconds its
    answers say it spent) measures the agent, not the link (LinkMeter.agent_bound); one
    measured while the sender waited for its batches a good part of the time (STARVED_SHARE)
    measured this side: it raises the link's rate, never lowers it (a second checkout's
    batches of small files measured 4-5 MB/s on a 12.5 MB/s link, and the session's next
    pushes would have planned their codecs for that)."""

    def __init__(self, meter: LinkMeter) -> None:
        self.meter = meter
        self.inflight = 0
        self.total = 0
        self.busy = 0.0     # the agent's seconds on the answers so far, as they said
        self.starved = 0.0  # seconds the sender waited for its batches (per lane), so far
        self.points: deque[tuple[float, int, float, float]] = deque()

    def agent_busy(self, raw: int, seconds: float, pace: bool = True) -> None:
        """The last answer says the agent spent this long on its raw bytes (the meter
        keeps the agent's pace of applying pushes from it; not from a pull's reads: pace
        False).  Answers of several threads of the agent (a pull's blocks) can add up to
        more seconds than passed: busy all along all the same."""
        self.busy += seconds
        if pace:
            self.meter.agent_busy(raw, seconds)

    def waited(self, seconds: float, lanes: int = 1) -> None:
        """One of lanes sending lanes waited this long for its next batch."""
        self.starved += seconds / max(1, lanes)

    def sent(self, weight: int) -> None:
        """A request went out, weighing weight bytes (its wire size, or for a read what
        it asks for)."""
        self.inflight += weight

    def answered(self, weight: int, wire: int | None = None) -> None:
        """Its answer came (wire bytes on the wire, by default its weight): a measuring
        point when the link was still busy with more behind it."""
        self.inflight -= weight
        self.total += weight if wire is None else wire
        now = time.perf_counter()
        if self.inflight < max(weight, 64 << 10):
            self.points.clear()   # the link ran dry: what follows measures this side
            return
        self.points.append((now, self.total, self.busy, self.starved))
        while len(self.points) > 3 and now - self.points[1][0] >= RATE_WINDOW:
            self.points.popleft()
        t0, b0, busy0, starved0 = self.points[0]
        if len(self.points) >= 3 and now - t0 >= RATE_WINDOW:
            rate = (self.total - b0) / (now - t0)
            if self.busy - busy0 >= AGENT_BOUND * (now - t0):
                self.meter.agent_bound(rate)
            elif self.starved - starved0 < STARVED_SHARE * (now - t0) or rate > self.meter.guess():
                self.meter.update(rate)


def read_formats() -> list[str]:
    """The formats this side decodes in a pull (read_block's accept): the stdlib's, and zstd
    with zstandard (REMOTE_DEV_ZSTD=0, for measurements: not zstd)."""
    out = [ZLIB, BZ2]
    if zstandard is not None and os.environ.get("REMOTE_DEV_ZSTD") != "0":
        out.append(ZSTD)
    return out


def decompress(fmt: str, data: bytes, size: int) -> bytes:
    """A pulled block of at most size raw bytes, sent in format fmt: zstd with zstandard
    (the remote's `zstd` program writes no content size: size bounds the output), the
    rest as the agent's protocol does."""
    if fmt == ZSTD and zstandard is not None:
        try:
            return zstandard.ZstdDecompressor().decompress(data, max_output_size=size)
        except zstandard.ZstdError as e:
            raise ValueError(f"damaged zstd block: {e}") from None
    return protocol_decompress(fmt, data)


def compress(fmt: str, level: int, data: bytes) -> bytes:
    """data in format fmt at level: the zlib format with zlib-ng when it is here (the
    worker processes' own function: one way of compressing, wherever it runs)."""
    return deflate_with(fmt, level, data)


def table_speed(fmt: str, level: int) -> float:
    for f, lv, mbs, _rel in LOCAL_CODECS:
        if f == fmt and lv == level:
            return mbs * 1e6
    return 0.0


class Compressor:
    """The worker threads of one transfer and the codec choice: per payload, the codec
    that moves the most raw bytes per second given the link, this machine's cores and
    speed, and the payload's own compressibility."""

    def __init__(self, meter: LinkMeter, formats: list[str] | None) -> None:
        self.meter = meter
        self.formats = formats or [ZLIB]
        if os.environ.get("REMOTE_DEV_ZSTD") == "0":   # for measurements: zlib even where zstd is there
            self.formats = [f for f in self.formats if f != ZSTD]
        self.cores = max(1, min(os.cpu_count() or 1, 8))
        self.pool = ThreadPoolExecutor(self.cores, thread_name_prefix="rd-compress")
        self.speed = 1.0       # speed reached / the table's, as measured
        self.lock = threading.Lock()
        self.used: dict[str, int] = {}   # codec name -> payloads compressed with it
        self.agents = 1        # agents applying the payloads at once (the push's channels)

    def choose(self, data: bytes | memoryview) -> tuple[str, int]:
        forced = os.environ.get("REMOTE_DEV_CODEC")   # for measurements: raw, zlib-1, bz2-9 ...
        if forced:
            fmt, _, level = forced.partition("-")
            return ("" if fmt == "raw" else fmt), int(level or 0)
        link = self.meter.link()
        if link is None:
            return RAW, 0
        return choose_codec(link, self.cores, sample_ratio(data), self.formats, self.speed, LOCAL_CODECS,
                            self.ceiling())

    def ceiling(self) -> float | None:
        """Raw bytes per second the agents take at most, where that is what bounds the
        push (LinkMeter.ceiling; None: the link does)."""
        pace = self.meter.ceiling()
        return None if pace is None else pace * self.agents

    def compress(self, fmt: str, level: int, data: bytes) -> tuple[str, bytes]:
        """(format, payload): data compressed as chosen (in a worker thread), or as it is
        when that does not pay; the speed reached is measured."""
        if not fmt:
            self.count(RAW, 0)
            return RAW, data
        t0 = time.perf_counter()
        blob = compress(fmt, level, data)
        self.measured(fmt, level, len(data), time.perf_counter() - t0)
        if len(blob) >= len(data):
            return RAW, data
        return fmt, blob

    def plan(self) -> tuple[object, ...]:
        """What choose() decides by, for a worker process (packer.choose)."""
        return (os.environ.get("REMOTE_DEV_CODEC"), self.meter.link(), self.cores, self.formats, self.speed,
                LOCAL_CODECS, self.ceiling())

    def measured(self, fmt: str, level: int, raw: int, dt: float) -> None:
        """raw bytes were compressed as fmt-level in dt seconds (here or in a worker)."""
        table = table_speed(fmt, level) if fmt else 0.0
        if table and dt > 0.002:
            with self.lock:
                self.speed = 0.7 * self.speed + 0.3 * min(2.0, raw / dt / table)
        self.count(fmt, level)

    def count(self, fmt: str, level: int) -> None:
        name = f"{fmt}-{level}" if fmt else "raw"
        with self.lock:
            self.used[name] = self.used.get(name, 0) + 1

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)
