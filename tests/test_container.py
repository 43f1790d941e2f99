"""runner = "container" with real podman on the remote (this machine through the sshd).

No Docker engine runs here: the docker path shares the code and its flags are covered by
the unit tests at the end.
"""
from __future__ import annotations

import os
import subprocess

import pytest

from conftest import events, require, wait_for

from support.podman import TEST_IMAGE, ensure_test_image, podman_available, podman_env

from test_debug import FAILING_UTIL, debug_project
from test_debug_nvim import (flow_breakpoint_evaluate_natural_end, flow_restart, flow_terminate,
                             flow_uncaught_exception)

from remote_dev.config import ContainerConfig, Target
from remote_dev.runners.container import dockerfile_quickfix, gpu_args, run_argv


@pytest.fixture(scope="module")
def image():
    reason = podman_available()
    require(reason is None, f"podman: {reason}")
    return ensure_test_image()


def container_project(make_project, dockerfile=True, **container):
    cont = {"engine": "podman", "workdir": "/workspace"}
    if dockerfile:
        cont["dockerfile"] = "Dockerfile"
    cont.update(container)
    body = "\n[targets.test.container]\n" + "\n".join(
        f'{k} = "{v}"' if isinstance(v, str) else f"{k} = {v!r}".replace("'", '"') for k, v in cont.items()) + "\n"
    return make_project(target={"runner": "container", "env": {**podman_env(), "API_KEY": "k-7f3a"}},
                        config_extra=body)


def podman_ps(name_filter="rd-"):
    out = subprocess.run(["podman", "ps", "-a", "--filter", f"name={name_filter}", "--format", "{{.Names}}"],
                         capture_output=True, text=True, env={**os.environ, **podman_env()})
    return [n for n in out.stdout.split() if n]


def exit_of(engine, run_id, timeout=120):
    return wait_for(lambda: next((e for e in events(engine, "RemoteDevRunExit") if e["id"] == run_id), None),
                    timeout, 0.05, what=f"exit of {run_id}")


def lines_of(engine, run_id):
    return [ln for k, p in engine.reports if k == "run_output" and p["id"] == run_id for ln in p["lines"]]


def test_build_run_traceback_maps_container_paths(engine, make_project, image):
    proj = container_project(make_project)
    proj.write("Dockerfile", f"FROM {TEST_IMAGE}\nRUN echo built > /built.txt\n")
    proj.write("pkg/__init__.py", "")
    proj.write("pkg/mod.py", "def f():\n    raise RuntimeError('inside the container')\n")
    proj.write("main.py", "import os\nprint(open('/built.txt').read().strip(), os.getcwd())\n"
                          "print('key', os.environ.get('API_KEY'))\nfrom pkg import mod\nmod.f()\n")
    ctx = {"cwd": str(proj.root)}
    r1 = engine.call_sync("run", ctx, {"cmd": "python3 main.py"}, timeout=120)
    ex = exit_of(engine, r1["id"])
    out = lines_of(engine, r1["id"])
    assert ex["code"] == 1, out
    assert "built /workspace" in out
    assert "key k-7f3a" in out      # the target's env reaches the program (by name on podman's command line)
    runs = dict(engine.projects)[proj.root].runs
    qf = [(e.get("filename"), e.get("lnum")) for e in runs[r1["id"]].quickfix if e.get("filename")]
    assert qf == [(str(proj.root / "main.py"), 5), (str(proj.root / "pkg/mod.py"), 2)]
    # a second run reuses the engine's build cache
    r2 = engine.call_sync("run", ctx, {"cmd": "python3 -c 'print(42)'"}, timeout=120)
    assert exit_of(engine, r2["id"])["code"] == 0
    out2 = lines_of(engine, r2["id"])
    assert "42" in out2 and any("Using cache" in ln for ln in out2), out2
    assert podman_ps(f"rd-{r1['id']}") == [] and podman_ps(f"rd-{r2['id']}") == []


def test_failed_build_ends_run_with_dockerfile_location(engine, make_project, image):
    proj = container_project(make_project)
    proj.write("Dockerfile", f"FROM {TEST_IMAGE}\nRUN echo fine\nRUN exit 7\n")
    proj.write("main.py", "print('never')\n")
    r = engine.call_sync("run", {"cwd": str(proj.root)}, {"cmd": "python3 main.py"}, timeout=120)
    ex = exit_of(engine, r["id"])
    assert ex["code"] == 125
    runs = dict(engine.projects)[proj.root].runs
    entries = [e for e in runs[r["id"]].quickfix if e.get("filename", "").endswith("Dockerfile")]
    assert entries and entries[0]["lnum"] == 3


