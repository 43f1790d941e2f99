#!/usr/bin/env python3
"""remote_dev push against rsync -a and tar|ssh on the same tree, in one run.

    .venv/bin/python bench/sync_bench.py [--copies 3] [--repeat 5] [--delay-ms 20] [--remote-base DIR]
                                         [--part all|watchers]

Builds (once) bench/.work/tree: copies of the venv's site-packages, >= 17,000 real files and
>= 200 MB, committed to a git repository of its own (a project as users have them).  Starts
its own sshd on loopback (tests/support/sshd.py), opens an ssh ControlMaster for rsync and
tar, and measures on loopback and again through a userspace TCP proxy adding --delay-ms each
way (a second Host alias points at it):

  * initial push to an empty remote folder: remote_dev (Engine.call_sync("push"), its
    connection already open, as in Neovim), `rsync -a`, `tar c | ssh tar x`;
  * no-op push (nothing changed): remote_dev vs `rsync -a` of the whole tree;
  * one file changed: remote_dev pushing that one path, warm (what push on save does) vs
    `rsync -a` of the whole tree (and, for reference, rsync of that one path);
  * Neovim's worst answer time: a real headless Neovim runs :RemotePush of the whole tree
    into an empty remote folder while this script evals `1+1` in it every 5 ms.

--part watchers (loopback only): the no-op and one-file steps with each watcher backend in
the pushing process (REMOTE_DEV_WATCHER=inotify, =watchdog, and =none: what a laptop
without inotify gets when watchdog cannot watch either), each beside `rsync -a` of the tree
in the same run; one file is pushed both by path (push on save) and by a tree push (what
`:RemoteRun` does after an edit).  The first push after a backend switch (a whole-tree
scan) is not counted.

Prints the figures, their ratios and the targets.  Machines are noisy: compare ratios
measured in one run, never absolute times across runs.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
WORK = REPO / "bench" / ".work"
sys.path[:0] = [str(REPO / "python"), str(REPO / "tests")]

MIN_FILES = 17_000
MIN_BYTES = 200_000_000
SKIP_OVER = 16 << 20            # leave the odd huge binary out of the copies


# --------------------------------------------------------------------------- the tree


def site_packages() -> Path:
    import pynvim

    return Path(pynvim.__file__).resolve().parent.parent


def build_tree(tree: Path, copies: int) -> tuple[int, int]:
    marker = tree / ".bench-complete"
    if marker.exists() and marker.read_text().strip() == str(copies):
        return count_tree(tree)
    if tree.exists():
        shutil.rmtree(tree)
    src = site_packages()
    print(f"building {tree} from {copies} copies of {src} ...", flush=True)
    for i in range(copies):
        for dirpath, dirnames, filenames in os.walk(src):
            rel = os.path.relpath(dirpath, src)
            dest = tree / f"copy{i}" / rel
            dest.mkdir(parents=True, exist_ok=True)
            for name in filenames:
                full = os.path.join(dirpath, name)
                # .gitignore files out: remote_dev, rsync and tar then send the same files
                if name == ".gitignore" or os.path.islink(full) or os.path.getsize(full) > SKIP_OVER:
                    continue
                shutil.copy2(full, dest / name)
    git = ["git", "-C", str(tree), "-c", "user.name=bench", "-c", "user.email=bench@localhost"]
    subprocess.run([*git, "init", "-q"], check=True)
    subprocess.run([*git, "add", "-A"], check=True)
    subprocess.run([*git, "commit", "-q", "-m", "bench tree"], check=True)
    # the index as a user's is after any git command: its stat data written after the files'
    # mtimes (right after the commit every entry is "racy" and git compares content)
    time.sleep(1.1)
    subprocess.run([*git, "update-index", "-q", "--refresh"], check=True)
    marker.write_text(f"{copies}\n")
    (tree / ".git" / "info" / "exclude").write_text(".bench-complete\n.remote-dev.toml\n")
    return count_tree(tree)


def count_tree(tree: Path) -> tuple[int, int]:
    files = size = 0
    for dirpath, dirnames, filenames in os.walk(tree):
        if ".git" in dirnames:
            dirnames.remove(".git")
        for name in filenames:
            if name in (".bench-complete", ".remote-dev.toml"):
                continue
            files += 1
            size += os.lstat(os.path.join(dirpath, name)).st_size
    return files, size


# --------------------------------------------------------------------------- delay proxy


def start_proxy(target_port: int, delay_ms: float) -> tuple[subprocess.Popen[bytes], int]:
    """The proxy runs in a process of its own so it never competes with the engine for
    this interpreter's GIL."""
    from support.sshd import free_port

    port = free_port()
    proc = subprocess.Popen([sys.executable, str(REPO / "bench" / "wan.py"), "proxy", "--listen", f"127.0.0.1:{port}",
                             "--target", f"127.0.0.1:{target_port}", "--delay-ms", str(delay_ms)])
    deadline = time.monotonic() + 10
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return proc, port
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.02)


