"""The agent's half of :RemoteEnv (agent/remote/envscan.py), called in-process on real
folders and a real interpreter: which files a mirror holds, what the stamp sees, and the
blob of a batch read."""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import pytest

from remote_dev.agent import protocol as P
from remote_dev.agent.remote import envscan
from remote_dev.agent.remote.common import AgentError


def tree(base: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        p = base / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
    return base


def test_list_keeps_sources_stubs_markers_and_metadata_only(tmp_path):
    root = tree(tmp_path / "site-packages", {
        "pkg/__init__.py": "x = 1\n", "pkg/core.pyi": "x: int\n", "pkg/py.typed": "",
        "pkg/_ext.cpython-311-x86_64-linux-gnu.so": "\0", "pkg/__pycache__/core.cpython-311.pyc": "\0",
        "pkg/data.json": "{}", "pkg-1.0.dist-info/METADATA": "Name: pkg\n", "pkg-1.0.dist-info/RECORD": "",
        "pkg-1.0.dist-info/LICENSE": "MIT", "editable.pth": "/somewhere\n", ".hidden/x.py": "",
    })
    (listing,) = envscan.env_list([str(root)], [])
    assert sorted(rel for rel, _, _ in listing) == [
        "editable.pth", "pkg-1.0.dist-info/METADATA", "pkg-1.0.dist-info/RECORD", "pkg/__init__.py",
        "pkg/core.pyi", "pkg/py.typed"]
    sizes = {rel: size for rel, size, _ in listing}
    assert sizes["pkg/__init__.py"] == 6


def test_list_leaves_nested_roots_install_folders_and_the_project_to_their_own(tmp_path):
    stdlib = tree(tmp_path / "lib", {
        "os.py": "", "lib-dynload/x.py": "", "site-packages/base_only.py": "", "proj/main.py": ""})
    listing = envscan.env_list([str(stdlib), str(stdlib / "lib-dynload")], [str(stdlib / "proj")])
    assert [rel for rel, _, _ in listing[0]] == ["os.py"]
    assert [rel for rel, _, _ in listing[1]] == ["x.py"]


def test_probe_is_the_interpreters_sys_path_and_its_stamp_sees_installs(tmp_path):
    extra = tmp_path / "extra"
    extra.mkdir()
    project = tmp_path / "proj"
    project.mkdir()
    env = {"PYTHONPATH": f"{extra}:{project}"}
    probe = envscan.env_probe(sys.executable, env, [str(project)])
    assert probe["paths"][0] == str(extra) and str(project) not in probe["paths"]
    assert any(p.endswith("site-packages") for p in probe["paths"])
    assert envscan.env_probe(sys.executable, env, [str(project)])["stamp"] == probe["stamp"]
    time.sleep(0.01)
    (extra / "newpkg").mkdir()                      # what pip does: a new folder
    after = envscan.env_probe(sys.executable, env, [str(project)])["stamp"]
    assert after != probe["stamp"]
    (extra / "dev.pth").write_text("/x\n")          # an editable install
    assert envscan.env_probe(sys.executable, env, [str(project)])["stamp"] != after


def test_probe_of_a_missing_interpreter_says_which(tmp_path):
    with pytest.raises(AgentError) as e:
        envscan.env_probe(str(tmp_path / "nope" / "python"), {}, [])
    assert "nope/python" in e.value.message


def test_read_packs_the_files_and_says_which_went(tmp_path):
    root = tree(tmp_path / "r", {"a.py": "A" * 5000, "b/c.pyi": "c: int\n"})
    fmt, blob = envscan.env_read(str(root), ["a.py", "gone.py", "b/c.pyi"], 1e6)
    assert fmt == P.ZLIB and len(blob) < 5000          # a slow link: compressed
    got = P.unpack_files(P.decompress(fmt, blob))
    assert [(rel, size) for rel, size, _, _ in got] == [("a.py", 5000), ("gone.py", -1), ("b/c.pyi", 7)]
    assert bytes(got[0][3]) == b"A" * 5000 and got[1][3] is None
    assert got[0][2] == os.stat(root / "a.py").st_mtime_ns
    fmt, _ = envscan.env_read(str(root), ["a.py"], None)
    assert fmt == P.RAW                                 # a fast link: as it is


def test_read_refuses_paths_outside_its_root(tmp_path):
    root = tree(tmp_path / "r", {"a.py": ""})
    (tmp_path / "secret").write_text("no")
    with pytest.raises(AgentError):
        envscan.env_read(str(root), ["../secret"], None)



@pytest.mark.parametrize("formats", [[P.ZLIB], [P.BZ2]])
def test_the_containers_program_made_of_this_module_runs_on_a_plain_python(tmp_path, formats):
    """A container's env is read by one program built from this module's text and
    protocol.py's, their imports rewritten (envsource.driver_script): run here by a
    python3 that has neither package, a probe and a compressed read work -- an import the
    rewrite does not know fails here, not only where podman is."""
    import json
    import subprocess

    from remote_dev.envsource import driver_script

    script = tmp_path / "driver.py"
    script.write_text(driver_script())
    root = tree(tmp_path / "r", {"a.py": "import os\n" * 2000})

    def run(op, args):
        return subprocess.run([sys.executable, "-I", str(script), op, json.dumps(args)], cwd=tmp_path,
                              capture_output=True, timeout=60)
    probe = run("probe", {"exclude": []})
    assert probe.returncode == 0, probe.stderr.decode()
    assert json.loads(probe.stdout)
    read = run("read", {"root": str(root), "rels": ["a.py"], "link": 1e6, "formats": formats})
    assert read.returncode == 0, read.stderr.decode()
    fmt, _, blob = read.stdout.partition(b"\n")
    assert fmt.decode() == formats[0]
    (rel, size, _, data), = P.unpack_files(P.decompress(fmt.decode(), blob))
    assert (rel, size, bytes(data)) == ("a.py", 20000, b"import os\n" * 2000)