def test_stop_removes_the_container_and_run_survives_engine_exit(make_project, image):
    from remote_dev.actions import ACTIONS
    from remote_dev.engine import Engine

    proj = container_project(make_project)
    proj.write("Dockerfile", f"FROM {TEST_IMAGE}\n")
    proj.write("loop.py", "import time\nfor i in range(600):\n    print('tick', i, flush=True)\n    time.sleep(0.1)\n")
    ctx = {"cwd": str(proj.root)}
    eng1 = Engine(actions=ACTIONS)
    r = eng1.call_sync("run", ctx, {"cmd": "python3 loop.py"}, timeout=120)
    eng1.close()  # like :qa!
    name = f"rd-{r['id']}"
    wait_for(lambda: podman_ps(name), 60, what="container running")
    reports = []
    eng2 = Engine(report=lambda k, p: reports.append((k, p)), actions=ACTIONS)
    eng2.reports = reports
    try:
        eng2.call_sync("attach", ctx, {"id": r["id"]}, timeout=60)
        wait_for(lambda: len(lines_of(eng2, r["id"])) > 3, 60, what="output after reattach")
        got = [ln for ln in lines_of(eng2, r["id"]) if ln.startswith("tick")]
        assert got == [f"tick {i}" for i in range(len(got))]
        eng2.call_sync("stop", ctx, {"id": r["id"]}, timeout=120)
        ex = exit_of(eng2, r["id"])
        assert ex["code"] != 0
        assert podman_ps(name) == []
    finally:
        eng2.close()


def test_debug_breakpoint_evaluate_and_natural_end_in_nvim(nvim, dap, make_project, image):
    made = container_project(make_project, dockerfile=False, image=TEST_IMAGE)
    proj, main, util = debug_project(lambda **kw: made)
    ready = flow_breakpoint_evaluate_natural_end(nvim, dap, proj, main, util, 180)
    assert podman_ps(f"rd-{ready['id']}") == []


def test_debug_terminate_from_nvim_dap_removes_the_container(nvim, dap, make_project, image):
    made = container_project(make_project, dockerfile=False, image=TEST_IMAGE)
    proj, main, util = debug_project(lambda **kw: made)
    ready = flow_terminate(nvim, dap, proj, main, util, 180)
    wait_for(lambda: podman_ps(f"rd-{ready['id']}") == [], 60, what="container removed")


def test_debug_restart_from_nvim_dap(nvim, dap, make_project, image):
    made = container_project(make_project, dockerfile=False, image=TEST_IMAGE)
    proj, main, util = debug_project(lambda **kw: made)
    first, second = flow_restart(nvim, dap, proj, main, util, 180)
    assert podman_ps(f"rd-{first}") == [] and podman_ps(f"rd-{second}") == []


def test_debug_uncaught_exception_quickfix_at_local_files(nvim, dap, make_project, image):
    made = container_project(make_project, dockerfile=False, image=TEST_IMAGE)
    proj, main, util = debug_project(lambda **kw: made, util=FAILING_UTIL)
    flow_uncaught_exception(nvim, dap, proj, main, util, 180)


def test_missing_engine_is_a_clear_error(engine, make_project):
    proj = make_project(target={"runner": "container"},
                        config_extra='\n[targets.test.container]\nengine = "docker"\nimage = "x:y"\n')
    proj.write("main.py", "")
    with pytest.raises(Exception) as e:
        engine.call_sync("run", {"cwd": str(proj.root)}, {"cmd": "true"}, timeout=60)
    assert "docker" in str(e.value) and "rdtest" in str(e.value)


# ---- flags (unit): the docker path shares all code but its flags
def _target(**c):
    return Target(name="gpu", host="h", remote_root="/r", runner="container", env={"A": "1"},
                  container=ContainerConfig(**c))


def test_gpu_flags_per_engine():
    assert gpu_args("docker", "all") == ["--gpus", "all"]
    assert gpu_args("docker", "0,1") == ["--gpus", '"device=0,1"']
    assert gpu_args("podman", "all") == ["--device", "nvidia.com/gpu=all"]
    assert gpu_args("podman", "0,1") == ["--device", "nvidia.com/gpu=0", "--device", "nvidia.com/gpu=1"]
    assert gpu_args("docker", "") == []


def test_docker_run_argv():
    t = _target(engine="docker", image="img:1", workdir="/ws", gpus="all", args=["--shm-size=8g"])
    argv = run_argv("docker", "rd-x", "img:1", "/home/u/p", t, "python t.py", publish=[5678])
    assert argv[:4] == ["docker", "run", "--rm", "--name"] and "rd-x" in argv
    assert argv[argv.index("-v") + 1] == "/home/u/p:/ws" and argv[argv.index("-w") + 1] == "/ws"
    assert argv[argv.index("A") - 1] == "-e" and "127.0.0.1:5678:5678" in argv
    assert "A=1" not in argv    # the target's env by name: its values never on a command line
    assert argv[-4:] == ["img:1", "sh", "-c", "python t.py"]
    assert "--gpus" in argv and "--shm-size=8g" in argv


def test_dockerfile_quickfix_docker_form(tmp_path):
    df = tmp_path / "Dockerfile"
    df.write_text("FROM x\nRUN a\nRUN b\n")
    text = "ERROR: failed to solve: process did not complete\nDockerfile:3\n[remote_dev] image build failed (exit 1)"
    assert dockerfile_quickfix(text, df)[0]["lnum"] == 3


def test_health_reports_engine_version_and_a_container_run(engine, make_project, image):
    proj = make_project(target={"runner": "container", "env": podman_env()},
                        config_extra=f'\n[targets.test.container]\nimage = "{TEST_IMAGE}"\n')
    rep = engine.call_sync("health", {"cwd": str(proj.root)}, timeout=180)
    texts = [i["text"] for i in rep["remote"]]
    assert any(t.startswith("container engine: podman ") for t in texts), texts
    assert f"podman can run a container from {TEST_IMAGE}" in texts
    assert not [i for i in rep["remote"] if i["level"] == "error"], rep["remote"]