# --------------------------------------------------------------------------- helpers


def run(argv: list[str] | str, **kw: Any) -> float:
    t0 = time.perf_counter()
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, **kw)
    return time.perf_counter() - t0


def settle_disk() -> None:
    """Write back what earlier steps left dirty, so no step pays for another's writes."""
    subprocess.run(["sync"], check=False)


def warm(tree: Path) -> None:
    """Read the whole tree, so every initial push starts with it in the page cache (this
    kind of VM reclaims cold pages eagerly; whoever ran first would pay the disk reads)."""
    subprocess.run(f"tar -C {tree} --exclude=./.git -cf - . | cat > /dev/null", shell=True, check=True)


def median(xs: list[float]) -> float:
    return statistics.median(xs)


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.tree = WORK / "tree"
        self.remote_base = Path(args.remote_base) if args.remote_base else WORK / "remote"
        self.results: dict[str, dict[str, float]] = {"lo": {}, "wan": {}}
        self.n = 0

    def fresh_remote(self, label: str) -> Path:
        self.n += 1
        return self.remote_base / f"{label}-{self.n}"

    # -- rsync / tar
    def ssh_cmd(self) -> str:
        return f"ssh -F {self.sshd.ssh_config}"

    def rsync(self, alias: str, remote: Path, sub: str = "") -> float:
        src = f"{self.tree}/{sub}" if sub else f"{self.tree}/"
        dst = f"{alias}:{remote}/{sub}" if sub else f"{alias}:{remote}/"
        return run(["rsync", "-a", "--exclude=/.git", "--exclude=/.bench-complete", "-e", self.ssh_cmd(), src, dst])

    def tar(self, alias: str, remote: Path) -> float:
        return run(f"tar -C {self.tree} --exclude=./.git --exclude=./.bench-complete -cf - . | "
                   f"{self.ssh_cmd()} {alias} 'mkdir -p {remote} && tar -C {remote} -xf -'", shell=True)

    # -- remote_dev through the engine
    def write_config(self) -> None:
        lines = []
        for name, alias in self.targets.items():
            lines.append(self.sshd.target_toml(str(self.remote_roots[name]), name=name).replace(
                f'host = "{self.sshd.alias}"', f'host = "{alias}"'))
        (self.tree / ".remote-dev.toml").write_text("\n".join(lines))

    def engine_push(self, target: str, paths: list[str] | None = None) -> tuple[float, dict[str, Any]]:
        ctx = {"cwd": str(self.tree)}
        self.engine.call_sync("target", ctx, {"name": target}, timeout=60)
        t0 = time.perf_counter()
        res = self.engine.call_sync("push", ctx, {"paths": paths} if paths else {}, timeout=1800)
        return time.perf_counter() - t0, res

    def engine_connect(self, target: str) -> float:
        ctx = {"cwd": str(self.tree)}
        self.engine.call_sync("target", ctx, {"name": target}, timeout=60)
        return self.engine.call_sync("status", ctx, {}, timeout=60)["rtt_ms"]

    # -- the steps
    def measure(self, where: str, alias: str) -> None:
        r = self.results[where]
        reps = self.args.repeat
        print(f"[{where}] initial push ...", flush=True)
        settle_disk()
        warm(self.tree)
        r["init_rd"], res = self.engine_push(f"{where}_rd")
        assert res["files"] >= MIN_FILES and not res["errors"] and not res["conflicts"], res
        settle_disk()
        warm(self.tree)
        rsync_root = self.fresh_remote(f"{where}-rsync")
        r["init_rsync"] = self.rsync(alias, rsync_root)
        settle_disk()
        warm(self.tree)
        r["init_tar"] = self.tar(alias, self.fresh_remote(f"{where}-tar"))
        settle_disk()
        print(f"[{where}] no-op push ...", flush=True)
        rd, rs = [], []
        for _ in range(reps):
            t, res = self.engine_push(f"{where}_rd")
            assert res["files"] == 0, res
            rd.append(t)
            rs.append(self.rsync(alias, rsync_root))
        r["noop_rd"], r["noop_rsync"] = median(rd), median(rs)
        print(f"[{where}] one file changed ...", flush=True)
        victim = "copy0/pip/__init__.py"
        path = self.tree / victim
        original = path.read_bytes()
        rd, rs, rs1 = [], [], []
        try:
            for i in range(reps):
                path.write_bytes(original + f"# {where} {i} rd\n".encode())
                t, res = self.engine_push(f"{where}_rd", [str(path)])
                assert res["files"] == 1, res
                rd.append(t)
                path.write_bytes(original + f"# {where} {i} rsync\n".encode())
                rs.append(self.rsync(alias, rsync_root))
                path.write_bytes(original + f"# {where} {i} rsync1\n".encode())
                rs1.append(self.rsync(alias, rsync_root, victim))
        finally:
            path.write_bytes(original)
        r["one_rd"], r["one_rsync"], r["one_rsync_path"] = median(rd), median(rs), median(rs1)
        r["one_rd_worst"] = max(rd)
        assert (self.remote_roots[f"{where}_rd"] / victim).read_bytes().startswith(original)
        print(f"[{where}] Neovim during an initial push ...", flush=True)
        settle_disk()
        warm(self.tree)
        r["nvim_worst_ms"], r["nvim_p99_ms"], r["nvim_push"], r["nvim_evals"] = self.nvim_push(f"{where}_nvim")

    def measure_watchers(self) -> None:
        """The no-op and one-file steps per watcher backend, on loopback, with rsync -a."""
        from remote_dev.sync.watch import WATCHER_ENV

        reps = self.args.repeat
        settle_disk()
        warm(self.tree)
        t, res = self.engine_push("lo_rd")
        assert res["files"] >= MIN_FILES and not res["errors"], res
        rsync_root = self.fresh_remote("lo-rsync")
        self.rsync("rdbench", rsync_root)
        settle_disk()
        victim = "copy0/pip/__init__.py"
        path = self.tree / victim
        original = path.read_bytes()
        self.watchers: dict[str, dict[str, float]] = {}
        try:
            for backend in ("inotify", "watchdog", "none"):
                os.environ[WATCHER_ENV] = backend
                r = self.watchers[backend] = {}
                print(f"[watchers] {backend}: first push (a whole-tree scan) ...", flush=True)
                self.engine_push("lo_rd")
                rd, rs = [], []
                for _ in range(reps):
                    t, res = self.engine_push("lo_rd")
                    assert res["files"] == 0, res
                    rd.append(t)
                    rs.append(self.rsync("rdbench", rsync_root))
                r["noop_rd"], r["noop_rsync"] = median(rd), median(rs)
                rd, rt, rs = [], [], []
                for i in range(reps):
                    path.write_bytes(original + f"# {backend} {i} path\n".encode())
                    t, res = self.engine_push("lo_rd", [str(path)])
                    assert res["files"] == 1, res
                    rd.append(t)
                    path.write_bytes(original + f"# {backend} {i} tree\n".encode())
                    t, res = self.engine_push("lo_rd")
                    assert res["files"] == 1, res
                    rt.append(t)
                    path.write_bytes(original + f"# {backend} {i} rsync\n".encode())
                    rs.append(self.rsync("rdbench", rsync_root))
                r["one_rd"], r["one_tree"], r["one_rsync"] = median(rd), median(rt), median(rs)
        finally:
            path.write_bytes(original)
            os.environ.pop(WATCHER_ENV, None)

    def report_watchers(self, files: int) -> None:
        print()
        print(f"tree: {files} files, loopback, median of {self.args.repeat}; ratio = rsync -a / remote_dev "
              f"(same run); load average {os.getloadavg()[0]:.1f}")
        print(f"{'':12}{'no-op':>9}{'rsync':>9}{'ratio':>8}   {'1 file by path':>14}{'tree push':>10}"
              f"{'rsync':>9}{'ratios':>14}")
        for backend, r in self.watchers.items():
            print(f"{backend:12}{r['noop_rd'] * 1000:>7.0f}ms{r['noop_rsync'] * 1000:>7.0f}ms"
                  f"{r['noop_rsync'] / r['noop_rd']:>7.1f}x   {r['one_rd'] * 1000:>12.0f}ms"
                  f"{r['one_tree'] * 1000:>8.0f}ms{r['one_rsync'] * 1000:>7.0f}ms"
                  f"{r['one_rsync'] / r['one_rd']:>7.1f}x/{r['one_rsync'] / r['one_tree']:.1f}x")
        print("targets (issue 27: no-op >= 4x without inotify, >= 20x with it; one file >= 20x):")
        for backend, r in self.watchers.items():
            for what, ratio, goal in (("no-op", r["noop_rsync"] / r["noop_rd"], 20 if backend == "inotify" else 4),
                                      ("one file by path", r["one_rsync"] / r["one_rd"], 20),
                                      ("one file, tree push", r["one_rsync"] / r["one_tree"], 4)):
                print(f"  [{'ok ' if ratio >= goal else 'MISS'}] {backend}: {what} >= {goal}x faster than "
                      f"rsync -a ({ratio:.1f}x)")

    # -- Neovim
    def nvim_push(self, target: str) -> tuple[float, float, float, int]:
        import pynvim

        nvim = self.nvim
        nvim.command(f"RemoteTarget {target}")
        nvim.command("RemoteStatus")
        deadline = time.monotonic() + 60
        while True:
            st = nvim.exec_lua("return require('remote_dev').status()")
            if st and st.get("connected") and st.get("target") == target:
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"Neovim did not connect: {nvim.exec_lua('return _G.rd_messages')}")
            time.sleep(0.05)
        before = len(nvim.exec_lua("return _G.rd_events"))
        nvim.command("RemotePush")
        t0 = time.perf_counter()
        lat: list[float] = []
        done = None
        while done is None:
            t = time.perf_counter()
            assert nvim.eval("1 + 1") == 2
            lat.append(time.perf_counter() - t)
            t = time.perf_counter()
            evs = nvim.exec_lua("return _G.rd_events")
            lat.append(time.perf_counter() - t)
            for e in evs[before:]:
                if e["name"] == "RemoteDevPushDone":
                    done = e["data"]
                elif e["name"] == "RemoteDevError":
                    raise RuntimeError(e["data"])
            time.sleep(0.005)
        push_s = time.perf_counter() - t0
        assert done["files"] >= MIN_FILES, done
        del pynvim
        lat.sort()
        return lat[-1] * 1000, lat[int(len(lat) * 0.99)] * 1000, push_s, len(lat)

    def start_nvim(self) -> Any:
        import pynvim

        nvim_bin = str(Path(sys.executable).parent / "nvim")
        init = str(REPO / "tests" / "minimal_init.lua")
        base = Path(tempfile.mkdtemp(prefix="nvim-", dir=WORK))
        env = {
            "XDG_CONFIG_HOME": str(base / "config"), "XDG_DATA_HOME": str(base / "data"),
            "NVIM_RPLUGIN_MANIFEST": str(base / "rplugin.vim"), "REMOTE_DEV_PYTHON": sys.executable,
        }
        os.environ.update(env)
        subprocess.run([nvim_bin, "--headless", "-u", init, "-i", "NONE", "-n", "+UpdateRemotePlugins", "+qa!"],
                       check=True, capture_output=True, timeout=120)
        nvim = pynvim.attach("child", argv=[nvim_bin, "--embed", "--headless", "-u", init, "-i", "NONE", "-n"])
        nvim.command(f"cd {self.tree}")
        nvim.command(f"edit {self.tree / 'copy0/pip/__init__.py'}")
        assert nvim.call("RemoteDevPing") == "pong"  # the Python host's one-time start
        return nvim

    # -- main
    def main(self) -> None:
        from support.sshd import start_sshd, stop_sshd

        WORK.mkdir(parents=True, exist_ok=True)
        files, size = build_tree(self.tree, self.args.copies)
        print(f"tree: {files} files, {size / 1e6:.0f} MB (git work tree) at {self.tree}", flush=True)
        if files < MIN_FILES or size < MIN_BYTES:
            raise SystemExit(f"tree too small ({files} files, {size} bytes): raise --copies")
        shutil.rmtree(self.remote_base, ignore_errors=True)  # before anything is timed
        shutil.rmtree(WORK / "state", ignore_errors=True)
        for old in WORK.glob("nvim-*"):
            shutil.rmtree(old, ignore_errors=True)
        self.remote_base.mkdir(parents=True, exist_ok=True)
        os.environ["XDG_STATE_HOME"] = str(WORK / "state")
        self.sshd = start_sshd(WORK / "sshd", alias="rdbench")
        proxy, proxy_port = start_proxy(self.sshd.port, self.args.delay_ms)
        wan = "rdbench-wan"
        with open(self.sshd.ssh_config, "a") as f:
            f.write(textwrap.dedent(f"""\
                Host {wan}
                  HostName 127.0.0.1
                  Port {proxy_port}
                  User {os.environ.get('USER') or 'root'}
                  IdentityFile {self.sshd.user_key}
                  IdentitiesOnly yes
                  UserKnownHostsFile {self.sshd.known_hosts}
                  StrictHostKeyChecking yes
                  ControlMaster auto
                  ControlPath {self.sshd.dir}/cm-%C
                  ControlPersist 600
                """))
        pub = (self.sshd.dir / "hostkey.pub").read_text().split()
        with open(self.sshd.known_hosts, "a") as f:
            f.write(f"[127.0.0.1]:{proxy_port} {pub[0]} {pub[1]}\n")
        self.targets = {"lo_rd": "rdbench", "lo_nvim": "rdbench", "wan_rd": wan, "wan_nvim": wan}
        self.remote_roots = {name: self.fresh_remote(name) for name in self.targets}
        self.write_config()
        from remote_dev.actions import ACTIONS
        from remote_dev.engine import Engine

        self.engine = Engine(actions=ACTIONS)
        self.nvim = None
        try:
            for alias in ("rdbench", wan):  # ControlMaster open for rsync and tar
                subprocess.run(["ssh", "-F", str(self.sshd.ssh_config), "-o", "ControlPersist=600", "-fN", alias],
                               check=True, timeout=60)
            rtt = {"lo": self.engine_connect("lo_rd"), "wan": self.engine_connect("wan_rd")}
            ssh_true = {w: median([run(["ssh", "-F", str(self.sshd.ssh_config), a, "true"]) for _ in range(5)])
                        for w, a in (("lo", "rdbench"), ("wan", wan))}
            if self.args.part == "watchers":
                self.measure_watchers()
                self.report_watchers(files)
                return
            self.nvim = self.start_nvim()
            self.measure("lo", "rdbench")
            self.measure("wan", wan)
            self.report(files, size, rtt, ssh_true)
        finally:
            if self.nvim is not None:
                with contextlib.suppress(Exception):  # Neovim exits while answering
                    self.nvim.command("qa!")
            self.engine.close()
            proxy.terminate()
            stop_sshd(self.sshd)
            for alias in (wan,):
                subprocess.run(["ssh", "-F", str(self.sshd.ssh_config), "-O", "exit", alias], capture_output=True,
                               check=False)
            if not self.args.keep:
                shutil.rmtree(self.remote_base, ignore_errors=True)

    def report(self, files: int, size: int, rtt: dict[str, float], ssh_true: dict[str, float]) -> None:
        lo, wan = self.results["lo"], self.results["wan"]
        print()
        print(f"tree: {files} files, {size / 1e6:.0f} MB; remote on {self.remote_base}; "
              f"median of {self.args.repeat} for no-op and one-file")
        print(f"agent round trip: loopback {rtt['lo']:.2f} ms, proxied {rtt['wan']:.1f} ms; "
              f"`ssh host true` (ControlMaster open): {ssh_true['lo'] * 1000:.0f} / {ssh_true['wan'] * 1000:.0f} ms")
        print()
        head = f"{'':34}{'loopback':>28}   {f'{2 * self.args.delay_ms:.0f} ms RTT proxy':>28}"
        print(head)
        print(f"{'':34}{'remote_dev':>10}{'other':>10}{'ratio':>8}   {'remote_dev':>10}{'other':>10}{'ratio':>8}")

        def row(label: str, a: str, b: str, unit: str = "s") -> None:
            def cell(r: dict[str, float]) -> str:
                x, y = r[a], r[b]
                f = (lambda v: f"{v * 1000:.0f}ms") if unit == "ms" else (lambda v: f"{v:.2f}s")
                return f"{f(x):>10}{f(y):>10}{y / x:>7.1f}x"
            print(f"{label:34}{cell(lo)}   {cell(wan)}")
        row("initial push vs rsync -a", "init_rd", "init_rsync")
        row("initial push vs tar | ssh", "init_rd", "init_tar")
        row("no-op push vs rsync -a", "noop_rd", "noop_rsync", "ms")
        row("1 file changed vs rsync -a (tree)", "one_rd", "one_rsync", "ms")
        row("1 file changed vs rsync (1 path)", "one_rd", "one_rsync_path", "ms")
        print(f"{'Neovim worst eval during push':34}{lo['nvim_worst_ms']:>9.1f}ms{'':18}   "
              f"{wan['nvim_worst_ms']:>9.1f}ms")
        print(f"{'  (p99, evals, push time)':34}{lo['nvim_p99_ms']:>9.1f}ms{lo['nvim_evals']:>6}{lo['nvim_push']:>11.2f}s   "
              f"{wan['nvim_p99_ms']:>9.1f}ms{wan['nvim_evals']:>6}{wan['nvim_push']:>11.2f}s")
        print()
        wan_rtt = 2 * self.args.delay_ms / 1000

        def target(ok: bool, text: str) -> None:
            print(f"  [{'ok ' if ok else 'MISS'}] {text}")
        print("targets:")
        for w, r in (("loopback", lo), ("proxy", wan)):
            target(r["one_rsync"] / r["one_rd"] >= 20,
                   f"{w}: one changed file >= 20x faster than full-tree rsync ({r['one_rsync'] / r['one_rd']:.1f}x)")
            target(r["noop_rsync"] / r["noop_rd"] >= 4,
                   f"{w}: no-op >= 4x faster than rsync ({r['noop_rsync'] / r['noop_rd']:.1f}x)")
            target(r["init_rd"] <= r["init_tar"],
                   f"{w}: initial push no slower than tar|ssh ({r['init_rd']:.2f}s vs {r['init_tar']:.2f}s)")
            target(r["nvim_worst_ms"] < 50, f"{w}: Neovim worst answer < 50 ms ({r['nvim_worst_ms']:.1f} ms)")
        target(wan["one_rd"] <= 1.5 * wan_rtt,
               f"proxy: one changed file within 1.5 RTT ({wan['one_rd'] * 1000:.0f} ms, median; "
               f"worst {wan['one_rd_worst'] * 1000:.0f} ms; 1.5 RTT = {1.5 * wan_rtt * 1000:.0f} ms)")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--copies", type=int, default=3, help="copies of site-packages in the tree (default 3)")
    p.add_argument("--repeat", type=int, default=5, help="runs of the no-op and one-file steps (median)")
    p.add_argument("--delay-ms", type=float, default=20.0, help="proxy delay each way (default 20)")
    p.add_argument("--remote-base", help="where the remote folders go (default bench/.work/remote; "
                                         "/dev/shm takes the disk out of the figures)")
    p.add_argument("--keep", action="store_true", help="keep the remote folders afterwards")
    p.add_argument("--part", choices=("all", "watchers"), default="all",
                   help="watchers: only the no-op and one-file steps per watcher backend, loopback")
    args = p.parse_args()
    Bench(args).main()


if __name__ == "__main__":
    main()
