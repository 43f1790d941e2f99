"""A real single-node Slurm cluster on loopback, for tests (run as root).

Everything lives under one base directory: munge key and socket, slurm.conf,
state/spool dirs, pid and log files.  Nothing is written to /etc.  Ports are
picked free at start().

    with SlurmCluster(str(tmp_path / "slurm")) as cl:
        env = {**os.environ, **cl.env}
        subprocess.run(["sbatch", "--wrap", "true"], env=env)

CLI (for demos and manual checks):

    python tests/support/slurm.py up DIR    # prints `export SLURM_CONF=...`,
                                            # stays up until SIGTERM/SIGINT

Only the standard library is used, so the file also runs as a script.
"""
from __future__ import annotations

import atexit
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from typing import Dict, List, Optional

DAEMONS = ("munged", "slurmctld", "slurmd")
CLIENTS = ("sbatch", "squeue", "scontrol", "sinfo", "scancel", "srun")
_SBIN = ("/usr/sbin", "/sbin", "/usr/local/sbin")


def _which(name: str) -> Optional[str]:
    path = os.environ.get("PATH", os.defpath)
    extra = [d for d in _SBIN if d not in path.split(os.pathsep)]
    return shutil.which(name, path=os.pathsep.join([path, *extra]))


def slurm_available() -> Optional[str]:
    """None when a cluster can be started here, else the reason why not."""
    if not sys.platform.startswith("linux"):
        return f"Slurm test bed needs Linux (this is {sys.platform})"
    if os.geteuid() != 0:
        return "Slurm test bed must run as root (slurmd runs jobs as root here)"
    missing = [b for b in DAEMONS + CLIENTS if _which(b) is None]
    if missing:
        return ("Slurm/munge binaries missing: " + ", ".join(missing) +
                " (apt-get install -y --no-install-recommends slurmctld slurmd slurm-client munge)")
    return None


def _free_port() -> int:
    # slurmctld/slurmd bind the wildcard address: check there.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("", 0))
        return s.getsockname()[1]


def _tail(path: str, n: int = 40) -> str:
    try:
        with open(path, "rb") as f:
            try:
                f.seek(-16384, os.SEEK_END)
            except OSError:
                f.seek(0)
            lines = f.read().decode("utf-8", "replace").splitlines()
    except OSError as e:
        return f"<{path}: {e}>"
    return "\n".join(lines[-n:])


_KV = re.compile(r"(?:^|\s)([A-Za-z][\w/:.]*)=")


def parse_scontrol(text: str) -> Dict[str, str]:
    """Parse `scontrol show ... -o` (one line of Key=Value pairs; values may contain spaces)."""
    text = text.strip()
    out: Dict[str, str] = {}
    matches = list(_KV.finditer(text))
    for i, m in enumerate(matches):
        end = matches[i + 1].start() if i + 1 < len(matches) else len(text)
        out.setdefault(m.group(1), text[m.end():end].strip())
    return out


