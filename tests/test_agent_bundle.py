"""The agent's zip: deterministic bytes, runs with `python3 -S`, the bootstrap installs it
once (checked against its hash), the copy with bytecode for the remote's interpreter.
Local processes only (the real sshd path is in test_foundation)."""
from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import msgpack
import pytest

from remote_dev.agent import AGENT_ZIP, NEED, OK, PACKAGE, REMOTE_COMMAND, bootstrap_script, bundle, bundle_files, pack

PY = shutil.which("python3") or sys.executable


def request(method: str, *params: object, msgid: int = 1) -> bytes:
    return msgpack.packb([0, msgid, method, list(params)], use_bin_type=True)


def answers(out: bytes) -> dict[int, list[object]]:
    """The responses in an agent's output, by message id."""
    return {m[1]: m for m in msgpack.Unpacker(io.BytesIO(out), raw=False)}


def talk(argv: list[str], batches: list[bytes], env: dict[str, str]) -> dict[int, list[object]]:
    """Send batches of requests to an agent process, each once the one before was answered
    in full, then close its stdin.  The responses by message id."""
    p = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    assert p.stdin is not None and p.stdout is not None
    unpacker = msgpack.Unpacker(raw=False)
    got: dict[int, list[object]] = {}
    for batch in batches:
        want = len(got) + len(list(msgpack.Unpacker(io.BytesIO(batch), raw=False)))
        p.stdin.write(batch)
        p.stdin.flush()
        while len(got) < want:
            data = os.read(p.stdout.fileno(), 1 << 16)
            assert data, f"the agent ended early: {p.stderr.read() if p.stderr else ''}"
            unpacker.feed(data)
            got.update({m[1]: m for m in unpacker})
    p.stdin.close()
    p.wait(60)
    return got


def installed(tmp_path: Path) -> Path:
    """The zip where the bootstrap puts it, under an XDG_CACHE_HOME of this test."""
    d = tmp_path / "cache" / "remote-dev" / "agent" / bundle().digest
    d.mkdir(parents=True)
    (d / AGENT_ZIP).write_bytes(bundle().data)
    return d / AGENT_ZIP


def env_for(tmp_path: Path) -> dict[str, str]:
    return {**os.environ, "XDG_CACHE_HOME": str(tmp_path / "cache")}


def test_bundle_bytes_are_deterministic(tmp_path):
    b = bundle()
    assert pack(bundle_files()) == b.data
    # a fresh interpreter, another working directory: the same bytes
    code = "from remote_dev.agent import bundle; import sys; sys.stdout.write(bundle().digest)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, check=True)
    assert out.stdout == b.digest
    z = zipfile.ZipFile(installed(tmp_path))
    infos = z.infolist()
    assert {i.date_time for i in infos} == {(1980, 1, 1, 0, 0, 0)}
    assert {i.external_attr >> 16 for i in infos} == {0o644}
    names = [i.filename for i in infos]
    assert names[0] == "__main__.py" and f"{PACKAGE}/protocol.py" in names and "msgpack/fallback.py" in names
    # every module of the remote side is in it, and nothing of the local side
    remote = Path(__file__).resolve().parents[1] / "python" / "remote_dev" / "agent" / "remote"
    assert {n.rsplit("/", 1)[1] for n in names if n.startswith(f"{PACKAGE}/remote/")} == \
        {p.name for p in remote.glob("*.py")}
    assert not any("__pycache__" in n or n.endswith(".pyc") for n in names)


def test_zip_runs_with_python_S(tmp_path):
    pyz = installed(tmp_path)
    reqs = request("hello", "test", msgid=1) + request("nope", msgid=2) + request("ping", msgid=3)
    p = subprocess.run([PY, "-S", str(pyz)], input=reqs, capture_output=True, env=env_for(tmp_path), timeout=60)
    assert p.returncode == 0, p.stderr
    got = answers(p.stdout)
    assert got[1][2] is None and got[1][3]["pid"] > 0 and got[1][3]["cache_dir"] == str(tmp_path / "cache" / "remote-dev")
    assert got[2][2]["kind"] == "method"
    assert isinstance(got[3][3], float)
    bad = subprocess.run([PY, "-S", str(pyz), "bogus"], capture_output=True, timeout=60)
    assert bad.returncode == 2 and b"unknown command" in bad.stderr


