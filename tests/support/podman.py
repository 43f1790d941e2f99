"""Podman test bed: a runc-configured containers.conf and a locally built base image.

No container registry is reachable on the test machines, so the base image
``TEST_IMAGE`` is built from a debootstrap rootfs and ``podman import``-ed.
See /work/shared/TESTBED.md, section "Containers: podman".

Public API::

    TEST_IMAGE                      # "localhost/remote-dev-test:latest"
    containers_conf() -> str        # path of a containers.conf (runtime=runc, ulimits fix)
    podman_env() -> dict            # {"CONTAINERS_CONF": containers_conf()}
    podman_available() -> str|None  # None if podman+runc usable, else the reason
    ensure_test_image(log=print)    # build TEST_IMAGE once; returns its name

Environment knobs (all optional):
    REMOTE_DEV_TEST_CACHE   cache dir (default: $XDG_CACHE_HOME or ~/.cache, + /remote-dev-test)
    REMOTE_DEV_TEST_MIRROR  Debian mirror for debootstrap (default: the one apt uses here;
                            there is no built-in fallback host)
"""

from __future__ import annotations

import contextlib
import fcntl
import glob
import os
import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Callable, Iterator

TEST_IMAGE = "localhost/remote-dev-test:latest"

SUITE = "bookworm"

# crun fails on these machines ("cgroups in hybrid mode not supported") and the
# default ulimits are refused ("setrlimit RLIMIT_NOFILE: Operation not permitted").
CONTAINERS_CONF_TEXT = """\
# Written by tests/support/podman.py -- do not edit, it is rewritten when it differs.
[containers]
default_ulimits = ["nofile=1024:1024", "nproc=4096:4096"]

[engine]
runtime = "runc"
"""

# Metadata added on import: an imported rootfs has no config at all.
IMPORT_CHANGES = (
    "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    'CMD ["/bin/bash"]',
)

_ROOTFS_NAME = f"rootfs-{SUITE}-minbase-python3"
_PODMAN_CHECK_TIMEOUT = 60


# --------------------------------------------------------------------------- paths


def cache_dir() -> Path:
    """Stable per-user cache directory for the test bed (created on demand)."""
    env = os.environ.get("REMOTE_DEV_TEST_CACHE")
    if env:
        d = Path(env)
    else:
        base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        d = Path(base) / "remote-dev-test"
    d.mkdir(parents=True, exist_ok=True)
    return d


def containers_conf() -> str:
    """Path of a containers.conf with runtime=runc and the ulimits fix.

    Written once (atomically) into the cache dir; rewritten only if its content differs.
    """
    path = cache_dir() / "containers.conf"
    try:
        if path.read_text() == CONTAINERS_CONF_TEXT:
            return str(path)
    except OSError:
        pass
    fd, tmp = tempfile.mkstemp(prefix=".containers.conf.", dir=str(path.parent))
    try:
        with os.fdopen(fd, "w") as f:
            f.write(CONTAINERS_CONF_TEXT)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return str(path)


def podman_env() -> dict:
    """Extra environment for podman commands: ``{"CONTAINERS_CONF": containers_conf()}``.

    Merge it into a full environment: ``env={**os.environ, **podman_env()}``.
    """
    return {"CONTAINERS_CONF": containers_conf()}


def _full_env() -> dict:
    return {**os.environ, **podman_env()}


def _podman(*args: str, timeout: float | None = None, check: bool = True,
            input: bytes | None = None) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        ["podman", *args], env=_full_env(), input=input,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=timeout,
    )
    if check and proc.returncode != 0:
        raise RuntimeError(
            f"podman {' '.join(args)} failed ({proc.returncode}): "
            f"{proc.stderr.decode(errors='replace').strip()}"
        )
    return proc


# --------------------------------------------------------------------- availability


def podman_available() -> str | None:
    """None when podman with the runc runtime is usable here, else the reason why not."""
    if shutil.which("podman") is None:
        return "podman is not installed (apt-get install -y podman runc)"
    if shutil.which("runc") is None:
        return "runc is not installed (apt-get install -y runc); crun does not work on this kind of machine"
    try:
        proc = _podman("info", "--format", "{{.Host.OCIRuntime.Name}}",
                       timeout=_PODMAN_CHECK_TIMEOUT, check=False)
    except subprocess.TimeoutExpired:
        return f"`podman info` did not answer within {_PODMAN_CHECK_TIMEOUT} s"
    except OSError as e:
        return f"cannot run podman: {e}"
    if proc.returncode != 0:
        err = proc.stderr.decode(errors="replace").strip()
        return f"`podman info` failed ({proc.returncode}): {err}"
    runtime = proc.stdout.decode(errors="replace").strip()
    if runtime != "runc":
        return f"podman uses OCI runtime {runtime!r}, not runc, despite CONTAINERS_CONF={containers_conf()}"
    return None


