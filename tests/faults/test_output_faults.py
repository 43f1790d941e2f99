"""Output that would swamp a client: one 200 MB line without a newline, and 1 GB printed as
fast as Python writes it.  The client's memory stays bounded (peak RSS of Neovim, of its
Python host and of the CLI, measured and printed), the run buffer keeps its line limit,
the long line is cut and says so, the end of the output arrives."""
from __future__ import annotations

import os
import shutil
import subprocess
import threading
import time
from pathlib import Path

from conftest import wait_for

from .conftest import CLI, quit_nvim

OUTPUT_MB = int(os.environ.get("REMOTE_DEV_FAULT_OUTPUT_MB", "1000"))
LINE_MB = 200
MEMORY_BOUND_MB = 600        # generous: what each client process may peak at

PRODUCER = '''\
import sys
mode, n = sys.argv[1], int(sys.argv[2])
w = sys.stdout.buffer.write
if mode == "line":
    block = b"x" * (1 << 20)
    for _ in range(n):
        w(block)
    w(b"\\nafter the long line\\n")
else:
    block = (b"y" * 99 + b"\\n") * 10000
    for _ in range(n):
        w(block)
    w(b"done\\n")
'''


def peak_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def host_pid(nvim_pid: int) -> int:
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            ppid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
        except (OSError, ValueError, IndexError):
            continue
        if ppid == nvim_pid and b"python" in cmd:
            return int(pid)
    raise AssertionError("no Python host under Neovim")


def drop_big_logs(remote) -> None:
    """Run folders with logs of 100 MB and more: not kept for the next sessions."""
    runs = remote.cache / "runs"
    for d in runs.iterdir() if runs.exists() else []:
        log = d / "output.log"
        if log.exists() and log.stat().st_size >= 100 << 20:
            shutil.rmtree(d, ignore_errors=True)


def run_measured(argv: list[str], env: dict[str, str], timeout: float) -> tuple[int, bytes, bytes, float]:
    """(exit code, stdout, stderr, peak RSS in MB) of a command (os.wait4 of that child)."""
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    got: dict[str, bytes] = {}
    readers = [threading.Thread(target=lambda k=k, f=f: got.__setitem__(k, f.read()))
               for k, f in (("out", proc.stdout), ("err", proc.stderr))]
    for t in readers:
        t.start()
    killer = threading.Timer(timeout, proc.kill)
    killer.start()
    try:
        _, status, usage = os.wait4(proc.pid, 0)
    finally:
        killer.cancel()
    proc.returncode = os.waitstatus_to_exitcode(status)
    for t in readers:
        t.join()
    return proc.returncode, got["out"], got["err"], usage.ru_maxrss / 1024


def run_in_nvim(nvim, cmd: str, timeout: float) -> tuple[dict, list[str], float]:
    before = len(nvim.events("RemoteDevRunExit"))
    t0 = time.monotonic()
    nvim.command(f"RemoteRun {cmd}")
    wait_for(lambda: len(nvim.events("RemoteDevRunExit")) > before, timeout, 0.2, what=f"{cmd} to end")
    took = time.monotonic() - t0
    ex = nvim.events("RemoteDevRunExit")[-1]["data"]
    buf = next(b for b in nvim.buffers if b.name.endswith(ex["id"]))
    return ex, buf[:], took


def test_huge_output_keeps_neovim_bounded(remote, fault_project, nvim, figures):
    proj = fault_project()
    main = proj.write("out.py", PRODUCER)
    nvim.open(proj.root, main)
    nvim.start_host()
    nvim_pid, host = nvim.call("getpid"), None
    problems = []
    ex, lines, took_line = run_in_nvim(nvim, f"python3 out.py line {LINE_MB}", 600)
    host = host_pid(nvim_pid)
    if ex["code"] != 0:
        problems.append(f"long line run: exit {ex['code']}")
    long = [ln for ln in lines if ln.startswith("xxxx")]
    if len(long) != 1 or len(long[0]) > 9000 or "cut" not in long[0]:
        problems.append(f"the long line is not one cut line: {[len(x) for x in long]} {long[0][-120:] if long else ''}")
    if lines[-1] != "after the long line":
        problems.append(f"the output after the long line is missing: {lines[-3:]}")
    ex, lines, took_fast = run_in_nvim(nvim, f"python3 out.py fast {OUTPUT_MB}", 900)
    keep = nvim.exec_lua("return require('remote_dev.config').options.run_buffer_lines")
    if ex["code"] != 0:
        problems.append(f"fast run: exit {ex['code']}")
    if len(lines) > keep + 1:
        problems.append(f"run buffer holds {len(lines)} lines (run_buffer_lines {keep})")
    if lines[-1] != "done":
        problems.append(f"the end of the output is missing: {lines[-3:]}")
    nvim_mb, host_mb = peak_mb(nvim_pid), peak_mb(host)
    for who, mb in (("Neovim", nvim_mb), ("its Python host", host_mb)):
        if mb > MEMORY_BOUND_MB:
            problems.append(f"{who} peaked at {mb:.0f} MB (bound {MEMORY_BOUND_MB} MB)")
    quit_nvim(nvim)
    procs = remote.settle()
    drop_big_logs(remote)
    figures.add(f"{LINE_MB} MB line + {OUTPUT_MB} MB fast output (Neovim)", remote.kind, 2, int(bool(problems)),
                len(procs), f"peak RSS Neovim {nvim_mb:.0f} MB, host {host_mb:.0f} MB; line {took_line:.0f} s, "
                            f"{OUTPUT_MB} MB in {took_fast:.0f} s")
    assert not problems, problems
    assert not procs, remote.describe(procs)


def test_huge_line_keeps_the_cli_bounded(remote, fault_project, figures, isolated_state):
    """`remote-dev run` prints the run's output: the 200 MB line arrives cut, its peak RSS
    stays bounded."""
    proj = fault_project()
    proj.write("out.py", PRODUCER)
    env = {**os.environ, "XDG_STATE_HOME": str(isolated_state)}
    t0 = time.monotonic()
    code, out, err, peak = run_measured([CLI, "-C", str(proj.root), "run", "python3", "out.py", "line", str(LINE_MB)],
                                        env, 600)
    took = time.monotonic() - t0
    lines = out.decode(errors="replace").splitlines()
    problems = []
    if code != 0:
        problems.append(f"exit {code}: {err.decode(errors='replace')[-300:]}")
    if lines[-1:] != ["after the long line"] or not any("cut" in ln for ln in lines if ln.startswith("xxx")):
        problems.append(f"output: {[ln[-80:] for ln in lines[-3:]]}")
    if err.strip():
        problems.append(f"stderr: {err.decode(errors='replace')[:300]}")
    if peak > MEMORY_BOUND_MB:
        problems.append(f"the CLI peaked at {peak:.0f} MB (bound {MEMORY_BOUND_MB} MB)")
    procs = remote.settle()
    drop_big_logs(remote)
    figures.add(f"{LINE_MB} MB line (CLI)", remote.kind, 1, int(bool(problems)), len(procs),
                f"peak RSS {peak:.0f} MB; {took:.0f} s")
    assert not problems, problems
    assert not procs, remote.describe(procs)
