"""Runners as a registry with capabilities: RUNNERS drives the check of every target's
`runner`, an unknown kind is one line naming the known kinds (engine and CLI), features ask a
runner's capabilities instead of its name, one runner per target connection, and debugging
in a container inside a Slurm job is refused with one clear line."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from remote_dev.config import Target, ContainerConfig
from remote_dev.errors import RemoteDevError
from remote_dev.runners import BOOTSTRAP, DIRECT, RUNNERS, Launch, runner_of

PKG = Path(__file__).resolve().parent.parent / "python" / "remote_dev"
KNOWN = "(known: 'process', 'container', 'slurm')"


def target(runner: str, **container: str) -> Target:
    return Target(name="t", host="h", remote_root="/r", runner=runner, container=ContainerConfig(**container))


def test_registry_and_capabilities():
    assert list(RUNNERS) == ["process", "container", "slurm"]
    assert all(cls.name == kind for kind, cls in RUNNERS.items())
    process = RUNNERS["process"](target("process"))
    container = RUNNERS["container"](target("container", image="i", workdir="/w"))
    slurm = RUNNERS["slurm"](target("slurm"))
    slurm_box = RUNNERS["slurm"](target("slurm", image="i", workdir="/w"))
    assert [r.in_container() for r in (process, container, slurm, slurm_box)] == [False, True, False, True]
    assert [r.container_root() for r in (process, container, slurm_box)] == [None, "/w", "/w"]
    assert [r.debug_mode() for r in (process, container, slurm)] == [BOOTSTRAP, DIRECT, BOOTSTRAP]
    assert [r.honours_launch for r in (process, container, slurm)] == [False, True, False]
    assert slurm.probes == ("sbatch", "squeue", "scancel") and process.probes == container.probes == ()


def test_each_kind_checks_what_it_needs_of_the_tables(engine, tmp_path):
    """The kind's own check, through the engine as it loads the file: one line each."""
    f = tmp_path / ".remote-dev.toml"
    cases = [('runner = "container"\n', "targets.k.container", 'runner = "container" needs container.dockerfile'),
             ('runner = "slurm"\n[targets.k.container]\nworkdir = "/w"\n', "targets.k.container",
              'runner = "slurm" with a container table needs'),
             ('runner = "process"\n[targets.k.container]\nengine = "pyxis"\nimage = "i"\n', "targets.k.container.engine",
              "'pyxis' is not a container engine of runner = \"process\" (it runs with 'docker', 'podman')")]
    for body, key, problem in cases:
        f.write_text('[targets.k]\nhost = "h"\nremote_root = "/r"\n' + body)
        with pytest.raises(RemoteDevError) as e:
            engine.call_sync("status", {"cwd": str(tmp_path)}, timeout=30)
        assert e.value.message.startswith(f"{f}: {key}: {problem}") and "\n" not in e.value.message


def test_debugging_in_a_container_inside_slurm_is_refused_in_one_line():
    runner = RUNNERS["slurm"](target("slurm", image="pytorch:24.01", workdir="/w"))
    with pytest.raises(RemoteDevError) as e:
        runner.debug_mode()
    assert e.value.message == ("targets.t: debugging in a container inside a Slurm job is not supported; "
                               ":RemoteRun works, or debug with a target without the container table")


def test_no_call_site_branches_on_a_runner_name():
    """Outside runners/ (and the Slurm allocation feature, which is Slurm's own), nothing
    compares `runner ==` a kind: a new kind changes no feature."""
    found = []
    for path in PKG.rglob("*.py"):
        rel = path.relative_to(PKG).as_posix()
        if rel.startswith(("runners/", "agent/")) or rel in ("alloc.py", "actions.py"):
            continue
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if re.search(r"runner [!=]= |target\.in_container\b|\bt\.in_container\b", line):
                found.append(f"{rel}:{n}: {line.strip()}")
    assert not found, "\n".join(found)


UNKNOWN = '[targets.k]\nhost = "h"\nremote_root = "/r"\nrunner = "kubernetes"\n'


def test_unknown_kind_is_one_line_naming_the_known_kinds(engine, tmp_path):
    (tmp_path / ".remote-dev.toml").write_text(UNKNOWN)
    with pytest.raises(RemoteDevError) as e:
        engine.call_sync("status", {"cwd": str(tmp_path)}, timeout=30)
    f = tmp_path / ".remote-dev.toml"
    assert e.value.message == f"{f}: targets.k.runner: unknown runner 'kubernetes' {KNOWN}"


def test_unknown_kind_from_the_cli(tmp_path, isolated_state):
    (tmp_path / ".remote-dev.toml").write_text(UNKNOWN)
    exe = str(Path(sys.executable).parent / "remote-dev")
    out = subprocess.run([exe, "-C", str(tmp_path), "status"], capture_output=True, text=True, timeout=60,
                         env={**os.environ, "XDG_STATE_HOME": str(isolated_state)})
    assert out.returncode == 2
    assert f"targets.k.runner: unknown runner 'kubernetes' {KNOWN}" in out.stderr


def test_one_runner_per_connection_and_a_launch_it_cannot_honour(engine, make_project):
    proj = make_project()
    ctx = {"cwd": str(proj.root)}

    async def check():
        sess = engine.project(ctx).session()
        assert runner_of(sess) is runner_of(sess)
        from remote_dev import runs

        with pytest.raises(RemoteDevError, match=r'runner = "process" cannot mount folders or publish ports'):
            await runs.start_run(engine, engine.project(ctx), sess, "true", Launch("true", publish=[1234]))
    engine.submit(check()).result(30)


def test_debug_in_a_slurm_container_is_refused_before_anything_runs(engine, make_project):
    proj = make_project(target={"runner": "slurm"},
                        config_extra='[targets.test.container]\nimage = "pytorch:24.01"\nworkdir = "/w"\n')
    proj.write("main.py", "print(1)\n")
    with pytest.raises(RemoteDevError) as e:
        engine.call_sync("debug", {"cwd": str(proj.root)}, {"cmd": "python3 main.py"}, timeout=60)
    assert e.value.message.startswith("targets.test: debugging in a container inside a Slurm job is not supported")
    assert "\n" not in e.value.message
    assert not [p for k, p in engine.reports if k == "run_state"], "no run was started"
