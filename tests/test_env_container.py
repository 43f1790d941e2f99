""":RemoteEnv of a container target with real podman on the remote: the image's python3
is what is mirrored (its stdlib, a package only the image has), and a traceback raised
inside that package in a container run lands on the mirror's file."""
from __future__ import annotations

import os

import pytest

from conftest import events, require, wait_for

from support.podman import TEST_IMAGE, ensure_test_image, podman_available

from test_container import container_project

DOCKERFILE = f"""FROM {TEST_IMAGE}
RUN mkdir -p /opt/corp/imgonly && printf 'def check(x):\\n    raise ValueError(x)\\n' > /opt/corp/imgonly/__init__.py
ENV PYTHONPATH=/opt/corp
"""


@pytest.fixture(scope="module")
def image():
    reason = podman_available()
    require(reason is None, f"podman: {reason}")
    return ensure_test_image()


def test_the_images_python_is_mirrored_and_its_frames_map(engine, make_project, image):
    proj = container_project(make_project)
    proj.write("Dockerfile", DOCKERFILE)
    proj.write("main.py", "import imgonly\nimgonly.check(3)\n")
    ctx = {"cwd": str(proj.root)}
    run = engine.call_sync("run", ctx, {"cmd": "python3 main.py"}, timeout=300)   # builds the image
    wait_for(lambda: next((e for e in events(engine, "RemoteDevRunExit") if e["id"] == run["id"]), None), 300)
    data = engine.call_sync("env", ctx, {}, timeout=300)
    assert "/opt/corp" in data["remotes"] and "/workspace" not in data["remotes"]
    corp = data["paths"][data["remotes"].index("/opt/corp")]
    assert open(os.path.join(corp, "imgonly", "__init__.py")).read().startswith("def check(x):")
    stdlib = next(p for r, p in zip(data["remotes"], data["paths"]) if r.startswith("/usr/lib/python3."))
    assert os.path.isfile(os.path.join(stdlib, "json", "decoder.py"))
    again = engine.call_sync("env", ctx, {}, timeout=120)
    assert again["changed"] == 0
    items = engine.call_sync("quickfix", ctx, {"id": run["id"]})["quickfix"]
    inner = items[-1]
    assert inner.get("filename") == os.path.join(corp, "imgonly", "__init__.py") and "ValueError" in inner["text"], items
