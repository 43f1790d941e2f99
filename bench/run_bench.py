#!/usr/bin/env python3
"""Runs vs plain ssh, against one loopback sshd, in one run.

    .venv/bin/python bench/run_bench.py [-n 15] [--gb 1.0] [--no-nvim] [--skip-throughput]

(a) Start to first output byte, warm (connection open, the project pushed once):
    the engine's `run` action (what :RemoteRun calls: no-op push, detached start through
    the agent, follow) until the first `run_output` report carrying a line, vs
    `ssh alias CMD` until the first byte on its stdout (with a ControlMaster open, and
    without).  Also through a real headless Neovim: `:RemoteRun CMD` until the run
    buffer shows the first output line (timed inside Neovim).  Target: ratio <= 0.3x.
    A per-phase breakdown of the engine runs (push, run_start, first run_read) follows.

(b) Throughput: a run printing --gb GB of 100-byte lines; wall time from the call to
    RemoteDevRunExit, MB/s, peak RSS of the process holding the engine; vs
    `ssh alias CMD > /dev/null`.  Through Neovim too: peak RSS of nvim and of its Python
    host, and the run buffer's line count (bounded by run_buffer_lines).

Machines are noisy: compare the ratios measured in one run (see /work/shared/TESTBED.md).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO / "python"), str(REPO / "tests")]

# An absolute interpreter: `python3` on PATH differs between `ssh host cmd` (the login
# shell's PATH, e.g. a pyenv shim costing ~0.1 s) and a run (the agent's environment), and
# the comparison is about the transport, not about PATH.
PY = "/usr/bin/python3" if os.path.exists("/usr/bin/python3") else "python3"
LATENCY_CMDS = ["echo hi", f'{PY} -c "print(1)"']


def gen_cmd(total: int) -> str:
    """A one-line command (so :RemoteRun takes it as is) printing `total` bytes of
    100-byte lines, in 1 MB writes (rounded down to whole MB)."""
    blocks = max(1, total // 1_000_000)
    code = ("import sys; b = (b'x' * 99 + b'\\n') * 10000; w = sys.stdout.buffer.write; "
            f"[w(b) for _ in range({blocks})]")
    return f"{PY} -c " + shlex.quote(code)


def med(v: list[float]) -> float:
    return statistics.median(v) if v else float("nan")


def proc_status(pid: int | str = "self") -> dict[str, int]:
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(("VmHWM", "VmRSS")):
                k, v = line.split(":")
                out[k] = int(v.split()[0]) // 1024  # MB
    return out


def reset_hwm(pid: int | str = "self") -> bool:
    try:
        with open(f"/proc/{pid}/clear_refs", "w") as f:
            f.write("5")  # resets the peak RSS (VmHWM) to the current RSS
        return True
    except OSError:
        return False


# --------------------------------------------------------------------------- engine side


class Recorder:
    """The engine's report callback: first output line and exit per run, phases."""

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.first_line: dict[str, float] = {}
        self.exits: dict[str, tuple[float, dict[str, Any]]] = {}
        self.lines: dict[str, int] = {}
        self.dropped: dict[str, int] = {}
        self.last_partial: dict[str, str] = {}

    def __call__(self, kind: str, payload: dict[str, Any]) -> None:
        now = time.perf_counter()
        if kind == "run_output":
            rid = payload["id"]
            n = len(payload["lines"])
            if n and rid not in self.first_line:
                self.first_line[rid] = now
            self.lines[rid] = self.lines.get(rid, 0) + n
            self.dropped[rid] = self.dropped.get(rid, 0) + payload.get("dropped", 0)
        elif kind == "event" and payload["name"] == "RemoteDevRunExit":
            with self.cond:
                self.exits[payload["data"]["id"]] = (now, payload["data"])
                self.cond.notify_all()

    def wait_exit(self, rid: str, timeout: float) -> tuple[float, dict[str, Any]]:
        with self.cond:
            if not self.cond.wait_for(lambda: rid in self.exits, timeout):
                raise TimeoutError(f"run {rid} did not exit in {timeout} s")
            return self.exits[rid]


