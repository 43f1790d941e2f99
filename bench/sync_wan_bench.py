#!/usr/bin/env python3
"""remote_dev push and pull against rsync -a, rsync -az, tar|ssh and tar|zstd -3|ssh on WAN-like
links and on loopback, in one run (as root: the links are bench/wan.py beds).

    .venv/bin/python bench/sync_wan_bench.py [--links lo,1gbit/2,100mbit/40,20mbit/80]
        [--parts init,noop,one,pull,second] [--repeat 3] [--remote-base DIR] [--remote-fs tmpfs|disk] [--bashrc] [--keep]

The tree (built once, kept in bench/.work/wantree, a git repository of its own): real text
files of this machine -- the interpreter's stdlib, the venv's site-packages, then the
system's dist-packages -- each 1 KB..4 MB, valid UTF-8, taken in sorted order until 108 MB
(as issue 12 measured: ~4,900 real text files, ~108 MB).  Per link:

  * initial push into an empty remote folder: remote_dev (Engine.call_sync("push"), its
    connection already open, as in Neovim), `rsync -a`, `rsync -az`, `tar c | ssh tar x`,
    `tar c | zstd -3 | ssh 'zstd -d | tar x'`; the tree read into the page cache and `sync`
    run before each;
  * no-op push (median of --repeat): remote_dev vs full-tree `rsync -a` and `rsync -az`;
  * one file changed (median): remote_dev pushing that path (as push on save does) vs
    full-tree `rsync -a` / `rsync -az` (and, for reference, rsync -az of that one path);
  * pull of 32 MB of results (a 24 MB text log + 8 MB of random bytes) written on the remote
    (median of --repeat, the results written anew each time): remote_dev `pull` (sync.pull =
    ["results"]) vs `rsync -az` back;
  * second (not by default): a second checkout of the tree, 2% of its files changed, pushed
    into a NEW remote_root vs `rsync -az` (and `rsync -az --copy-dest`) into a fresh folder
    (bench/second_checkout.py; issue 27);
  * on loopback, with the initial push: asyncssh alone carrying the tree's bytes (remote_dev's
    connection into `cat > /dev/null`), the floor of a push over asyncssh on that link.

The remote folders (all tools alike) are on a tmpfs the bench mounts when it runs as root
(--remote-fs disk: a folder on the disk instead).  This VM's root is an ext4 without a
journal: there the inode allocator skips every inode deleted in the last 60-300 s, each with
a lookup of its inode table block (ext4 recently_deleted(); perf: 70% of the writer's CPU),
so whoever creates files first after the previous trees were removed pays several times
what the next tool pays -- an order effect, not a property of the tools.  A remote on a
journaled file system (any real one) has no such cost.

rsync and tar use an ssh ControlMaster opened before timing, and "lean" sessions (SHLVL=1
sent, sshd AcceptEnv SHLVL: the remote bash skips ~/.bashrc, which runs `pyenv init` here,
~0.1 s per session): the competitors at their cheapest.  --bashrc lets them pay it.
Prints a table with the ratios, the targets of issue 12 and the goals of issue 27 (1gbit/2:
the campus link, tbf at 1 Gbit/s and 1 ms each way).  Machines are noisy: compare ratios
measured in one run, never absolute times across runs.  REMOTE_DEV_PACK=processes /
threads: the worker processes (packer.py; not the default) or threads.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import shlex
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
WORK = REPO / "bench" / ".work"
sys.path[:0] = [str(REPO / "python"), str(REPO / "tests"), str(REPO / "bench")]

from second_checkout import measure_second, report_second  # noqa: E402
from sync_bench import run, settle_disk, warm  # noqa: E402
from wan import WanBed, catch_signals, kill_pids  # noqa: E402

TREE_RECIPE = "text>=1KB<=4MB utf8; stdlib, venv site-packages, dist-packages; until 108 MB; v1"
TREE_BYTES = 108_000_000
MIN_FILE, MAX_FILE = 1024, 4 << 20
LOG_BYTES, BLOB_BYTES = 24_000_000, 8_000_000
EXCLUDES = (".git", ".bench-complete", ".remote-dev.toml", "results")
TOOLS = ("rd", "rsync_a", "rsync_az", "tar", "tar_zstd")
TOOL_NAMES = {"rd": "remote_dev", "rsync_a": "rsync -a", "rsync_az": "rsync -az", "tar": "tar|ssh",
              "tar_zstd": "tar|zstd -3|ssh"}


# --------------------------------------------------------------------------- the tree


def tree_sources() -> list[tuple[str, Path]]:
    import sysconfig

    import pynvim

    out = [("stdlib", Path(sysconfig.get_paths()["stdlib"])),
           ("site-packages", Path(pynvim.__file__).resolve().parent.parent)]
    dist = Path("/usr/lib/python3/dist-packages")
    if dist.is_dir():
        out.append(("dist-packages", dist))
    return out


def text_file(path: str, size: int) -> bool:
    if not MIN_FILE <= size <= MAX_FILE:
        return False
    try:
        with open(path, "rb") as f:
            data = f.read()
        if b"\0" in data:
            return False
        data.decode("utf-8")
        return True
    except (OSError, UnicodeDecodeError):
        return False


def build_tree(tree: Path) -> None:
    marker = tree / ".bench-complete"
    if marker.exists() and marker.read_text().strip() == TREE_RECIPE:
        return
    if tree.exists():
        shutil.rmtree(tree)
    total = 0
    for label, src in tree_sources():
        print(f"tree: taking text files from {src} ...", flush=True)
        skip = {src / "site-packages"} if label == "stdlib" else set()
        for dirpath, dirnames, filenames in os.walk(src):
            dirnames[:] = sorted(d for d in dirnames if d != "__pycache__" and Path(dirpath, d) not in skip)
            for name in sorted(filenames):
                full = os.path.join(dirpath, name)
                if name == ".gitignore" or os.path.islink(full) or not text_file(full, os.path.getsize(full)):
                    continue
                dest = tree / label / os.path.relpath(full, src)
                dest.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(full, dest)
                total += os.path.getsize(full)
                if total >= TREE_BYTES:
                    break
            if total >= TREE_BYTES:
                break
        if total >= TREE_BYTES:
            break
    git = ["git", "-C", str(tree), "-c", "user.name=bench", "-c", "user.email=bench@localhost"]
    subprocess.run([*git, "init", "-q"], check=True)
    (tree / ".git" / "info" / "exclude").write_text("".join(f"/{e}\n" for e in EXCLUDES[1:]))
    subprocess.run([*git, "add", "-A"], check=True)
    subprocess.run([*git, "commit", "-q", "-m", "bench tree"], check=True)
    marker.write_text(TREE_RECIPE + "\n")


def count_tree(root: Path) -> tuple[int, int]:
    files = size = 0
    for dirpath, dirnames, filenames in os.walk(root):
        if dirpath == str(root):
            dirnames[:] = [d for d in dirnames if d not in EXCLUDES]
            filenames = [f for f in filenames if f not in EXCLUDES]
        for name in filenames:
            files += 1
            size += os.lstat(os.path.join(dirpath, name)).st_size
    return files, size


def build_results(src: Path) -> None:
    """A training run's output: a 24 MB text log and 8 MB of random bytes, the same every run."""
    if (src / "train.log").exists() and (src / "train.log").stat().st_size == LOG_BYTES \
            and (src / "weights.bin").exists():
        return
    src.mkdir(parents=True, exist_ok=True)
    rng = random.Random(12)
    lines, n, step, loss = [], 0, 0, 9.0
    while n < LOG_BYTES:
        step += 1
        loss = max(0.01, loss * 0.99995 + rng.gauss(0, 0.01))
        line = (f"step {step:7d} | epoch {step // 5000:3d} | loss {loss:.6f} | lr {3e-4 * min(1, step / 2000):.3e} "
                f"| grad_norm {abs(rng.gauss(1, 0.3)):.4f} | tok/s {rng.gauss(41000, 800):9.1f} | "
                f"mem {rng.uniform(20, 22):.2f} GiB\n")
        lines.append(line)
        n += len(line)
    (src / "train.log").write_text("".join(lines)[:LOG_BYTES])
    (src / "weights.bin").write_bytes(rng.randbytes(BLOB_BYTES))


