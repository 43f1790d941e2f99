""":RemoteEnv through the engine against the real sshd: the mirror of what the target's
python imports (a venv with more_itertools, which the tests' own Python lacks), its
change detection, and tracebacks raised inside a mirrored library landing on the mirror."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from conftest import events, require, wait_for

from support.env_python import editable_install, fresh_env, more_itertools_python, site_packages


def env_python():
    python, why = more_itertools_python()
    require(python is not None, why)
    return python


def mirrored(data, remote_dir):
    """The mirror folder of a remote sys.path folder, from RemoteDevEnv's data."""
    return data["paths"][data["remotes"].index(str(remote_dir))]


def test_mirror_has_the_remote_bytes_and_only_sources(engine, make_project):
    python = env_python()
    proj = make_project(target={"python": str(python)})
    ctx = {"cwd": str(proj.root)}
    data = engine.call_sync("env", ctx, {}, timeout=120)
    site = site_packages(python)
    assert str(site) in data["remotes"]
    assert all(not r.startswith(str(proj.remote_root)) for r in data["remotes"])
    local = mirrored(data, site)
    for rel in ("more_itertools/more.py", "more_itertools/more.pyi", "more_itertools/py.typed",
                "more_itertools-10.7.0.dist-info/METADATA"):
        assert open(os.path.join(local, rel), "rb").read() == (site / rel).read_bytes(), rel
    files = [os.path.join(d, f) for d, _, fs in os.walk(local) for f in fs]
    assert not [f for f in files if "__pycache__" in f or f.endswith((".pyc", ".so"))]
    assert data["files"] > 100 and data["bytes"] > 1_000_000   # the stdlib too
    assert events(engine, "RemoteDevEnv")[-1]["paths"] == data["paths"]
    status = engine.call_sync("status", ctx, {"refresh": False})
    assert status["env"]["files"] == data["files"]
    assert any(ln.startswith(f"env         {data['files']} files") for ln in status["lines"]), status["lines"]
    # sys.path order: the stdlib before site-packages
    assert data["remotes"].index(str(site)) == len(data["remotes"]) - 1


def test_refresh_with_nothing_changed_fetches_nothing_and_a_new_package_comes(engine, make_project, tmp_path):
    python = fresh_env(tmp_path / "venv")
    proj = make_project(target={"python": str(python)})
    ctx = {"cwd": str(proj.root)}
    first = engine.call_sync("env", ctx, {}, timeout=120)
    assert first["changed"] == first["files"] > 0
    again = engine.call_sync("env", ctx, {}, timeout=60)
    assert again["changed"] == 0 and again["files"] == first["files"]
    # what pip install does to site-packages: a new package folder and its dist-info
    site = site_packages(python)
    (site / "fresh_pkg").mkdir()
    (site / "fresh_pkg" / "__init__.py").write_text("def hello():\n    return 42\n")
    (site / "fresh_pkg-1.0.dist-info").mkdir()
    (site / "fresh_pkg-1.0.dist-info" / "METADATA").write_text("Name: fresh_pkg\nVersion: 1.0\n")
    third = engine.call_sync("env", ctx, {}, timeout=60)
    assert third["changed"] == 2 and third["files"] == first["files"] + 2
    local = mirrored(third, site)
    assert open(os.path.join(local, "fresh_pkg/__init__.py")).read().startswith("def hello")
    # uninstalled: gone from the mirror too
    subprocess.run(["rm", "-rf", str(site / "fresh_pkg"), str(site / "fresh_pkg-1.0.dist-info")], check=True)
    fourth = engine.call_sync("env", ctx, {}, timeout=60)
    assert fourth["files"] == first["files"] and not os.path.exists(os.path.join(local, "fresh_pkg"))


