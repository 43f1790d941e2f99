"""The Slurm test bed itself: a real single-node cluster on loopback (tests/support/slurm.py)."""
import os
import subprocess
import time

import pytest

try:
    from support.slurm import SlurmCluster, slurm_available
except ImportError:  # tests/ became a package
    from tests.support.slurm import SlurmCluster, slurm_available


@pytest.fixture
def cluster(tmp_path):
    reason = slurm_available()
    if reason:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"Slurm test bed unavailable under CI: {reason}")
        pytest.skip(reason)
    c = SlurmCluster(str(tmp_path / "slurm"))
    try:
        t0 = time.monotonic()
        c.start()
        print(f"\n[slurm bed] start() took {time.monotonic() - t0:.2f}s")
        yield c
    finally:
        c.stop()


def _client(cluster, *argv, timeout=30):
    env = {**os.environ, **cluster.env}
    return subprocess.run(list(argv), env=env, capture_output=True, text=True, cwd=cluster.base_dir,
                          timeout=timeout, stdin=subprocess.DEVNULL)


def _job(cluster, job_id):
    p = _client(cluster, "scontrol", "show", "job", job_id)
    assert p.returncode == 0, p.stderr
    return p.stdout


def test_batch_job_output_and_exit_code(cluster, tmp_path):
    out = tmp_path / "out.log"
    t0 = time.monotonic()
    p = _client(cluster, "sbatch", "--parsable", f"--output={out}", "--wrap", "echo hello; exit 3")
    assert p.returncode == 0, p.stderr
    job_id = p.stdout.strip().split(";")[0]
    assert job_id.isdigit()

    deadline = time.monotonic() + 30
    while True:
        text = _job(cluster, job_id)
        if job_id not in cluster.squeue() and "JobState=PENDING" not in text \
                and "JobState=RUNNING" not in text and "JobState=COMPLETING" not in text:
            break
        assert time.monotonic() < deadline, f"job {job_id} not done after 30s:\n{text}"
        time.sleep(0.1)
    print(f"[slurm bed] job submit-to-finish {time.monotonic() - t0:.2f}s")

    assert out.read_text().strip() == "hello"
    assert "ExitCode=3:0" in text and "JobState=FAILED" in text, text
    # The helper's view agrees.
    info = cluster.job_info(job_id)
    assert info["JobState"] == "FAILED" and info["ExitCode"] == "3:0"


def test_held_job_is_pending_then_cancelled(cluster):
    p = _client(cluster, "sbatch", "--parsable", "--hold", "--output=/dev/null", "--wrap", "true")
    assert p.returncode == 0, p.stderr
    job_id = p.stdout.strip().split(";")[0]

    q = _client(cluster, "squeue", "-h", "-j", job_id, "-o", "%i %t %r")
    assert q.returncode == 0, q.stderr
    jid, state, reason = q.stdout.split()
    assert (jid, state) == (job_id, "PD")
    assert reason == "JobHeldUser", q.stdout

    c = _client(cluster, "scancel", job_id)
    assert c.returncode == 0, c.stderr
    deadline = time.monotonic() + 15
    while job_id in cluster.squeue():
        assert time.monotonic() < deadline, "cancelled job still queued after 15s"
        time.sleep(0.1)
    assert "JobState=CANCELLED" in _job(cluster, job_id)


def test_second_cluster_after_stop_and_idempotent_stop(tmp_path):
    reason = slurm_available()
    if reason:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"Slurm test bed unavailable under CI: {reason}")
        pytest.skip(reason)
    ports = []
    for i in range(2):
        with SlurmCluster(str(tmp_path / f"c{i}")) as c:
            ports.append(c.ctld_port)
            job_id = c.sbatch("--output=/dev/null", "--wrap", "sleep 60")  # left running: stop() must cancel it
            assert job_id in c.squeue()
            procs = dict(c._procs)
            assert set(procs) == {"munged", "slurmctld", "slurmd"}
        assert all(p.poll() is not None for p in procs.values())
        assert c._job_processes() == []
        c.stop()  # second stop is a no-op
    assert len(ports) == 2