# --------------------------------------------------------------------------- links


@dataclass
class Link:
    key: str                  # "lo" or "100mbit/40"
    rate: str = ""
    rtt_ms: float = 0.0
    bed: WanBed | None = None
    alias: str = ""
    ssh_config: Path = Path()
    cm_dir: Path = Path()
    r: dict[str, Any] = field(default_factory=dict)

    @property
    def wan(self) -> bool:
        return self.key != "lo"

    @property
    def target(self) -> str:
        return "lo" if not self.wan else "wan_" + self.key.replace("/", "_")

    @property
    def label(self) -> str:
        return "loopback" if not self.wan else f"{self.rate} {self.rtt_ms:g} ms"


def parse_links(text: str) -> list[Link]:
    out = []
    for item in text.split(","):
        item = item.strip()
        if item in ("lo", "loopback"):
            out.append(Link("lo"))
            continue
        rate, _, rtt = item.partition("/")
        if not rtt:
            raise SystemExit(f"--links: {item!r}: say lo or RATE/RTT_MS, e.g. 100mbit/40")
        out.append(Link(item, rate, float(rtt)))
    return out


def stop_leftover_sshd(base: Path) -> None:
    """A loopback sshd (and ssh masters) a killed earlier run left in base: stop them."""
    for sock in base.glob("cm-*"):
        subprocess.run(["ssh", "-S", str(sock), "-O", "exit", "x"], capture_output=True, timeout=10, check=False)
    with contextlib.suppress(OSError, ValueError):
        pid = int((base / "sshd.pid").read_text())
        if str(base / "sshd_config") in Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace"):
            print(f"stopping the loopback sshd an earlier run left (pid {pid})", flush=True)
            kill_pids([pid])