def test_traceback_inside_a_library_lands_on_the_mirror_file(engine, make_project):
    python = env_python()
    proj = make_project(target={"python": str(python)})
    ctx = {"cwd": str(proj.root)}
    proj.write("main.py", "import more_itertools\n\nmore_itertools.one([])\n")
    data = engine.call_sync("env", ctx, {}, timeout=120)
    run = engine.call_sync("run", ctx, {"cmd": f"{python} main.py"}, timeout=60)
    ex = wait_for(lambda: next((e for e in events(engine, "RemoteDevRunExit") if e["id"] == run["id"]), None), 60)
    assert ex["code"] == 1
    items = engine.call_sync("quickfix", ctx, {"id": run["id"]})["quickfix"]
    more = os.path.join(mirrored(data, site_packages(python)), "more_itertools", "more.py")
    files = [i.get("filename") for i in items]
    assert files[0] == str(proj.root / "main.py") and more in files, items
    inner = items[-1]
    assert inner["filename"] == more and inner["type"] == "E" and "ValueError" in inner["text"], items


def test_an_editable_install_outside_the_project_is_mirrored(engine, make_project, tmp_path):
    python = fresh_env(tmp_path / "venv")
    lib = tmp_path / "corp-lib"                      # the cluster's own package, beside the project
    (lib / "corp").mkdir(parents=True)
    (lib / "corp" / "__init__.py").write_text("def shard(n):\n    return n % 4\n")
    (lib / "README.md").write_text("not a package\n")
    (lib / "pyproject.toml").write_text('[build-system]\nrequires = ["setuptools>=64"]\n'
                                        'build-backend = "setuptools.build_meta"\n'
                                        '[project]\nname = "corp"\nversion = "0.1"\n'
                                        '[tool.setuptools]\npackages = ["corp"]\n')
    proj = make_project(target={"python": str(python)})
    ctx = {"cwd": str(proj.root)}
    before = engine.call_sync("env", ctx, {}, timeout=120)
    editable_install(python, lib, tmp_path / "dist")
    data = engine.call_sync("env", ctx, {}, timeout=120)
    assert data["changed"] > 0 and str(lib / "corp") in data["remotes"]
    top = data["paths"][data["remotes"].index(str(lib / "corp"))]
    assert top not in before["paths"]
    # the import folder holds the package itself, as a type checker wants it; nothing else of the repo
    assert (Path(top) / "corp" / "__init__.py").read_text().startswith("def shard")
    assert sorted(os.listdir(top)) == ["corp"]


def test_the_cli_prints_the_mirror_folders(make_project, tmp_path):
    python = fresh_env(tmp_path / "venv")
    proj = make_project(target={"python": str(python)})
    out = subprocess.run([sys.executable, "-m", "remote_dev.cli", "-C", str(proj.root), "env"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stderr == "", out.stderr
    paths = out.stdout.split()
    assert paths and all(os.path.isdir(p) for p in paths)
    assert any(os.path.isfile(os.path.join(p, "os.py")) for p in paths)    # the stdlib


def test_the_mapping_takes_library_frames_to_the_mirror_longest_folder_first(tmp_path):
    from remote_dev.mapping import PathMapping

    stdlib, nested = tmp_path / "m" / "lib-1", tmp_path / "m" / "dyn-2"
    (stdlib / "json").mkdir(parents=True)
    (stdlib / "json" / "decoder.py").write_text("")
    (nested / "x.py").parent.mkdir(parents=True)
    (nested / "x.py").write_text("")
    libs = (("/usr/lib/python3.11", str(stdlib)), ("/usr/lib/python3.11/lib-dynload", str(nested)))
    m = PathMapping(tmp_path / "proj", "/srv/proj", None, libs)
    assert m.to_local("/srv/proj/main.py") == str(tmp_path / "proj" / "main.py")
    assert m.to_local("/usr/lib/python3.11/json/decoder.py") == str(stdlib / "json" / "decoder.py")
    assert m.to_local("/usr/lib/python3.11/lib-dynload/x.py") == str(nested / "x.py")
    assert m.to_local("/usr/lib/python3.11/not_mirrored.py") is None        # stays a text entry
    assert m.to_local("/usr/lib/python3.110/json/decoder.py") is None
    assert [d["remoteRoot"] for d in m.dap_path_mappings()] == \
        ["/srv/proj", "/usr/lib/python3.11/lib-dynload", "/usr/lib/python3.11"]
    assert [d["remoteRoot"] for d in PathMapping(tmp_path, "/srv/proj", "/workspace", libs)
            .dap_path_mappings(in_container=True)][0] == "/workspace"
