"""Quick real tests of the podman test bed (tests/support/podman.py).

Under CI=true a missing/unusable podman FAILS these tests; elsewhere they are skipped.
"""

from __future__ import annotations

import os
import subprocess
import time
import uuid

import pytest

try:  # tests/ as a package (rootdir on sys.path) or tests/ itself on sys.path
    from tests.support import podman as bed
except ImportError:  # pragma: no cover - depends on how pytest set up sys.path
    from support import podman as bed


def _run(*args: str, timeout: float = 300, check: bool = True) -> subprocess.CompletedProcess:
    t0 = time.monotonic()
    proc = subprocess.run(
        ["podman", *args], env={**os.environ, **bed.podman_env()},
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=timeout,
    )
    print(f"[{time.monotonic() - t0:5.2f} s] podman {' '.join(args[:2])} ... -> {proc.returncode}")
    if check and proc.returncode != 0:
        pytest.fail(f"podman {' '.join(args)} failed ({proc.returncode}):\n"
                    f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}")
    return proc


@pytest.fixture(scope="module")
def image() -> str:
    reason = bed.podman_available()
    if reason is not None:
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(f"podman not usable under CI: {reason}")
        pytest.skip(f"podman not usable: {reason}")
    t0 = time.monotonic()
    name = bed.ensure_test_image()
    print(f"ensure_test_image: {time.monotonic() - t0:.2f} s")
    assert name == bed.TEST_IMAGE
    return name


def test_image_is_idempotent_and_quick(image):
    t0 = time.monotonic()
    assert bed.ensure_test_image(log=lambda *_: pytest.fail("should not rebuild")) == image
    assert time.monotonic() - t0 < 10


def test_run_sees_bind_mounted_workspace(image, tmp_path):
    (tmp_path / "x.txt").write_text("hello from the host\n")
    proc = _run("run", "--rm", "-v", f"{tmp_path}:/workspace", "-w", "/workspace",
                "--network", "host", image,
                "python3", "-c", 'print(open("x.txt").read(), end="")')
    assert proc.stdout == "hello from the host\n"


def test_build_from_test_image_uses_cache(image, tmp_path):
    tag = f"localhost/remote-dev-test-build:{uuid.uuid4().hex[:12]}"
    (tmp_path / "Dockerfile").write_text(f"FROM {image}\nRUN echo hi > /hi.txt\n")
    try:
        first = _run("build", "-t", tag, str(tmp_path))
        second = _run("build", "-t", tag, str(tmp_path))
        assert "using cache" in (second.stdout + second.stderr).lower(), second.stdout + second.stderr
        out = _run("run", "--rm", tag, "cat", "/hi.txt")
        assert out.stdout == "hi\n"
        assert first.returncode == 0
    finally:
        _run("rmi", "-f", tag, check=False)


def test_detached_container_removed(image):
    name = f"remote-dev-test-{uuid.uuid4().hex[:12]}"
    try:
        proc = _run("run", "-d", "--name", name, "--network", "host", image, "sleep", "100")
        cid = proc.stdout.strip()
        assert cid
        ps = _run("ps", "--filter", f"name={name}", "-q")
        assert ps.stdout.strip(), "detached container is not running"
    finally:
        _run("rm", "-f", "-t", "0", name, check=False)  # sleep as PID 1 ignores SIGTERM: no 10 s wait
    left = _run("ps", "-a", "--filter", f"name={name}", "-q")
    assert left.stdout.strip() == ""