PHASES: list[tuple[str, float]] = []   # (what, perf_counter), appended from the engine thread


def instrument() -> None:
    """Time stamps of the phases of a run start (wrappers cost microseconds)."""
    from remote_dev import sync
    from remote_dev.engine import TargetSession

    orig_push = sync.do_push

    async def timed_push(*a: Any, **kw: Any) -> Any:
        PHASES.append(("push<", time.perf_counter()))
        try:
            return await orig_push(*a, **kw)
        finally:
            PHASES.append(("push>", time.perf_counter()))
    sync.do_push = timed_push

    orig_call = TargetSession.call

    async def timed_call(self: Any, method: str, *params: Any, **kw: Any) -> Any:
        if method not in ("run_start", "run_read"):
            return await orig_call(self, method, *params, **kw)
        PHASES.append((method + "<", time.perf_counter()))
        res = await orig_call(self, method, *params, **kw)
        tag = method + (">data" if method == "run_read" and res.get("data") else ">")
        PHASES.append((tag, time.perf_counter()))
        return res
    TargetSession.call = timed_call  # type: ignore[method-assign]


def phase_breakdown(t0: float, marks: list[tuple[str, float]], first: float) -> dict[str, float]:
    def at(tag: str) -> float | None:
        return next((t for k, t in marks if k == tag), None)
    out: dict[str, float] = {}
    p0, p1, s0, s1, d = at("push<"), at("push>"), at("run_start<"), at("run_start>"), at("run_read>data")
    polls = 0
    for k, _ in marks:
        if k.startswith("run_read>"):
            polls += 1
            if k == "run_read>data":
                break
    if None in (p0, p1, s0, s1, d):
        return out
    out["call -> push"] = (p0 - t0) * 1000
    out["no-op push"] = (p1 - p0) * 1000
    out["push -> run_start"] = (s0 - p1) * 1000
    out["run_start (agent: spawn supervisor)"] = (s1 - s0) * 1000
    out["run_start -> first data read"] = (d - s1) * 1000
    out["first data read -> report"] = (first - d) * 1000
    out["run_read calls until data"] = float(polls)
    return out


def ssh_first_byte(argv: list[str]) -> tuple[float, float]:
    """(ms to the first stdout byte, ms to exit)."""
    t0 = time.perf_counter()
    p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    assert p.stdout is not None
    first = os.read(p.stdout.fileno(), 1)
    t1 = time.perf_counter()
    assert first, f"no output from {argv}"
    p.stdout.read()
    p.wait()
    return (t1 - t0) * 1000, (time.perf_counter() - t0) * 1000


def make_project(base: Path, name: str, sshd: Any, files: int = 40) -> Path:
    root = base / name
    (root / "pkg").mkdir(parents=True)
    (root / ".remote-dev.toml").write_text(sshd.target_toml(str(base / "remote" / name)))
    (root / "main.py").write_text("from pkg import mod0\nprint(mod0.VALUE)\n")
    for i in range(files):
        (root / "pkg" / f"mod{i}.py").write_text(f"VALUE = {i}\n" + "# filler\n" * 50)
    (root / "pkg" / "__init__.py").write_text("")
    return root


# --------------------------------------------------------------------------- Neovim side

LUA_HOOK = r"""
_G.rd_bench = { first = {}, t0 = 0 }
local run = require('remote_dev.run')
local orig = run.on_output
run.on_output = function(p)
  local n = p.n or #(p.lines or {})   -- the rplugin host sends one text of n lines
  orig(p)
  local buf = vim.fn.bufnr('remote-dev://run/' .. p.id)
  if n > 0 and not _G.rd_bench.first[p.id] and buf > 0 and vim.api.nvim_buf_line_count(buf) >= 2 then
    _G.rd_bench.first[p.id] = vim.uv.hrtime()
  end
end
"""


