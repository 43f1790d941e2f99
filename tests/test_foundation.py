"""Foundation: config, SSH + agent against a real sshd, status, errors."""
from __future__ import annotations

import re
import subprocess
import sys
import zipfile

import pytest

from remote_dev.errors import RemoteDevError


def test_status_connects_and_reports(engine, make_project, sshd):
    proj = make_project()
    st = engine.call_sync("status", {"cwd": str(proj.root)}, timeout=60)
    assert st["connected"] is True
    assert st["target"] == "test" and st["host"] == sshd.alias
    assert st["remote_root"] == str(proj.remote_root)
    assert st["python"].startswith("3.")
    assert st["agent"] == "1"
    assert st["rtt_ms"] is not None and st["rtt_ms"] < 1000


def test_cli_status_prints_the_same(make_project, sshd, isolated_state):
    import os
    import sys
    from pathlib import Path

    proj = make_project()
    exe = str(Path(sys.executable).parent / "remote-dev")
    out = subprocess.run([exe, "-C", str(proj.root), "status"], capture_output=True, text=True, timeout=60,
                         env={**os.environ, "XDG_STATE_HOME": str(isolated_state)})
    assert out.returncode == 0, out.stderr
    assert "target      test (process runner)" in out.stdout
    assert f"host        {sshd.alias}" in out.stdout
    assert "connected   yes" in out.stdout and "agent       1" in out.stdout
    assert "round trip" in out.stdout and "python      3." in out.stdout


def test_agent_is_uploaded_once_per_content(engine, make_project, sshd):
    from remote_dev.agent import bundle

    proj = make_project()
    engine.call_sync("status", {"cwd": str(proj.root)}, timeout=60)
    agent_dir = sshd.remote_cache / "remote-dev" / "agent" / bundle().digest
    pyz = agent_dir / "agent.pyz"
    assert pyz.read_bytes() == bundle().data
    names = zipfile.ZipFile(pyz).namelist()
    assert "msgpack/fallback.py" in names and "remote_dev_agent/remote/server.py" in names
    # the agent wrote the copy with bytecode for the remote's interpreter (the same here)
    compiled = agent_dir / f"agent.{sys.implementation.cache_tag}.pyz"
    assert "remote_dev_agent/remote/supervisor.pyc" in zipfile.ZipFile(compiled).namelist()
    mtime = pyz.stat().st_mtime_ns, compiled.stat().st_mtime_ns
    from remote_dev.actions import ACTIONS
    from remote_dev.engine import Engine
    e2 = Engine(actions=ACTIONS)
    try:
        e2.call_sync("status", {"cwd": str(proj.root)}, timeout=60)
    finally:
        e2.close()
    assert (pyz.stat().st_mtime_ns, compiled.stat().st_mtime_ns) == mtime
    # no temporaries: the zip and a compiled copy per interpreter that started it (other
    # tests start it with other Pythons)
    names = sorted(p.name for p in agent_dir.iterdir())
    assert pyz.name in names and compiled.name in names, names
    assert all(re.fullmatch(r"agent(\.cpython-\d+)?\.pyz", n) for n in names), names


def test_reconnects_after_a_drop(engine, make_project):
    proj = make_project()
    ctx = {"cwd": str(proj.root)}
    engine.call_sync("status", ctx, timeout=60)
    sess = engine.projects[proj.root].session()
    first_pid = sess.hello["pid"]

    async def cut():
        sess.conn.abort()
    engine.submit(cut()).result(10)
    st = engine.call_sync("status", ctx, timeout=60)
    assert st["connected"] and sess.hello["pid"] != first_pid


def test_connection_refused_names_the_host(engine, tmp_path, sshd):
    import socket
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    root = tmp_path / "p"
    root.mkdir()
    (root / ".remote-dev.toml").write_text(f'[targets.x]\nhost = "127.0.0.1"\nport = {port}\nremote_root = "/tmp/r"\n'
                                           f'known_hosts = "{sshd.known_hosts}"\n')
    with pytest.raises(RemoteDevError) as e:
        engine.call_sync("status", {"cwd": str(root)}, timeout=60)
    assert f"127.0.0.1 port {port}: connection refused" in str(e.value)