class SlurmCluster:
    """munged + slurmctld + slurmd on 127.0.0.1, all state under base_dir."""

    # Job states in which a job is finished (scontrol's JobState).
    FINISHED = frozenset({
        "COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "PREEMPTED",
        "OUT_OF_MEMORY", "BOOT_FAIL", "DEADLINE", "REVOKED", "SPECIAL_EXIT",
    })

    def __init__(self, base_dir: str):
        self.base_dir = os.path.abspath(base_dir)
        d = self.base_dir
        self.etc = os.path.join(d, "etc")
        self.state_dir = os.path.join(d, "state")
        self.spool_dir = os.path.join(d, "spool")
        self.log_dir = os.path.join(d, "log")
        self.run_dir = os.path.join(d, "run")
        self.munge_dir = os.path.join(d, "munge")
        self.munge_key = os.path.join(self.munge_dir, "munge.key")
        self.munge_socket = os.path.join(self.munge_dir, "munge.sock")
        self.conf = os.path.join(self.etc, "slurm.conf")
        self.env: Dict[str, str] = {"SLURM_CONF": self.conf}
        self.logs = {
            "munged": os.path.join(self.log_dir, "munged.log"),
            "slurmctld": os.path.join(self.log_dir, "slurmctld.log"),
            "slurmd": os.path.join(self.log_dir, "slurmd.log"),
        }
        self.node_name: Optional[str] = None
        self.ctld_port: Optional[int] = None
        self.slurmd_port: Optional[int] = None
        self.start_seconds: Optional[float] = None
        self._procs: Dict[str, subprocess.Popen] = {}
        self._alias_dir: Optional[str] = None  # short symlink dir, when base_dir is too long for sockets
        self._lock = threading.Lock()

    # ------------------------------------------------------------ helpers
    def client_env(self, base: Optional[Dict[str, str]] = None) -> Dict[str, str]:
        """os.environ (or base) plus SLURM_CONF, minus inherited SLURM_* job variables."""
        env = dict(os.environ if base is None else base)
        for k in list(env):
            if k.startswith("SLURM_") or k.startswith("SBATCH_") or k.startswith("SQUEUE_"):
                del env[k]
        env.update(self.env)
        return env

    def run(self, *args: str, timeout: float = 30, check: bool = True) -> subprocess.CompletedProcess:
        """Run a Slurm client command (sbatch, squeue, ...) against this cluster."""
        argv = list(args)
        exe = _which(argv[0])
        if exe:
            argv[0] = exe
        p = subprocess.run(argv, env=self.client_env(), stdin=subprocess.DEVNULL, cwd=self.base_dir,
                           capture_output=True, text=True, timeout=timeout)
        if check and p.returncode != 0:
            raise RuntimeError(f"{' '.join(args)} -> rc {p.returncode}: {p.stderr.strip() or p.stdout.strip()}")
        return p

    def squeue(self) -> List[str]:
        """Job ids currently in the queue (pending, running, completing...)."""
        p = self.run("squeue", "-h", "-o", "%i", timeout=20)
        return [ln.strip() for ln in p.stdout.splitlines() if ln.strip()]

    def job_info(self, job_id: str) -> Optional[Dict[str, str]]:
        """`scontrol show job -o ID` as a dict (None once the job has aged out)."""
        p = self.run("scontrol", "show", "job", "-o", str(job_id), timeout=20, check=False)
        if p.returncode != 0 or "JobId=" not in p.stdout:
            return None
        return parse_scontrol(p.stdout.splitlines()[0])

    def wait_job(self, job_id: str, timeout: float = 30, poll: float = 0.1) -> Dict[str, str]:
        """Wait until the job reaches a finished state; return its scontrol record."""
        deadline = time.monotonic() + timeout
        info = None
        while time.monotonic() < deadline:
            info = self.job_info(job_id)
            if info and info.get("JobState", "").split()[0] in self.FINISHED:
                return info
            time.sleep(poll)
        raise TimeoutError(f"job {job_id} not finished after {timeout}s; last: {info}")

    def sbatch(self, *args: str) -> str:
        """sbatch --parsable ARGS -> job id."""
        p = self.run("sbatch", "--parsable", *args)
        return p.stdout.strip().split(";")[0]

    # ------------------------------------------------------------ setup
    def _write_files(self) -> None:
        for d in (self.etc, self.state_dir, self.spool_dir, self.log_dir, self.run_dir, self.munge_dir):
            os.makedirs(d, exist_ok=True)
        os.chmod(self.base_dir, 0o755)
        os.chmod(self.munge_dir, 0o755)  # munged refuses a socket dir others cannot traverse
        if not os.path.exists(self.munge_key):
            fd = os.open(self.munge_key, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(secrets.token_bytes(1024))
        os.chmod(self.munge_key, 0o600)

        p = subprocess.run([_which("slurmd") or "slurmd", "-C"], capture_output=True, text=True,
                           timeout=30, stdin=subprocess.DEVNULL)
        node_line = (p.stdout.splitlines() or [""])[0].strip()
        m = re.match(r"NodeName=(\S+)", node_line)
        if p.returncode != 0 or not m:
            raise RuntimeError(f"slurmd -C failed (rc {p.returncode}): {p.stdout}{p.stderr}")
        self.node_name = m.group(1)

        # Unix socket paths are limited to 108 bytes: munged's socket and slurmstepd's
        # SPOOL/NODE_JOBID.STEPID sockets.  With a long base_dir, the conf refers to it
        # through a short symlink /tmp/slurmbed-XXXX/d -> base_dir (removed by stop()).
        root = self.base_dir
        need = max(len("/munge/munge.sock"), len("/spool/") + len(self.node_name) + 24)
        if len(root) + need > 100:
            if self._alias_dir is None:
                self._alias_dir = tempfile.mkdtemp(prefix="slurmbed-")
                os.chmod(self._alias_dir, 0o755)
                os.symlink(self.base_dir, os.path.join(self._alias_dir, "d"))
            root = os.path.join(self._alias_dir, "d")

        def p(path: str) -> str:
            return root + path[len(self.base_dir):]
        self.munge_socket = p(os.path.join(self.munge_dir, "munge.sock"))

        self.ctld_port = _free_port()
        self.slurmd_port = _free_port()
        while self.slurmd_port == self.ctld_port:
            self.slurmd_port = _free_port()

        conf = f"""\
# generated by tests/support/slurm.py
ClusterName=test
SlurmctldHost=localhost
SlurmUser=root
SlurmdUser=root
SlurmctldPort={self.ctld_port}
SlurmdPort={self.slurmd_port}
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={self.munge_socket}
StateSaveLocation={p(self.state_dir)}
SlurmdSpoolDir={p(self.spool_dir)}
SlurmctldPidFile={p(self.run_dir)}/slurmctld.pid
SlurmdPidFile={p(self.run_dir)}/slurmd.pid
SlurmctldLogFile={p(self.logs['slurmctld'])}
SlurmdLogFile={p(self.logs['slurmd'])}
SlurmctldDebug=info
SlurmdDebug=info
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MailProg=/bin/true
MpiDefault=none
SwitchType=switch/none
SchedulerType=sched/backfill
SchedulerParameters=batch_sched_delay=0,sched_interval=1,sched_min_interval=0,bf_interval=1
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
MinJobAge=300
KillWait=2
InactiveLimit=0
Waittime=0
{node_line} NodeAddr=127.0.0.1 State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
"""
        with open(self.conf, "w") as f:
            f.write(conf)

    def _spawn(self, name: str, argv: List[str]) -> subprocess.Popen:
        out = open(os.path.join(self.log_dir, f"{name}.out"), "ab")
        try:
            env = self.client_env()
            p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                 env=env, cwd=self.base_dir, start_new_session=True, close_fds=True)
        finally:
            out.close()
        self._procs[name] = p
        return p

    def _fail(self, name: str, why: str) -> None:
        parts = [f"Slurm test bed: {name} {why}"]
        for path in (self.logs.get(name), os.path.join(self.log_dir, f"{name}.out")):
            if path and os.path.exists(path) and os.path.getsize(path):
                parts.append(f"--- tail of {path} ---\n{_tail(path)}")
        msg = "\n".join(parts)
        self.stop()
        raise RuntimeError(msg)

    def _wait(self, name: str, ready, deadline: float, what: str) -> None:
        p = self._procs[name]
        while True:
            if p.poll() is not None:
                self._fail(name, f"exited with rc {p.returncode} while waiting for {what}")
            try:
                if ready():
                    return
            except (subprocess.TimeoutExpired, OSError):
                pass
            if time.monotonic() > deadline:
                self._fail(name, f"not ready ({what}) before the start timeout")
            time.sleep(0.05)

    def start(self, timeout: float = 60) -> None:
        """Start munged, slurmctld and slurmd; return once sinfo says the node is idle."""
        reason = slurm_available()
        if reason:
            raise RuntimeError(reason)
        with self._lock:
            if self._procs:
                raise RuntimeError("cluster already started")
        t0 = time.monotonic()
        deadline = t0 + timeout
        for attempt in range(3):
            try:
                self._start_once(deadline)
                break
            except RuntimeError as e:
                # The free ports picked may be taken in between: try again with new ones.
                if "Address already in use" not in str(e) or attempt == 2 or time.monotonic() > deadline:
                    raise
        self.start_seconds = time.monotonic() - t0

    def _start_once(self, deadline: float) -> None:
        self._write_files()
        atexit.register(self.stop)

        # munged
        self._spawn("munged", [
            _which("munged"), "-F", "--force", f"--key-file={self.munge_key}", f"--socket={self.munge_socket}",
            f"--pid-file={self.run_dir}/munged.pid", f"--log-file={self.logs['munged']}",
            f"--seed-file={self.munge_dir}/munged.seed",
        ])
        munge, unmunge = _which("munge"), _which("unmunge")

        def munge_ok() -> bool:
            if not os.path.exists(self.munge_socket):
                return False
            if not (munge and unmunge):
                return True
            cred = subprocess.run([munge, "-n", "-S", self.munge_socket], capture_output=True, timeout=5)
            if cred.returncode != 0:
                return False
            dec = subprocess.run([unmunge, "-S", self.munge_socket], input=cred.stdout,
                                 capture_output=True, timeout=5)
            return dec.returncode == 0
        self._wait("munged", munge_ok, deadline, "a working munge socket")

        # slurmctld
        self._spawn("slurmctld", [_which("slurmctld"), "-D", "-i", "-f", self.conf])

        def ctld_ok() -> bool:
            p = self.run("scontrol", "ping", timeout=10, check=False)
            return p.returncode == 0 and "UP" in p.stdout
        self._wait("slurmctld", ctld_ok, deadline, "scontrol ping")

        # slurmd
        self._spawn("slurmd", [_which("slurmd"), "-D", "-N", self.node_name, "-f", self.conf])

        def node_idle() -> bool:
            if self._procs["slurmctld"].poll() is not None:
                self._fail("slurmctld", f"exited with rc {self._procs['slurmctld'].returncode}")
            p = self.run("sinfo", "-h", "-o", "%T", timeout=10, check=False)
            states = [s.strip() for s in p.stdout.split()]
            return p.returncode == 0 and bool(states) and all(s == "idle" for s in states)
        self._wait("slurmd", node_idle, deadline, "node idle in sinfo")

    # ------------------------------------------------------------ teardown
    def _job_processes(self) -> List[int]:
        """PIDs of leftover slurmstepd/job processes that belong to this cluster (by SLURM_CONF)."""
        me = os.getpid()
        ancestors = set()
        pid = me
        for _ in range(64):
            ancestors.add(pid)
            try:
                with open(f"/proc/{pid}/stat") as f:
                    pid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                break
            if pid <= 1:
                break
        tag = f"SLURM_CONF={self.conf}".encode()
        found = []
        for entry in os.listdir("/proc"):
            if not entry.isdigit() or int(entry) in ancestors:
                continue
            try:
                with open(f"/proc/{entry}/environ", "rb") as f:
                    env = f.read().split(b"\0")
                with open(f"/proc/{entry}/comm", "rb") as f:
                    comm = f.read().strip()
            except OSError:
                continue
            if tag in env and (comm.startswith(b"slurmstepd") or any(e.startswith(b"SLURM_JOB_ID=") for e in env)):
                found.append(int(entry))
        return found

    def stop(self, timeout: float = 20) -> None:
        """Cancel all jobs, stop slurmd, slurmctld and munged (by pid). Idempotent."""
        with self._lock:
            procs, self._procs = self._procs, {}
        try:
            atexit.unregister(self.stop)
        except Exception:
            pass
        try:
            if procs:
                self._stop(procs, timeout)
        finally:
            if self._alias_dir:
                shutil.rmtree(self._alias_dir, ignore_errors=True)  # only the symlink inside
                self._alias_dir = None

    def _stop(self, procs: Dict[str, subprocess.Popen], timeout: float) -> None:
        ctld = procs.get("slurmctld")
        # 1. cancel jobs while the controller is still up
        if ctld is not None and ctld.poll() is None:
            try:
                ids = self.squeue()
                if ids:
                    self.run("scancel", *ids, timeout=15, check=False)
                    deadline = time.monotonic() + min(timeout, 15)
                    while time.monotonic() < deadline:
                        if not self.squeue():
                            break
                        time.sleep(0.2)
            except Exception:
                pass
        # 2. daemons: slurmd, slurmctld, munged
        for name in ("slurmd", "slurmctld", "munged"):
            p = procs.get(name)
            if p is None:
                continue
            if p.poll() is None:
                try:
                    p.send_signal(signal.SIGTERM)
                except ProcessLookupError:
                    pass
                try:
                    p.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    p.kill()
                    try:
                        p.wait(timeout=5)
                    except subprocess.TimeoutExpired:
                        pass
            # anything left in the daemon's own session/process group
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError, OSError):
                pass
        # 3. leftover slurmstepd / job processes of this cluster
        left = self._job_processes()
        for pid in left:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        deadline = time.monotonic() + 5
        while left and time.monotonic() < deadline:
            left = [pid for pid in left if os.path.exists(f"/proc/{pid}") and not _is_zombie(pid)]
            if left:
                time.sleep(0.05)

    def __enter__(self) -> "SlurmCluster":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def _is_zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except (OSError, IndexError):
        return True


def main(argv: List[str]) -> int:
    if len(argv) != 2 or argv[0] != "up":
        print("usage: python tests/support/slurm.py up DIR", file=sys.stderr)
        return 2
    reason = slurm_available()
    if reason:
        print(reason, file=sys.stderr)
        return 1
    cluster = SlurmCluster(argv[1])
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, lambda *_: stop.set())
    try:
        cluster.start()
        print(f"export SLURM_CONF={cluster.conf}", flush=True)
        print(f"# up in {cluster.start_seconds:.2f}s; node {cluster.node_name}; logs in {cluster.log_dir}; "
              f"SIGTERM/Ctrl-C stops it", file=sys.stderr, flush=True)
        while not stop.wait(1):
            for name, p in list(cluster._procs.items()):
                if p.poll() is not None:
                    print(f"{name} exited with rc {p.returncode}; stopping", file=sys.stderr, flush=True)
                    stop.set()
    finally:
        cluster.stop()
        print("# slurm test bed stopped", file=sys.stderr, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