class NvimBench:
    def __init__(self, base: Path, root: Path) -> None:
        import pynvim
        from conftest import MINIMAL_INIT, NVIM

        env = {
            "XDG_CONFIG_HOME": str(base / "config"), "XDG_DATA_HOME": str(base / "data"),
            "NVIM_RPLUGIN_MANIFEST": str(base / "rplugin.vim"), "REMOTE_DEV_PYTHON": sys.executable,
        }
        base.mkdir(parents=True, exist_ok=True)
        os.environ.update(env)
        argv = [NVIM, "--headless", "-u", MINIMAL_INIT, "-i", "NONE", "-n"]
        subprocess.run(argv + ["+UpdateRemotePlugins", "+qa!"], capture_output=True, timeout=120, check=True)
        self.api = pynvim.attach("child", argv=[NVIM, "--embed", *argv[1:]])
        self.pid = self.api.call("getpid")
        assert self.api.call("RemoteDevPing") == "pong"       # the Python host is up
        self.host_pid = next(p for p in children(self.pid) if b"python" in cmdline(p))
        self.api.command(f"cd {root}")
        self.api.command(f"edit {root / 'main.py'}")
        self.api.exec_lua(LUA_HOOK)
        self.seen_exits = 0

    def run(self, cmd: str, timeout: float = 120) -> tuple[str, float | None, float]:
        """(run id, ms to the first line in the run buffer, ms to the exit event)."""
        self.api.exec_lua("_G.rd_bench.t0 = vim.uv.hrtime(); vim.cmd('RemoteRun ' .. ...)", cmd)
        deadline = time.monotonic() + timeout
        while True:
            exits = self.api.exec_lua("local o = {} for _, e in ipairs(_G.rd_events) do "
                                      "if e.name == 'RemoteDevRunExit' then table.insert(o, e.data) end end "
                                      "return {o, vim.uv.hrtime()}")
            if len(exits[0]) > self.seen_exits:
                break
            if time.monotonic() > deadline:
                raise TimeoutError(f"no RemoteDevRunExit for {cmd!r}; messages "
                                   f"{self.api.exec_lua('return _G.rd_messages')}")
            time.sleep(0.01)
        self.seen_exits = len(exits[0])
        rid = exits[0][-1]["id"]
        t0, first = self.api.exec_lua("return {_G.rd_bench.t0, _G.rd_bench.first[...] or false}", rid)
        first_ms = (first - t0) / 1e6 if first else None
        return rid, first_ms, (exits[1] - t0) / 1e6

    def buffer_lines(self, rid: str) -> int:
        return self.api.exec_lua("return vim.api.nvim_buf_line_count(vim.fn.bufnr('remote-dev://run/' .. ...))", rid)

    def close(self) -> None:
        with contextlib.suppress(Exception):   # it exits while answering
            self.api.command("qa!")
        with contextlib.suppress(Exception):
            self.api.close()


def children(pid: int) -> list[int]:
    out = []
    for p in os.listdir("/proc"):
        if p.isdigit():
            try:
                with open(f"/proc/{p}/stat") as f:
                    if int(f.read().rsplit(")", 1)[1].split()[1]) == pid:
                        out.append(int(p))
            except OSError:
                pass
    return out


def cmdline(pid: int) -> bytes:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read()
    except OSError:
        return b""


class HwmSampler(threading.Thread):
    """Peak RSS of other processes, sampled (VmHWM where it can be reset, else max VmRSS)."""

    def __init__(self, pids: dict[str, int]) -> None:
        super().__init__(daemon=True)
        self.pids = pids
        self.peak = {k: 0 for k in pids}
        self.stop = threading.Event()
        self.hwm_ok = all(reset_hwm(p) for p in pids.values())

    def run(self) -> None:
        while not self.stop.wait(0.05):
            self.sample()

    def sample(self) -> None:
        for k, p in self.pids.items():
            try:
                st = proc_status(p)
            except OSError:
                continue
            self.peak[k] = max(self.peak[k], st["VmHWM"] if self.hwm_ok else st["VmRSS"])

    def finish(self) -> dict[str, int]:
        self.stop.set()
        self.join()
        self.sample()
        return self.peak