# ------------------------------------------------------------------- Debian mirror


def _apt_source_entries() -> Iterator[tuple[str, list[str], list[str]]]:
    """(uri, suites, components) for each enabled `deb` source apt uses here."""
    etc = "/etc/apt"
    sourcelist = "sources.list"
    sourceparts = "sources.list.d"
    # Honour apt's own configuration of where sources live, when apt-config works.
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        out = subprocess.run(
            ["apt-config", "shell", "E", "Dir::Etc/d", "L", "Dir::Etc::sourcelist/f",
             "P", "Dir::Etc::sourceparts/d"],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, timeout=10,
        ).stdout
        vals = dict(re.findall(r"^(\w+)='([^']*)'$", out, re.M))
        etc = vals.get("E") or etc
        sourcelist = vals.get("L") or os.path.join(etc, sourcelist)
        sourceparts = vals.get("P") or os.path.join(etc, sourceparts)
    if not os.path.isabs(sourcelist):
        sourcelist = os.path.join(etc, sourcelist)
    if not os.path.isabs(sourceparts):
        sourceparts = os.path.join(etc, sourceparts)

    one_line = [sourcelist] + sorted(glob.glob(os.path.join(sourceparts, "*.list")))
    for path in one_line:
        try:
            text = Path(path).read_text(errors="replace")
        except OSError:
            continue
        for line in text.splitlines():
            line = line.split("#", 1)[0].strip()
            line = re.sub(r"\[[^\]]*\]", " ", line)  # drop [arch=... signed-by=...]
            parts = line.split()
            if len(parts) >= 3 and parts[0] == "deb":
                yield parts[1], [parts[2]], parts[3:]

    for path in sorted(glob.glob(os.path.join(sourceparts, "*.sources"))):
        try:
            text = Path(path).read_text(errors="replace")
        except OSError:
            continue
        for stanza in re.split(r"\n\s*\n", text):
            fields: dict[str, str] = {}
            key = None
            for raw in stanza.splitlines():
                if raw.lstrip().startswith("#"):
                    continue
                if raw[:1] in (" ", "\t") and key:
                    fields[key] += " " + raw.strip()
                    continue
                m = re.match(r"([A-Za-z0-9-]+):\s*(.*)$", raw)
                if m:
                    key = m.group(1).lower()
                    fields[key] = m.group(2).strip()
            if fields.get("enabled", "yes").lower() == "no":
                continue
            if "deb" not in fields.get("types", "").split():
                continue
            for uri in fields.get("uris", "").split():
                yield uri, fields.get("suites", "").split(), fields.get("components", "").split()


def debian_mirror(suite: str = SUITE) -> str:
    """The Debian mirror apt uses on this machine for `suite`, from its own apt sources."""
    env = os.environ.get("REMOTE_DEV_TEST_MIRROR")
    if env:
        return env
    candidates = []
    for uri, suites, components in _apt_source_entries():
        if not uri.startswith(("http://", "https://", "file:/")):
            continue
        if suite in suites and (not components or "main" in components):
            candidates.append(uri)
    if not candidates:
        raise RuntimeError(f"no Debian mirror for {suite!r} in this machine's apt sources "
                           f"(/etc/apt/sources.list*); set REMOTE_DEV_TEST_MIRROR to one")
    return candidates[0]


def _apt_proxy_env() -> dict:
    """http(s)_proxy for debootstrap if apt is configured with a proxy and none is set."""
    env: dict = {}
    for scheme in ("http", "https"):
        var = f"{scheme}_proxy"
        if os.environ.get(var) or os.environ.get(var.upper()):
            continue
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            out = subprocess.run(
                ["apt-config", "shell", "P", f"Acquire::{scheme}::Proxy"],
                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, timeout=10,
            ).stdout
            m = re.search(r"^P='([^']*)'$", out, re.M)
            if m and m.group(1) and m.group(1).upper() != "DIRECT":
                env[var] = m.group(1)
    return env


