#!/usr/bin/env python3
"""16 runs at once, each printing 100k lines as fast as it can: does Neovim keep answering?

    .venv/bin/python bench/load_bench.py [-n 100000] [--runs 16] [--shown 4] [--baseline REV]

A loopback sshd of its own and a real headless Neovim with a UI attached at 180x45 (a
second client reading every redraw).  The runs are started with `:RemoteRun` (each pushes
first, as a user's would); each waits for one common start time, then prints -n numbered
lines.  `--shown` of the run buffers are in windows (the run window and splits), the rest
hidden.  While they stream, Neovim is asked `1+1` every 5 ms; printed: the answers' p50,
p99 and worst against the target (< 50 ms), the wall time from the start until the last
RemoteDevRunExit, the calls of the plugin's Lua entry point (count, total and worst ms),
and per run whether its buffer holds exactly the last run_buffer_lines lines (read with
nvim_buf_get_lines after RemoteDevRunExit, also for the hidden ones).

--baseline REV runs the same load first with the plugin as it is at that git revision (its
files taken with `git archive`, nothing changes in the checkout), then with this checkout,
and prints the ratios.  Machines are noisy: compare within one run.
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO / "python"), str(REPO / "tests")]

PY = "/usr/bin/python3" if os.path.exists("/usr/bin/python3") else "python3"
TARGET_MS = 50.0

PROBE = r"""
_G.rd_load = { exits = {}, calls = 0, ms = 0, worst = 0 }
vim.api.nvim_create_autocmd('User', { pattern = 'RemoteDevRunExit', callback = function(a)
  local s, us = vim.uv.gettimeofday()
  _G.rd_load.exits[a.data.id] = s + us / 1e6
end })
local rd = require('remote_dev')
local orig = rd._from_host
rd._from_host = function(...)
  local t0, c0 = vim.uv.hrtime(), os.clock()
  orig(...)
  local ms, cpu = (vim.uv.hrtime() - t0) / 1e6, (os.clock() - c0) * 1000
  local st = _G.rd_load
  st.calls, st.ms, st.worst = st.calls + 1, st.ms + ms, math.max(st.worst, ms)
  local what = select(1, ...) == 'report' and select(2, ...) or 'resolve'
  if what == 'event' then
    what = select(3, ...).name
  end
  st.kinds = st.kinds or {}
  local k = st.kinds[what] or { n = 0, ms = 0, worst = 0, cpu = 0, cpu_worst = 0 }
  k.n, k.ms, k.worst = k.n + 1, k.ms + ms, math.max(k.worst, ms)
  k.cpu, k.cpu_worst = k.cpu + cpu, math.max(k.cpu_worst, cpu)
  st.kinds[what] = k
end
"""


def producer(lines: int, go: float) -> str:
    code = (f"import sys, time; time.sleep(max(0, {go!r} - time.time())); w = sys.stdout.write; "
            f"[w('line %d\\n' % i) for i in range({lines})]")
    return f"{PY} -c " + shlex.quote(code)


def plugin_copy(rev: str, dest: Path) -> Path:
    """The plugin's files at a git revision, in dest (git archive: the checkout is untouched)."""
    dest.mkdir(parents=True)
    arch = subprocess.run(["git", "-C", str(REPO), "archive", rev], check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(dest)], input=arch, check=True)
    return dest