# --------------------------------------------------------------------------- main


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("-n", type=int, default=15, help="repetitions per command for (a) (default 15)")
    ap.add_argument("--gb", type=float, default=1.0, help="output size for (b) in GB (default 1.0)")
    ap.add_argument("--no-nvim", action="store_true", help="skip the measurements through Neovim")
    ap.add_argument("--skip-throughput", action="store_true", help="only (a)")
    ap.add_argument("--skip-latency", action="store_true", help="only (b)")
    ap.add_argument("--cold", type=int, default=5,
                    help="fresh connections for the cold-start figures (default 5; 0 skips them)")
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="rd-run-bench-"))
    os.environ["XDG_STATE_HOME"] = str(tmp / "state")
    from conftest import start_sshd, stop_sshd
    from remote_dev.actions import ACTIONS
    from remote_dev.engine import Engine

    instrument()
    sshd = start_sshd(tmp / "sshd", extra_config="AcceptEnv SHLVL\n")
    rec = Recorder()
    eng = Engine(report=rec, actions=ACTIONS)
    nv: NvimBench | None = None
    cfg = str(sshd.ssh_config)
    ssh_master = ["ssh", "-F", cfg, sshd.alias]
    ssh_plain = ["ssh", "-F", cfg, "-o", "ControlMaster=no", "-o", "ControlPath=none", sshd.alias]
    lean_path = ["-o", f"ControlPath={tmp}/sshd/cm-lean-%C"]
    ssh_lean = ["ssh", "-F", cfg, "-o", "SetEnv=SHLVL=1", *lean_path, sshd.alias]
    try:
        root = make_project(tmp, "proj", sshd)
        ctx = {"cwd": str(root)}

        def engine_run(cmd: str, timeout: float = 60) -> tuple[str, float, float | None, float]:
            PHASES.clear()
            t0 = time.perf_counter()
            res = eng.call_sync("run", ctx, {"cmd": cmd}, timeout=timeout)
            t_exit, data = rec.wait_exit(res["id"], timeout)
            assert data["code"] == 0, data
            return res["id"], t0, rec.first_line.get(res["id"]), t_exit

        # warm: connection, agent, first push, ControlMaster
        eng.call_sync("status", ctx, {}, timeout=60)
        eng.call_sync("push", ctx, {}, timeout=60)
        # the first run of a connection: no spare supervisor started ahead yet
        _rid, t0, first, _ = engine_run("echo hi")
        first_run_ms = (first - t0) * 1000 if first else float("nan")
        time.sleep(0.5)
        for _ in range(2):
            engine_run("true")
        subprocess.run(ssh_master + ["true"], check=True, timeout=60, stdin=subprocess.DEVNULL)
        lean_check = subprocess.run(ssh_lean + ["echo $SHLVL"], capture_output=True, text=True, timeout=60,
                                    check=False)
        assert lean_check.stdout.strip() == "2", f"lean ssh session not lean: {lean_check.stdout!r}"
        if not args.no_nvim:
            nv_root = make_project(tmp, "proj-nvim", sshd)
            nv = NvimBench(tmp / "nvim", nv_root)
            for _ in range(2):
                nv.run("true")

        print(f"loopback sshd 127.0.0.1:{sshd.port}, python {sys.version.split()[0]}, {os.cpu_count()} cores")
        if not args.skip_latency:
            latency(args, engine_run, nv, ssh_master, ssh_lean, ssh_plain)
            print(f"first run of a connection (no spare supervisor yet), `echo hi`: {first_run_ms:.1f} ms "
                  f"(one sample)")
        if args.cold:
            cold_starts(args.cold, ctx)
        if not args.skip_throughput:
            throughput(args, eng, ctx, rec, nv, ssh_master)
    finally:
        if nv is not None:
            nv.close()
        eng.close()
        subprocess.run(["ssh", "-F", cfg, *lean_path, "-O", "exit", sshd.alias], capture_output=True, timeout=10,
                       check=False)
        stop_sshd(sshd)
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