def test_agent_writes_the_compiled_copy_once_and_supervisors_run_from_it(tmp_path):
    pyz = installed(tmp_path)
    compiled = pyz.with_name(f"agent.{sys.implementation.cache_tag}.pyz")
    env = env_for(tmp_path)
    subprocess.run([PY, "-S", str(pyz)], input=b"", capture_output=True, env=env, timeout=60, check=True)
    names = zipfile.ZipFile(compiled).namelist()
    assert f"{PACKAGE}/remote/supervisor.pyc" in names and f"{PACKAGE}/remote/supervisor.py" in names
    assert "__main__.pyc" in names
    first = compiled.stat().st_mtime_ns
    # modules come from the bytecode in it (zipimport cannot compile into a zip)
    code = (f"import sys; sys.path.insert(0, {str(compiled)!r}); import {PACKAGE}.remote.server as s; "
            "print(s.__file__)")
    out = subprocess.run([PY, "-S", "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.strip().endswith("server.pyc")
    # a run through the compiled copy: the supervisor starts from it and records the exit
    got = talk([PY, "-S", str(compiled)], [
        request("run_start", {"id": "r1", "root": str(tmp_path), "cmd": "echo hi; sleep 1; exit 3"}),
        request("run_read", "r1", 0, 1000, 10, 3, msgid=2)], env)
    assert got[1][2] is None and got[2][3]["data"] == b"hi\n", got
    supervisor = got[2][3]["info"]["supervisor"]
    assert Path(f"/proc/{supervisor}/cmdline").read_bytes().split(b"\0")[1:3] == [b"-S", os.fsencode(compiled)]
    run_dir = tmp_path / "cache" / "remote-dev" / "runs" / "r1"
    deadline = time.time() + 20
    while not (run_dir / "exit.json").exists() and time.time() < deadline:
        time.sleep(0.05)
    assert json.loads((run_dir / "exit.json").read_text())["code"] == 3
    assert (run_dir / "output.log").read_bytes() == b"hi\n"
    assert compiled.stat().st_mtime_ns == first
    assert sorted(p.name for p in pyz.parent.iterdir()) == sorted([pyz.name, compiled.name])


def run_bootstrap(tmp_path: Path, feed: bytes | None) -> subprocess.CompletedProcess[bytes]:
    """The real bootstrap command, through sh as sshd would run it, its script on stdin;
    feed: what to answer to NEED (None: nothing beyond the requests)."""
    p = subprocess.Popen(["sh", "-c", REMOTE_COMMAND], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, env=env_for(tmp_path))
    assert p.stdin is not None and p.stdout is not None
    p.stdin.write(bootstrap_script(PY))
    p.stdin.flush()
    first = p.stdout.readline()
    if first == NEED:
        assert feed is not None, "the bootstrap asked for the zip although it is installed"
        p.stdin.write(b"%d\n" % len(bundle().data) + feed)
        p.stdin.flush()
        first = p.stdout.readline()
    p.stdin.write(request("ping"))
    p.stdin.close()
    rest = p.stdout.read()
    p.wait(60)
    return subprocess.CompletedProcess(p.args, p.returncode, first + rest, p.stderr.read() if p.stderr else b"")


def test_bootstrap_installs_once(tmp_path):
    first = run_bootstrap(tmp_path, bundle().data)
    assert first.returncode == 0 and first.stdout.startswith(OK + b"3."), first.stderr
    folder = tmp_path / "cache" / "remote-dev" / "agent" / bundle().digest
    assert (folder / AGENT_ZIP).read_bytes() == bundle().data
    mtime = (folder / AGENT_ZIP).stat().st_mtime_ns
    again = run_bootstrap(tmp_path, None)   # asserts no NEED
    assert again.returncode == 0 and again.stdout.startswith(OK + b"3.")
    assert (folder / AGENT_ZIP).stat().st_mtime_ns == mtime


@pytest.mark.parametrize("damage", ["truncated", "altered"])
def test_bootstrap_refuses_a_damaged_upload(tmp_path, damage):
    data = bundle().data
    feed = data[:-100] if damage == "truncated" else data[:-1] + bytes([data[-1] ^ 1])
    p = subprocess.Popen(["sh", "-c", REMOTE_COMMAND], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, env=env_for(tmp_path))
    p.stdin.write(bootstrap_script(PY))   # type: ignore[union-attr]
    p.stdin.flush()   # type: ignore[union-attr]
    assert p.stdout.readline() == NEED   # type: ignore[union-attr]
    out, err = p.communicate(b"%d\n" % len(data) + feed, timeout=60)
    assert out == b"" and p.returncode == 4 and b"damaged" in err
    folder = tmp_path / "cache" / "remote-dev" / "agent" / bundle().digest
    assert not folder.exists() or list(folder.iterdir()) == []