def median(xs: list[float]) -> float:
    return statistics.median(xs)


# --------------------------------------------------------------------------- the bench


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.tree = WORK / "wantree"
        self.remote_base = Path(args.remote_base) if args.remote_base else WORK / "wanremote"
        self.links = parse_links(args.links)
        self.parts = set(args.parts.split(","))
        self.zstd = shutil.which("zstd")
        self.tools = set(args.tools.split(",")) if "init" in self.parts else set()
        self.n = 0
        self.engine: Any = None
        self.lo_sshd: Any = None

    # -- shared
    def fresh_remote(self, label: str) -> Path:
        self.n += 1
        return self.remote_base / f"{self.n:02d}-{label}"

    def ssh(self, link: Link) -> str:
        argv = ["ssh", "-F", str(link.ssh_config), "-o", f"ControlPath={link.cm_dir}/cm-lean-%C"]
        if not self.args.bashrc:
            argv += ["-o", "SetEnv=SHLVL=1"]
        return " ".join(shlex.quote(a) for a in argv)

    def rsync(self, link: Link, remote: Path, z: bool, sub: str = "", pull: bool = False,
              local: Path | None = None) -> float:
        excl = [f"--exclude=/{e}" for e in EXCLUDES]
        flags = "-az" if z else "-a"
        if pull:
            return run(["rsync", flags, "-e", self.ssh(link), f"{link.alias}:{remote}/", f"{local}/"])
        src = f"{self.tree}/{sub}" if sub else f"{self.tree}/"
        dst = f"{link.alias}:{remote}/{sub}" if sub else f"{link.alias}:{remote}/"
        return run(["rsync", flags, *excl, "-e", self.ssh(link), src, dst])

    def tar(self, link: Link, remote: Path, zstd: bool) -> float:
        excl = " ".join(f"--exclude=./{e}" for e in EXCLUDES)
        r = shlex.quote(str(remote))
        if zstd:
            cmd = (f"tar -C {self.tree} {excl} -cf - . | zstd -3 -q -c | {self.ssh(link)} {link.alias} "
                   f"'mkdir -p {r} && zstd -d -q -c | tar -C {r} -xf -'")
        else:
            cmd = f"tar -C {self.tree} {excl} -cf - . | {self.ssh(link)} {link.alias} 'mkdir -p {r} && tar -C {r} -xf -'"
        return run(["bash", "-o", "pipefail", "-c", cmd])

    def ctx(self) -> dict[str, Any]:
        return {"cwd": str(self.tree)}

    def rd(self, link: Link, action: str, args: dict[str, Any] | None = None) -> tuple[float, dict[str, Any]]:
        self.engine.call_sync("target", self.ctx(), {"name": link.target}, timeout=60)
        t0 = time.perf_counter()
        res = self.engine.call_sync(action, self.ctx(), args or {}, timeout=3600)
        return time.perf_counter() - t0, res

    def ssh_floor(self, link: Link) -> float:
        """What the SSH library alone takes to carry the tree's bytes: remote_dev's own
        connection (asyncssh, its ciphers) streaming as many bytes in 1 MB writes into
        `cat > /dev/null` -- no files read, hashed or written.  A floor for any push over
        asyncssh on a link this fast."""
        total = self.tree_size[1]
        block = os.urandom(1 << 20)

        async def stream() -> float:
            conn = None
            for proj in self.engine.projects.values():
                sess = proj.sessions.get(link.target)
                if sess is not None and sess.conn is not None:
                    conn = sess.conn
            assert conn is not None, "no open connection to measure"
            proc = await conn.create_process("cat > /dev/null", encoding=None)
            t0 = time.perf_counter()
            left = total
            while left > 0:
                proc.stdin.write(block[:min(left, len(block))])
                left -= len(block)
                await proc.stdin.drain()
            proc.stdin.write_eof()
            await proc.wait()
            return time.perf_counter() - t0
        return median([self.engine.submit(stream()).result(300) for _ in range(3)])

    def drop_session(self, link: Link) -> None:
        async def drop() -> None:
            for proj in self.engine.projects.values():
                sess = proj.sessions.pop(link.target, None)
                if sess is not None:
                    sess.drop()
        self.engine.submit(drop()).result(10)

    def write_config(self) -> None:
        from support.sshd import toml_value

        lines = []
        for link in self.links:
            lines += [f"[targets.{link.target}]", f"host = {toml_value(link.alias)}",
                      f"remote_root = {toml_value(str(self.rd_root(link)))}",
                      f"ssh_config = {toml_value(str(link.ssh_config))}", 'python = "python3"', ""]
        lines += ["[sync]", 'pull = ["results"]', ""]
        (self.tree / ".remote-dev.toml").write_text("\n".join(lines))

    def rd_root(self, link: Link) -> Path:
        return self.remote_base / f"rd-{link.target}"

    def same_tree(self, remote: Path, what: str) -> None:
        got, want = count_tree(remote), self.tree_size
        if got != want:
            raise RuntimeError(f"{what}: the remote has {got[0]} files / {got[1]} bytes, the tree {want[0]} / {want[1]}")

    # -- the steps of one link
    def measure(self, link: Link) -> None:
        r = link.r
        self.engine.call_sync("target", self.ctx(), {"name": link.target}, timeout=60)
        rtt = self.engine.call_sync("status", self.ctx(), {}, timeout=120)["rtt_ms"]   # connect, as Neovim has
        r["agent_rtt_ms"] = rtt
        subprocess.run(f"{self.ssh(link)} -o ControlPersist=600 -fN {link.alias}", shell=True, check=True, timeout=60)
        r["ssh_true"] = median([run(f"{self.ssh(link)} {link.alias} true", shell=True) for _ in range(3)])
        print(f"[{link.label}] agent round trip {rtt:.1f} ms, `ssh host true` (ControlMaster"
              f"{'' if self.args.bashrc else ', lean'}) {r['ssh_true'] * 1000:.0f} ms", flush=True)
        roots: dict[str, Path] = {}
        if "init" in self.parts or "noop" in self.parts or "one" in self.parts:
            print(f"[{link.label}] initial push ...", flush=True)
            for tool in TOOLS:
                if tool == "tar_zstd" and not self.zstd:
                    continue
                if tool != "rd" and tool not in self.tools and not (tool == "rsync_a" and self.parts & {"noop", "one"}):
                    continue
                settle_disk()
                warm(self.tree)
                if tool == "rd":
                    t, res = self.rd(link, "push")
                    assert not res["errors"] and not res["conflicts"], res
                    root = self.rd_root(link)
                    print(f"    (remote_dev: {res.get('copied', 0)} files of the same content as another one "
                          f"of the push copied there, {res['wire_bytes'] / 1e6:.1f} MB on the wire)", flush=True)
                else:
                    root = roots[tool] = self.fresh_remote(f"{link.target}-{tool}")
                    t = {"rsync_a": lambda: self.rsync(link, root, False),
                         "rsync_az": lambda: self.rsync(link, root, True),
                         "tar": lambda: self.tar(link, root, False),
                         "tar_zstd": lambda: self.tar(link, root, True)}[tool]()
                self.same_tree(root, f"{TOOL_NAMES[tool]} initial push over {link.label}")
                r[f"init_{tool}"] = t
                print(f"    {TOOL_NAMES[tool]:<16}{t:7.2f} s", flush=True)
            settle_disk()
            if not link.wan and "init" in self.parts:
                r["floor"] = self.ssh_floor(link)
                print(f"    (asyncssh alone: the tree's bytes into cat > /dev/null {r['floor']:.2f} s)", flush=True)
        reps = self.args.repeat
        if "noop" in self.parts:
            print(f"[{link.label}] no-op push ...", flush=True)
            rd, ra, rz = [], [], []
            for _ in range(reps):
                t, res = self.rd(link, "push")
                assert res["files"] == 0 and not res["errors"], res
                rd.append(t)
                ra.append(self.rsync(link, roots["rsync_a"], False))
                rz.append(self.rsync(link, roots["rsync_a"], True))
            r["noop_rd"], r["noop_rsync_a"], r["noop_rsync_az"] = median(rd), median(ra), median(rz)
        if "one" in self.parts:
            print(f"[{link.label}] one file changed ...", flush=True)
            path = self.tree / self.victim
            original = path.read_bytes()
            rd, ra, rz, r1 = [], [], [], []
            try:
                for i in range(reps):
                    path.write_bytes(original + f"# {link.key} {i} rd\n".encode())
                    t, res = self.rd(link, "push", {"paths": [str(path)]})
                    assert res["files"] == 1 and not res["errors"], res
                    rd.append(t)
                    for z, out in ((False, ra), (True, rz)):
                        path.write_bytes(original + f"# {link.key} {i} rsync {z}\n".encode())
                        out.append(self.rsync(link, roots["rsync_a"], z))
                    path.write_bytes(original + f"# {link.key} {i} rsync1\n".encode())
                    r1.append(self.rsync(link, roots["rsync_a"], True, self.victim))
            finally:
                path.write_bytes(original)
            assert (self.rd_root(link) / self.victim).read_bytes().startswith(original)
            r["one_rd"], r["one_rsync_a"], r["one_rsync_az"], r["one_rsync_path"] = \
                median(rd), median(ra), median(rz), median(r1)
        if "second" in self.parts:
            measure_second(self, link, EXCLUDES, roots)
        if "pull" in self.parts:
            print(f"[{link.label}] pull 32 MB of results ...", flush=True)
            remote = self.rd_root(link) / "results"
            local = self.tree / "results"
            back = WORK / "wanpulled"
            rd, rz = [], []
            for _ in range(reps):   # each time results the remote wrote anew, nothing of them here
                shutil.rmtree(remote, ignore_errors=True)
                remote.parent.mkdir(parents=True, exist_ok=True)
                shutil.copytree(WORK / "results-src", remote)
                for f in remote.iterdir():
                    os.utime(f)   # written now: what the last pull recorded is not what is there
                shutil.rmtree(local, ignore_errors=True)
                settle_disk()
                try:
                    t, res = self.rd(link, "pull")
                    assert res["files"] == 2 and not res["errors"] and not res["conflicts"], res
                    rd.append(t)
                    self.same_files(remote, local, "remote_dev pull")
                finally:
                    shutil.rmtree(local, ignore_errors=True)
                settle_disk()
                shutil.rmtree(back, ignore_errors=True)
                back.mkdir(parents=True)
                rz.append(self.rsync(link, remote, True, pull=True, local=back))
                self.same_files(remote, back, "rsync -az pull")
                shutil.rmtree(back, ignore_errors=True)
            r["pull_rd"], r["pull_rsync_az"] = median(rd), median(rz)

    @staticmethod
    def same_files(a: Path, b: Path, what: str) -> None:
        for name in ("train.log", "weights.bin"):
            if (a / name).read_bytes() != (b / name).read_bytes():
                raise RuntimeError(f"{what}: {name} differs")

    # -- main
    def main(self) -> None:
        from support.sshd import start_sshd, stop_sshd

        WORK.mkdir(parents=True, exist_ok=True)
        build_tree(self.tree)
        build_results(WORK / "results-src")
        self.tree_size = count_tree(self.tree)
        self.victim = "stdlib/os.py" if (self.tree / "stdlib/os.py").exists() else \
            subprocess.run(["git", "-C", str(self.tree), "ls-files"], capture_output=True, text=True).stdout.split()[0]
        files, size = self.tree_size
        zsize = len(subprocess.run(f"tar -C {self.tree} --exclude=./.git -cf - . | zstd -3 -q -c", shell=True,
                                   capture_output=True, check=True).stdout) if self.zstd else 0
        self.zinfo = f" (tar | zstd -3: {zsize / 1e6:.0f} MB)" if zsize else ""
        print(f"tree: {files} files, {size / 1e6:.0f} MB at {self.tree}{self.zinfo}", flush=True)
        self.unmount_remote()
        shutil.rmtree(self.remote_base, ignore_errors=True)  # before anything is timed
        shutil.rmtree(WORK / "wanstate", ignore_errors=True)
        self.remote_base.mkdir(parents=True, exist_ok=True)
        if self.args.remote_fs == "tmpfs":
            subprocess.run(["mount", "-t", "tmpfs", "-o", "size=6g,mode=0755", "rd-bench-remote", str(self.remote_base)],
                           check=True)
            print(f"remote folders on a tmpfs at {self.remote_base} (see --remote-fs)", flush=True)
        os.environ["XDG_STATE_HOME"] = str(WORK / "wanstate")
        for i, link in enumerate(w for w in self.links if w.wan):
            link.bed = WanBed(f"{self.args.name}{i + 1}", link.rate, link.rtt_ms, self.args.queue_ms)
            link.alias, link.ssh_config, link.cm_dir = link.bed.alias, link.bed.ssh_config, link.bed.base
        for link in self.links:
            if not link.wan:
                link.alias = "rdwanlo"
                link.ssh_config = WORK / "wan-lo" / "sshd" / "ssh_config"
                link.cm_dir = WORK / "wan-lo" / "sshd"
        self.write_config()
        from remote_dev.actions import ACTIONS
        from remote_dev.engine import Engine

        self.engine = Engine(actions=ACTIONS)
        try:
            for link in self.links:
                if link.wan:
                    assert link.bed is not None
                    with link.bed:
                        if self.args.check_bed:
                            link.bed.check(mb=self.args.check_bed)
                        try:
                            self.measure(link)
                        finally:
                            self.drop_session(link)
                else:
                    stop_leftover_sshd(WORK / "wan-lo" / "sshd")
                    self.lo_sshd = start_sshd(WORK / "wan-lo" / "sshd", alias=link.alias,
                                              extra_config="AcceptEnv SHLVL\n", new_session=True)
                    try:
                        self.measure(link)
                    finally:
                        self.drop_session(link)
                        subprocess.run(f"{self.ssh(link)} -O exit {link.alias}", shell=True, capture_output=True,
                                       check=False, timeout=10)
                        stop_sshd(self.lo_sshd)
                        self.lo_sshd = None
                if not self.args.keep:
                    shutil.rmtree(self.remote_base, ignore_errors=True)
                    self.remote_base.mkdir(parents=True, exist_ok=True)
            self.report()
        finally:
            self.engine.close()
            if self.lo_sshd is not None:
                stop_sshd(self.lo_sshd)
            with contextlib.suppress(OSError):
                (self.tree / ".remote-dev.toml").unlink()
            shutil.rmtree(self.tree / "results", ignore_errors=True)
            if not self.args.keep:
                shutil.rmtree(self.remote_base, ignore_errors=True)
                self.unmount_remote()

    def unmount_remote(self) -> None:
        """The tmpfs of the remote folders (of this run, or one a killed run left)."""
        if os.path.ismount(self.remote_base):
            subprocess.run(["umount", "-l", str(self.remote_base)], check=False)

    # -- the table
    def goals(self) -> list[tuple[bool, str]]:
        """Issue 27's rows of the links measured: (met, text)."""
        out = []
        for link in self.links:
            r = link.r
            if "init_rd" not in r:
                continue
            if not link.wan:
                for tool, need in (("tar", 1.5), ("rsync_a", 1.0)):
                    if f"init_{tool}" in r:
                        ratio = r["init_rd"] / r[f"init_{tool}"]
                        out.append((ratio <= need, f"{link.label}: initial push <= {need}x {TOOL_NAMES[tool]} "
                                                   f"({ratio:.2f}x)"))
                continue
            if link.key not in ("1gbit/2", "1000mbit/2", "100mbit/40"):
                continue
            peers = {t: r[f"init_{t}"] for t in TOOLS[1:] if f"init_{t}" in r}
            if peers:
                best = min(peers, key=lambda t: peers[t])
                ratio = r["init_rd"] / peers[best]
                out.append((ratio <= 0.9, f"{link.label}: initial push <= 0.9x the best peer, {TOOL_NAMES[best]} "
                                          f"{peers[best]:.2f} s ({ratio:.2f}x)"))
            if link.key != "100mbit/40" and "pull_rd" in r:
                ratio = r["pull_rd"] / r["pull_rsync_az"]
                out.append((ratio <= 0.9, f"{link.label}: pull <= 0.9x rsync -az ({ratio:.2f}x)"))
        return out

    def report(self) -> None:
        files, size = self.tree_size
        print()
        print(f"tree: {files} files, {size / 1e6:.0f} MB{self.zinfo}; median of {self.args.repeat} for no-op and one-file; "
              f"competitors' ssh {'with' if self.args.bashrc else 'without'} ~/.bashrc")
        cols = [t for t in TOOLS if t != "tar_zstd" or self.zstd]
        head = ["", *(TOOL_NAMES[t] for t in cols), "remote_dev / best"]
        rows: list[list[str]] = []
        targets: list[tuple[bool, str]] = []
        info: list[str] = []

        def s(v: float | None) -> str:
            return "—" if v is None else (f"{v * 1000:.0f} ms" if v < 1 else f"{v:.2f} s")

        for link in self.links:
            r = link.r
            best_key = ("init_tar",) if not link.wan else tuple(f"init_{t}" for t in TOOLS[1:] if f"init_{t}" in r)
            if "init_rd" in r and best_key and all(k in r for k in best_key):
                best = min(r[k] for k in best_key)
                ratio = r["init_rd"] / best
                names = " / ".join(TOOL_NAMES[k[5:]] for k in best_key)
                rows.append([f"{link.label}: initial push", *(s(r.get(f"init_{t}")) for t in cols),
                             f"{ratio:.3f}x (vs {names})"])
                if "floor" in r:
                    info.append(f"{link.label}: asyncssh alone carries the tree's bytes (into cat > /dev/null, "
                                f"remote_dev's connection) in {s(r['floor'])}, {r['floor'] / best:.2f}x "
                                f"{names}'s whole push: the floor of a push over asyncssh here")
                if link.wan:
                    targets.append((ratio <= 1.0, f"{link.label}: initial push <= 1.0x the best peer ({ratio:.2f}x)"))
                else:
                    targets.append((ratio <= 1.0, f"{link.label}: initial push <= 1.0x tar|ssh ({ratio:.2f}x)"))
            if "pull_rd" in r:
                ratio = r["pull_rd"] / r["pull_rsync_az"]
                rows.append([f"{link.label}: pull 32 MB of results", s(r["pull_rd"]),
                             *(s(r["pull_rsync_az"]) if t == "rsync_az" else "—" for t in cols[1:]),
                             f"{ratio:.2f}x (vs rsync -az)"])
                targets.append((ratio <= 1.0, f"{link.label}: pull <= 1.0x rsync -az ({ratio:.2f}x)"))
            for step, what, need in (("noop", "no-op push", 20), ("one", "one file changed", 4)):
                if f"{step}_rd" not in r:
                    continue
                best = min(r[f"{step}_rsync_a"], r[f"{step}_rsync_az"])
                rows.append([f"{link.label}: {what}", s(r[f"{step}_rd"]), s(r[f"{step}_rsync_a"]),
                             s(r[f"{step}_rsync_az"]), *("—" for _ in cols[3:]),
                             f"{r[f'{step}_rd'] / best:.3f}x ({best / r[f'{step}_rd']:.1f}x faster)"])
                speedup = best / r[f"{step}_rd"]
                if not link.wan:
                    targets.append((speedup >= need, f"{link.label}: {what} >= {need}x faster than full-tree "
                                                     f"rsync ({speedup:.1f}x)"))
                else:   # issue 12 sets these on loopback; here a round trip bounds them
                    info.append(f"{link.label}: {what} {speedup:.1f}x faster than full-tree rsync (one round "
                                f"trip would be {best / (link.rtt_ms / 1000):.1f}x)")
            report_second(link, rows, targets, info, len(cols), s)
            if link.wan and "one_rd" in r:
                rtts = r["one_rd"] / (link.rtt_ms / 1000)
                targets.append((rtts <= 1.5, f"{link.label}: one changed file (a save) reaches the remote in "
                                             f"<= 1.5 round trips ({rtts:.2f})"))
        print()
        print("| " + " | ".join(h.replace("|", "\\|") for h in head) + " |")
        print("|" + "---|" * len(head))
        for row in rows:
            print("| " + " | ".join(c.replace("|", "\\|") for c in row) + " |")
        print()
        for link in self.links:
            r = link.r
            extra = f"; rsync -az of the one path {s(r['one_rsync_path'])}" if "one_rsync_path" in r else ""
            print(f"{link.label}: agent round trip {r['agent_rtt_ms']:.1f} ms, `ssh host true` "
                  f"{s(r['ssh_true'])}{extra}")
        if not self.zstd:
            print("tar|zstd -3|ssh: skipped, zstd is not installed (scripts/setup should install it)")
        print()
        print("targets (issue 12):")
        for ok, text in targets:
            print(f"  [{'met ' if ok else 'MISS'}] {text}")
        print("goals (issue 27):")
        for ok, text in self.goals():
            print(f"  [{'met ' if ok else 'MISS'}] {text}")
        for text in info:
            print(f"  [info] {text}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--links", default="lo,1gbit/2,100mbit/40,20mbit/80",
                   help="comma-separated: lo and/or RATE/RTT_MS (default lo,1gbit/2,100mbit/40,20mbit/80)")
    p.add_argument("--parts", default="init,noop,one,pull",
                   help="comma-separated steps: init, noop, one, pull, second (default all but second)")
    p.add_argument("--tools", default=",".join(TOOLS[1:]),
                   help=f"competitors of the initial push (default {','.join(TOOLS[1:])}; rsync_a also "
                        f"runs when noop or one is asked: they need its remote copy)")
    p.add_argument("--repeat", type=int, default=3,
                   help="runs of the no-op, one-file and pull steps (median; default 3)")
    p.add_argument("--remote-base", help="where the remote folders go (default bench/.work/wanremote)")
    p.add_argument("--remote-fs", choices=("tmpfs", "disk"), default="tmpfs" if os.geteuid() == 0 else "disk",
                   help="a tmpfs mounted at --remote-base (default as root) or the disk it is on")
    p.add_argument("--name", default="rdwb", help="prefix of the WAN beds' names (default rdwb: rdwb1, rdwb2)")
    p.add_argument("--queue-ms", type=float, default=100.0, help="tbf queue of the WAN beds (default 100)")
    p.add_argument("--check-bed", type=int, default=0, metavar="MB",
                   help="check each bed first: ssh true and MB of random bytes each way")
    p.add_argument("--bashrc", action="store_true", help="competitors' ssh sessions run ~/.bashrc")
    p.add_argument("--keep", action="store_true", help="keep the remote folders afterwards")
    args = p.parse_args()
    unknown = set(args.parts.split(",")) - {"init", "noop", "one", "pull", "second"}
    if unknown:
        raise SystemExit(f"--parts: unknown {', '.join(sorted(unknown))}")
    unknown = set(args.tools.split(",")) - set(TOOLS[1:])
    if unknown:
        raise SystemExit(f"--tools: unknown {', '.join(sorted(unknown))} (say {','.join(TOOLS[1:])})")
    if os.geteuid() != 0 and any(link.wan for link in parse_links(args.links)):
        raise SystemExit("the WAN links need root (network namespace, veth, tc); --links lo runs without")

    catch_signals()
    try:
        Bench(args).main()
    except KeyboardInterrupt:
        raise SystemExit("interrupted: beds, sshd and remote folders removed") from None


if __name__ == "__main__":
    main()