def test_auth_failure_is_one_clear_message(engine, tmp_path, sshd):
    other = tmp_path / "k"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other)], check=True)
    root = tmp_path / "p"
    root.mkdir()
    (root / ".remote-dev.toml").write_text(
        f'[targets.x]\nhost = "127.0.0.1"\nport = {sshd.port}\nremote_root = "/tmp/r"\n'
        f'known_hosts = "{sshd.known_hosts}"\nidentity_file = "{other}"\nssh_config = "/dev/null"\n')
    with pytest.raises(RemoteDevError) as e:
        engine.call_sync("status", {"cwd": str(root)}, timeout=60)
    assert "authentication failed" in str(e.value) and "127.0.0.1" in str(e.value)


def test_unknown_host_is_one_clear_message(engine, tmp_path):
    root = tmp_path / "p"
    root.mkdir()
    (root / ".remote-dev.toml").write_text('[targets.x]\nhost = "no-such-host.invalid"\nremote_root = "/tmp/r"\n'
                                           'ssh_config = "/dev/null"\n')
    with pytest.raises(RemoteDevError) as e:
        engine.call_sync("status", {"cwd": str(root)}, timeout=60)
    assert "no-such-host.invalid: unknown host" in str(e.value)


# ---- config validation: one message with file, key and reason
from remote_dev.config import check_runner, load_config  # noqa: E402
from remote_dev.runners import RUNNERS  # noqa: E402
from remote_dev.errors import ConfigError  # noqa: E402


@pytest.mark.parametrize("body,key,reason", [
    ("[targets.a\nhost=1", None, "not valid TOML"),
    ('[targets.a]\nhost = "h"\nremote_root = "/r"\nbogus = 1\n', "targets.a.bogus", "unknown key"),
    ('[targets.a]\nhost = 3\nremote_root = "/r"\n', "targets.a.host", "must be a string"),
    ('[targets.a]\nremote_root = "/r"\n', "targets.a.host", "is required"),
    ('default_target = "b"\n[targets.a]\nhost = "h"\nremote_root = "/r"\n', "default_target", "no target named 'b'"),
    ('[sync]\npush_on_save = true\n', "targets", "no target defined"),
    ('[targets.a]\nhost = "h"\nremote_root = "/r"\nrunner = "k8s"\n', "targets.a.runner", "unknown runner 'k8s'"),
    ('[targets.a]\nhost = "h"\nremote_root = "/r"\nrunner = "container"\n', "targets.a.container", "needs"),
    ('[targets.a]\nhost = "h"\nremote_root = "/r"\n[sync]\nexclude = "data"\n', "sync.exclude", "array of strings"),
    ('[targets.a]\nhost = "h"\nremote_root = "~"\n', "targets.a.remote_root", "whole home"),
    ('[targets.a]\nhost = "h"\nremote_root = "/r"\nport = 70000\n', "targets.a.port", "between 1 and 65535"),
])
def test_config_errors(tmp_path, body, key, reason):
    f = tmp_path / ".remote-dev.toml"
    f.write_text(body)
    with pytest.raises(ConfigError) as e:
        check_runner(load_config(f), RUNNERS)   # as the engine loads it
    msg = str(e.value)
    assert msg.startswith(str(f)) and reason in msg
    if key:
        assert f": {key}: " in msg


def test_config_full_example(tmp_path):
    f = tmp_path / ".remote-dev.toml"
    f.write_text('''
default_target = "gpu"
[targets.gpu]
host = "gpubox"
remote_root = "~/projects/demo"
runner = "process"
python = "python3"
env = { CUDA_VISIBLE_DEVICES = "0" }
[targets.gpu.container]
engine = "docker"
dockerfile = "Dockerfile"
workdir = "/workspace"
gpus = "all"
args = []
[targets.gpu.slurm]
args = ["--partition=gpu", "--gres=gpu:1", "--time=01:00:00"]
[sync]
exclude = ["data/", "*.ckpt"]
pull = ["results/", "notebooks/"]
push_on_save = true
[run]
command = "python {file}"
''')
    cfg = load_config(f)
    t = cfg.target()
    assert t.name == "gpu" and t.env == {"CUDA_VISIBLE_DEVICES": "0"} and t.container.gpus == "all"
    assert cfg.sync.pull == ("results/", "notebooks/") and cfg.sync.push_on_save
    assert t.slurm.args[1] == "--gres=gpu:1" and cfg.run.command == "python {file}"