def latency(args: Any, engine_run: Any, nv: NvimBench | None, ssh_master: list[str], ssh_lean: list[str],
            ssh_plain: list[str]) -> None:
    print(f"\n(a) start -> first output line, warm, median of n={args.n} (interleaved)")
    head = (f"{'command':30} {'engine':>7} {'nvim':>7} {'ssh+CM':>7} {'lean':>7} {'ssh':>7}  "
            f"{'eng/ssh+CM':>10} {'nvim/ssh+CM':>11} {'eng/lean':>8} {'nvim/lean':>9}")
    print(head)
    print("-" * len(head))
    breakdowns: dict[str, list[dict[str, float]]] = {}
    worst = worst_lean = 0.0
    for cmd in LATENCY_CMDS:
        eng_ms: list[float] = []
        nv_ms: list[float] = []
        cm_ms: list[float] = []
        lean_ms: list[float] = []
        plain_ms: list[float] = []
        for _ in range(args.n):
            _rid, t0, first, _t_exit = engine_run(cmd)
            assert first is not None, f"no output line from {cmd!r}"
            eng_ms.append((first - t0) * 1000)
            breakdowns.setdefault(cmd, []).append(phase_breakdown(t0, list(PHASES), first))
            if nv is not None:
                _rid, f_ms, _ = nv.run(cmd)
                if f_ms is not None:
                    nv_ms.append(f_ms)
            cm_ms.append(ssh_first_byte(ssh_master + [cmd])[0])
            lean_ms.append(ssh_first_byte(ssh_lean + [cmd])[0])
            plain_ms.append(ssh_first_byte(ssh_plain + [cmd])[0])
        e, n, c, lean, p = med(eng_ms), med(nv_ms), med(cm_ms), med(lean_ms), med(plain_ms)
        worst = max(worst, e / c, (n / c) if nv_ms else 0)
        worst_lean = max(worst_lean, e / lean, (n / lean) if nv_ms else 0)
        print(f"{cmd:30} {e:7.1f} {n:7.1f} {c:7.1f} {lean:7.1f} {p:7.1f}  "
              f"{e / c:9.3f}x {n / c:10.3f}x {e / lean:7.3f}x {n / lean:8.3f}x")
    print("(ms; engine = the run action in this process until the first run_output with a line;"
          "\n nvim = :RemoteRun until the run buffer shows the first line, timed inside Neovim;"
          "\n ssh+CM = `ssh alias CMD` over an open ControlMaster until the first stdout byte, the login"
          "\n   shell as configured (here root's ~/.bashrc runs `pyenv init`: ~0.1 s of every session);"
          "\n lean = the same over its own ControlMaster with SHLVL=1 sent, so bash skips ~/.bashrc;"
          "\n ssh = `ssh alias CMD` without a ControlMaster, login shell as configured)")
    print(f"target <= 0.3x vs ssh+CM: {'MET' if worst <= 0.3 else 'MISSED'} (worst ratio {worst:.3f}x); "
          f"vs lean: {'MET' if worst_lean <= 0.3 else 'MISSED'} (worst ratio {worst_lean:.3f}x)")
    print("\nengine phase breakdown, median ms:")
    for cmd, rows in breakdowns.items():
        rows = [r for r in rows if r]
        if not rows:
            continue
        print(f"  {cmd}")
        for key in rows[0]:
            print(f"    {key:40} {med([r[key] for r in rows]):8.2f}")


def cold_starts(n: int, ctx: dict[str, Any]) -> None:
    """What a fresh agent costs: an agent started on an open connection until its first
    answer (the bootstrap, the agent's imports: what each extra push channel pays), and
    the first run of a fresh connection, `echo hi` to first line (no spare supervisor
    yet: the supervisor's interpreter and imports are on the way)."""
    from remote_dev.engine import Engine
    from remote_dev.rpc import AgentChannel

    agent_ms: list[float] = []
    first_ms: list[float] = []
    for _ in range(n):
        rec = Recorder()
        eng = Engine(report=rec)
        try:
            eng.call_sync("status", ctx, {}, timeout=60)
            eng.call_sync("push", ctx, {}, timeout=60)
            t0 = time.perf_counter()
            res = eng.call_sync("run", ctx, {"cmd": "echo hi"}, timeout=60)
            rec.wait_exit(res["id"], 60)
            first_ms.append((rec.first_line[res["id"]] - t0) * 1000)
            time.sleep(0.5)   # the spare supervisor started after the run is up
            sess = eng.projects[Path(ctx["cwd"]).resolve()].session()

            async def extra() -> float:
                t = time.perf_counter()
                chan = await AgentChannel.start(sess.conn, sess.target.host, sess.target.python)
                try:
                    await chan.call("ping")
                finally:
                    chan.close()
                return (time.perf_counter() - t) * 1000
            for _ in range(3):
                agent_ms.append(eng.submit(extra()).result(60))
        finally:
            eng.close()
    print(f"\ncold starts, median of {n} fresh connections:")
    print(f"  extra agent on an open connection, start to first answer: {med(agent_ms):7.1f} ms "
          f"(n={len(agent_ms)})")
    print(f"  first run of a connection, `echo hi` to first line:       {med(first_ms):7.1f} ms (n={len(first_ms)})")