# --------------------------------------------------------------------- the image


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _unmount_under(path: Path) -> None:
    """Lazily unmount anything debootstrap left mounted under `path` (e.g. proc, sys)."""
    prefix = os.path.realpath(path) + "/"
    try:
        with open("/proc/self/mounts") as f:
            points = [line.split()[1].encode().decode("unicode_escape") for line in f]
    except OSError:
        return
    for mp in sorted((p for p in points if p.startswith(prefix)), key=len, reverse=True):
        subprocess.run(["umount", "-l", mp], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _remove_tree(path: Path) -> None:
    _unmount_under(path)
    shutil.rmtree(path, ignore_errors=True)


def _rootfs_complete(rootfs: Path) -> bool:
    return (rootfs / "usr/bin/python3").exists() and (rootfs / "etc/os-release").exists()


def _build_rootfs(cache: Path, log: Callable[[str], object]) -> Path:
    # Called with the build lock held, so temp dirs left here are from interrupted builds.
    for stale in cache.glob(f".{_ROOTFS_NAME}.tmp-*"):
        log(f"[podman bed] removing unfinished rootfs {stale}")
        _remove_tree(stale)
    rootfs = cache / _ROOTFS_NAME
    if rootfs.is_dir() and _rootfs_complete(rootfs):
        log(f"[podman bed] reusing rootfs {rootfs}")
        return rootfs
    if rootfs.exists():
        _remove_tree(rootfs)
    debootstrap = shutil.which("debootstrap") or (
        "/usr/sbin/debootstrap" if os.path.exists("/usr/sbin/debootstrap") else None)
    if debootstrap is None:
        raise RuntimeError("debootstrap is not installed (apt-get install -y debootstrap)")
    mirror = debian_mirror()
    tmp = Path(tempfile.mkdtemp(prefix=f".{_ROOTFS_NAME}.tmp-", dir=str(cache)))
    os.chmod(tmp, 0o755)  # becomes the image's "/"; mkdtemp makes it 0700
    cmd = [debootstrap, "--variant=minbase", "--include=python3", SUITE, str(tmp), mirror]
    log(f"[podman bed] {' '.join(cmd)}")
    t0 = time.monotonic()
    try:
        proc = subprocess.run(cmd, env={**os.environ, **_apt_proxy_env()},
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=1800)
        if proc.returncode != 0 or not _rootfs_complete(tmp):
            tail = "\n".join(proc.stdout.decode(errors="replace").splitlines()[-30:])
            raise RuntimeError(f"debootstrap failed ({proc.returncode}) from {mirror}:\n{tail}")
        # Shrink the image: package caches and lists are not needed inside it.
        for sub in ("var/cache/apt/archives", "var/lib/apt/lists"):
            for p in (tmp / sub).glob("*"):
                if p.is_file() and p.name != "lock":
                    p.unlink()
        os.rename(tmp, rootfs)
    except BaseException:
        _remove_tree(tmp)
        raise
    log(f"[podman bed] debootstrap took {time.monotonic() - t0:.1f} s -> {rootfs}")
    return rootfs


def _import_rootfs(rootfs: Path, image: str, log: Callable[[str], object]) -> None:
    cmd = ["podman", "import"]
    for change in IMPORT_CHANGES:
        cmd += ["--change", change]
    cmd += ["-", image]
    log(f"[podman bed] tar -C {rootfs} -c . | {' '.join(cmd)}")
    t0 = time.monotonic()
    with tempfile.TemporaryFile() as tar_err:
        tar = subprocess.Popen(["tar", "--numeric-owner", "-C", str(rootfs), "-c", "."],
                               stdout=subprocess.PIPE, stderr=tar_err)
        try:
            imp = subprocess.run(cmd, stdin=tar.stdout, env=_full_env(),
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=1800)
        finally:
            tar.stdout.close()
            tar_rc = tar.wait()
        tar_err.seek(0)
        tar_msg = tar_err.read().decode(errors="replace").strip()
    if tar_rc != 0:
        raise RuntimeError(f"tar of {rootfs} failed ({tar_rc}): {tar_msg}")
    if imp.returncode != 0:
        raise RuntimeError(f"podman import failed ({imp.returncode}): "
                           f"{imp.stderr.decode(errors='replace').strip()}")
    log(f"[podman bed] podman import took {time.monotonic() - t0:.1f} s -> {image}")


def image_exists(image: str = TEST_IMAGE) -> bool:
    return _podman("image", "exists", image, check=False, timeout=_PODMAN_CHECK_TIMEOUT).returncode == 0


def ensure_test_image(log: Callable[[str], object] = print) -> str:
    """Make sure TEST_IMAGE exists in podman's store; build it if not. Returns its name.

    Quick (one `podman image exists`) when present. Otherwise debootstraps a
    bookworm minbase rootfs with python3 into the cache dir (reusing a complete
    one; a build goes to a temp dir renamed into place only when finished) and
    imports it. Safe against concurrent callers (file lock in the cache dir).
    """
    reason = podman_available()
    if reason is not None:
        raise RuntimeError(f"podman is not usable: {reason}")
    if image_exists(TEST_IMAGE):
        return TEST_IMAGE
    cache = cache_dir()
    with _locked(cache / "build.lock"):
        if image_exists(TEST_IMAGE):  # another process built it while we waited
            return TEST_IMAGE
        t0 = time.monotonic()
        rootfs = _build_rootfs(cache, log)
        _import_rootfs(rootfs, TEST_IMAGE, log)
        log(f"[podman bed] {TEST_IMAGE} ready in {time.monotonic() - t0:.1f} s")
    return TEST_IMAGE