def cpu_ms(pid: int) -> float:
    """User + system CPU time of a process so far, in ms."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) * 1000 / os.sysconf("SC_CLK_TCK")


def host_pid(nvim_pid: int) -> int | None:
    """The Python host Neovim started (its child running python)."""
    for pid in os.listdir("/proc"):
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
            if int(stat.rsplit(")", 1)[1].split()[1]) == nvim_pid and b"python" in Path(f"/proc/{pid}/cmdline").read_bytes():
                return int(pid)
        except (OSError, ValueError):
            continue
    return None


def waited_ms(pid: int) -> float:
    """Time the process spent runnable but waiting for a CPU so far (schedstat), in ms."""
    return int(Path(f"/proc/{pid}/schedstat").read_text().split()[1]) / 1e6


def pct(v: list[float], q: float) -> float:
    s = sorted(v)
    return s[min(len(s) - 1, int(q * len(s)))] if s else float("nan")


def load(args: Any, tmp: Path, sshd: Any, plugin: Path, label: str) -> dict[str, Any]:
    from conftest import NVIM
    from support.ui_nvim import UiNvim, answer_times

    base = tmp / label
    root = base / "proj"
    root.mkdir(parents=True)
    (root / ".remote-dev.toml").write_text(sshd.target_toml(str(base / "remote")))
    (root / "main.py").write_text("print('hi')\n")
    init = str(plugin / "tests" / "minimal_init.lua")
    env = {"XDG_CONFIG_HOME": str(base / "config"), "XDG_DATA_HOME": str(base / "data"),
           "NVIM_RPLUGIN_MANIFEST": str(base / "rplugin.vim"), "REMOTE_DEV_PYTHON": sys.executable}
    subprocess.run([NVIM, "--headless", "-u", init, "-i", "NONE", "-n", "+UpdateRemotePlugins", "+qa!"],
                   env={**os.environ, **env}, capture_output=True, timeout=120, check=True)
    nv = UiNvim(NVIM, init, base / "nvim.sock", env)
    api = nv.api
    try:
        api.command(f"cd {root}")
        api.command(f"edit {root / 'main.py'}")
        assert api.call("RemoteDevPing") == "pong"
        api.exec_lua(PROBE)
        api.command(f"RemoteRun {PY} -c 'print(1)'")      # connect, push, warm
        deadline = time.monotonic() + 60
        while len(api.exec_lua("return vim.tbl_keys(_G.rd_load.exits)")) < 1:
            assert time.monotonic() < deadline, api.exec_lua("return _G.rd_messages")
            time.sleep(0.05)
        warm = api.exec_lua("return vim.tbl_keys(_G.rd_load.exits)")
        go = time.time() + 2.0 + 0.25 * args.runs
        cmd = producer(args.lines, go)
        for _ in range(args.runs):
            api.command(f"RemoteRun {cmd}")
        ids: list[str] = []
        while len(ids) < args.runs:
            assert time.time() < go - 0.3, f"only {len(ids)} of {args.runs} runs started before the start time"
            ids = [e["data"]["id"] for e in api.exec_lua("return _G.rd_events")
                   if e["name"] == "RemoteDevRunStart" and e["data"]["id"] not in warm]
            time.sleep(0.05)
        shown = api.exec_lua("""
          local ids, n = ...
          local main = vim.fn.win_getid(vim.fn.bufwinnr(vim.fn.bufnr('main.py')))
          for i = 1, n - 1 do
            vim.cmd('botright split')
            vim.api.nvim_win_set_buf(0, vim.fn.bufnr('remote-dev://run/' .. ids[i]))
          end
          vim.api.nvim_set_current_win(main)
          local out = {}
          for _, id in ipairs(ids) do
            if vim.fn.bufwinid(vim.fn.bufnr('remote-dev://run/' .. id)) ~= -1 then table.insert(out, id) end
          end
          return out""", ids, args.shown)
        api.exec_lua("_G.rd_load.calls, _G.rd_load.ms, _G.rd_load.worst, _G.rd_load.kinds = 0, 0, 0, {}")
        time.sleep(max(0.0, go - time.time()))
        redraws0 = nv.redraws
        host = host_pid(nv.proc.pid)
        cpu0, wait0, hcpu0 = cpu_ms(nv.proc.pid), waited_ms(nv.proc.pid), cpu_ms(host) if host else 0.0

        def all_exited() -> bool:
            return len(api.exec_lua("return vim.tbl_keys(_G.rd_load.exits)")) >= args.runs + 1
        answers = answer_times(api, all_exited, timeout=600)
        cpu, wait = cpu_ms(nv.proc.pid) - cpu0, waited_ms(nv.proc.pid) - wait0
        hcpu = cpu_ms(host) - hcpu0 if host else float("nan")
        exits = api.exec_lua("return _G.rd_load.exits")
        keep = api.exec_lua("return require('remote_dev.config').options.run_buffer_lines")
        want = [f"line {i}" for i in range(max(0, args.lines - keep), args.lines)]
        complete = {}
        for rid in ids:
            got = api.exec_lua("local b = vim.fn.bufnr('remote-dev://run/' .. ...) "
                               "return vim.api.nvim_buf_get_lines(b, 1, -1, false)", rid)
            complete[rid] = got == want
        prof = api.exec_lua("return _G.rd_load")
        return {"label": label, "answers": answers, "wall": max(exits[i] for i in ids) - go, "complete": complete,
                "shown": shown, "ids": ids, "calls": prof["calls"], "lua_ms": prof["ms"], "lua_worst": prof["worst"], "kinds": prof.get("kinds") or {},
                "redraws": nv.redraws - redraws0, "cpu": cpu, "wait": wait, "host_cpu": hcpu, "size": nv.ui_size()}
    finally:
        nv.close()


def report(r: dict[str, Any]) -> None:
    a = r["answers"]
    worst = max(a) if a else float("nan")
    print(f"\n[{r['label']}] UI {r['size'][0]}x{r['size'][1]}, {len(r['shown'])} run buffers shown, "
          f"{len(r['ids']) - len(r['shown'])} hidden; {r['redraws']} redraw batches")
    print(f"  answers to `1+1`: n={len(a)}  p50 {pct(a, 0.5):.1f} ms  p99 {pct(a, 0.99):.1f} ms  "
          f"worst {worst:.1f} ms  (mean {statistics.fmean(a):.1f})  target < {TARGET_MS:.0f} ms: "
          f"{'met' if worst < TARGET_MS else 'MISS'}")
    print(f"  wall time from the start until the last RemoteDevRunExit: {r['wall']:.2f} s; Neovim's CPU "
          f"time in it: {r['cpu']:.0f} ms, waiting for a CPU {r['wait']:.0f} ms; its Python host's CPU time "
          f"{r['host_cpu']:.0f} ms")
    print(f"  Lua entry point (_from_host): {r['calls']} calls, {r['lua_ms']:.0f} ms in all, worst {r['lua_worst']:.1f} ms")
    print("    by kind (wall; CPU): " + ", ".join(f"{k} {v['n']}x {v['ms']:.0f} ms, worst {v['worst']:.1f}; CPU "
                                                f"{v['cpu']:.0f}, worst {v['cpu_worst']:.1f}"
                                     for k, v in sorted(r["kinds"].items(), key=lambda kv: -kv[1]["ms"])))
    for rid in r["ids"]:
        print(f"    run {rid} ({'shown' if rid in r['shown'] else 'hidden'}): "
              f"{'complete' if r['complete'][rid] else 'INCOMPLETE'}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-n", "--lines", type=int, default=100_000, help="lines each run prints (default 100000)")
    ap.add_argument("--runs", type=int, default=16, help="runs at once (default 16)")
    ap.add_argument("--shown", type=int, default=4, help="run buffers in windows (default 4)")
    ap.add_argument("--baseline", metavar="REV", help="first the same load with the plugin at this git revision")
    ap.add_argument("--shared", action="store_true",
                    help="the remote's processes (sshd, agent, the runs) on the same cores as Neovim; by default "
                         "they are pinned to the last core and Neovim, its host and this script to the others, "
                         "as a remote is another machine")
    args = ap.parse_args()
    from conftest import start_sshd, stop_sshd

    tmp = Path(tempfile.mkdtemp(prefix="rd-load-bench-"))
    os.environ["XDG_STATE_HOME"] = str(tmp / "state")
    sshd = start_sshd(tmp / "sshd")
    cores = sorted(os.sched_getaffinity(0))
    where = "remote and Neovim share every core"
    if not args.shared and len(cores) > 1:
        os.sched_setaffinity(sshd.proc.pid, {cores[-1]})      # its sessions, the agent, the runs inherit it
        os.sched_setaffinity(0, set(cores[:-1]))               # Neovim and its host inherit ours
        where = f"remote on core {cores[-1]}, Neovim on {','.join(map(str, cores[:-1]))}"
    try:
        print(f"loopback sshd 127.0.0.1:{sshd.port}, {os.cpu_count()} cores ({where}), load "
              f"{os.getloadavg()[0]:.2f}; {args.runs} runs x {args.lines} lines")
        results = []
        if args.baseline:
            results.append(load(args, tmp, sshd, plugin_copy(args.baseline, tmp / "baseline"), args.baseline))
            report(results[-1])
        results.append(load(args, tmp, sshd, REPO, "this checkout"))
        report(results[-1])
        if len(results) == 2:
            old, new = (max(r["answers"]) for r in results)
            print(f"\nworst answer: {new:.1f} ms vs {old:.1f} ms at {args.baseline} ({new / old:.2f}x); wall "
                  f"{results[1]['wall']:.2f} s vs {results[0]['wall']:.2f} s ({results[1]['wall'] / results[0]['wall']:.2f}x)")
        ok = all(max(r["answers"]) < TARGET_MS and all(r["complete"].values()) for r in results[-1:])
        return 0 if ok else 1
    finally:
        stop_sshd(sshd)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