def throughput(args: Any, eng: Any, ctx: dict[str, Any], rec: Recorder, nv: NvimBench | None,
               ssh_master: list[str]) -> None:
    total = int(args.gb * 1e9) // 1_000_000 * 1_000_000
    cmd = gen_cmd(total)
    mb = total / 1e6
    print(f"\n(b) throughput: a run printing {mb:.0f} MB of 100-byte lines ({total // 100:,} lines)")
    # ssh baseline
    t0 = time.perf_counter()
    subprocess.run(ssh_master + [cmd], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, check=True, timeout=900)
    ssh_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    subprocess.run(["sh", "-c", cmd], stdout=subprocess.DEVNULL, check=True, timeout=900)
    local_s = time.perf_counter() - t0

    # through the engine, in this process
    before = proc_status()
    hwm_reset = reset_hwm()
    PHASES.clear()
    t0 = time.perf_counter()
    res = eng.call_sync("run", ctx, {"cmd": cmd}, timeout=60)
    t_exit, data = rec.wait_exit(res["id"], 900)
    eng_s = t_exit - t0
    after = proc_status()
    rid = res["id"]
    got = rec.lines.get(rid, 0) + rec.dropped.get(rid, 0)
    assert data["code"] == 0, data
    assert got == total // 100, f"lines shown + skipped {got} != {total // 100}"
    reads = sum(1 for k, _ in PHASES if k.startswith("run_read>"))

    rows = [("sh -c CMD > /dev/null (local, no ssh)", local_s, None),
            ("ssh alias CMD > /dev/null (ControlMaster)", ssh_s, None),
            ("engine run -> RemoteDevRunExit", eng_s, after["VmHWM"])]
    nv_peaks: dict[str, int] = {}
    nv_lines = 0
    if nv is not None:
        sampler = HwmSampler({"nvim": nv.pid, "python host": nv.host_pid})
        base_rss = {k: proc_status(p)["VmRSS"] for k, p in sampler.pids.items()}
        sampler.start()
        rid_nv, _first, exit_ms = nv.run(cmd, timeout=900)
        nv_peaks = sampler.finish()
        nv_lines = nv.buffer_lines(rid_nv)
        rows.append(("nvim :RemoteRun -> RemoteDevRunExit", exit_ms / 1000, None))
    print(f"{'':44} {'wall s':>8} {'MB/s':>8} {'vs ssh':>8} {'peak RSS MB':>12}")
    for name, s, rss in rows:
        print(f"{name:44} {s:8.2f} {mb / s:8.1f} {s / ssh_s:7.2f}x {rss if rss is not None else '':>12}")
    print(f"engine process: RSS before {before['VmRSS']} MB, peak during the run {after['VmHWM']} MB "
          f"({'VmHWM reset before the run' if hwm_reset else 'VmHWM since process start'}); "
          f"{reads} run_read calls; {rec.lines.get(rid, 0):,} lines reported, {rec.dropped.get(rid, 0):,} skipped "
          f"(update rate limit)")
    if nv is not None:
        print(f"nvim: RSS before {base_rss['nvim']} MB, peak {nv_peaks['nvim']} MB; python host: RSS before "
              f"{base_rss['python host']} MB, peak {nv_peaks['python host']} MB; run buffer {nv_lines} lines "
              f"(run_buffer_lines 10000 + state line)")


if __name__ == "__main__":
    sys.exit(main())
