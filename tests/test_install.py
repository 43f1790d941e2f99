"""What a fresh install gets: the locked versions (locks/, made by scripts/lock), nothing of a
library's noise on the person's screen, and :checkhealth saying when the packages differ
from the lock."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

try:
    import tomllib
except ImportError:   # Python < 3.11
    import tomli as tomllib

from packaging.markers import Marker
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from remote_dev import health

REPO = Path(__file__).resolve().parent.parent
LOCKS = REPO / "locks"
PIN = re.compile(r"^([A-Za-z0-9_.\-]+)==([^\s;]+)\s*(?:;\s*([^\\]+?))?\s*\\?$")


def pins(lock: Path) -> dict[str, str]:
    """{package: version} a lock asks for on this Python (its markers evaluated)."""
    out = {}
    for line in lock.read_text().splitlines():
        found = PIN.match(line)
        if found and (not found.group(3) or Marker(found.group(3)).evaluate()):
            out[canonicalize_name(found.group(1))] = found.group(2)
    return out


def test_the_locks_cover_every_dependency_of_pyproject():
    """A dependency added to pyproject.toml without `scripts/lock` fails here, not on a new
    user's machine."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    host, test = pins(LOCKS / "host.txt"), pins(LOCKS / "test.txt")
    for spec in project["dependencies"]:
        req = Requirement(spec)
        if req.marker is None or req.marker.evaluate():
            name = canonicalize_name(req.name)
            assert name in host and name in test, f"{name} is not in locks/host.txt and locks/test.txt: run scripts/lock"
            assert req.specifier.contains(host[name], prereleases=True), (name, host[name], str(req.specifier))
    for spec in project["optional-dependencies"]["test"]:
        req = Requirement(spec)
        name = canonicalize_name(req.name)
        assert name in test and req.specifier.contains(test[name], prereleases=True), \
            f"{spec} is not satisfied by locks/test.txt: run scripts/lock"
    assert "debugpy" in pins(LOCKS / "remote-debugpy.txt") or "debugpy" in (LOCKS / "remote-debugpy.txt").read_text()


def test_the_venv_holds_exactly_the_locked_versions():
    """scripts/setup (through scripts/install-host --test) installed locks/test.txt as it is."""
    from importlib.metadata import distributions

    want = pins(LOCKS / "test.txt")
    have = {canonicalize_name(d.metadata["Name"]): d.version for d in distributions()}
    have.pop("remote-dev", None)
    differ = {n: (have.get(n), v) for n, v in want.items() if have.get(n) != v}
    extra = sorted(set(have) - set(want) - {"pip", "setuptools"})
    assert not differ and not extra, f"differ (have, locked): {differ}; not in the lock: {extra}"
    lock, installed = health.read_locked()
    assert lock == "locks/test.txt" and installed


def test_health_names_the_versions_and_says_when_they_differ(tmp_path, monkeypatch):
    items = health.local_health()
    texts = [i["text"] for i in items]
    assert any(re.match(r"asyncssh \S+ \(locked\)$", t) for t in texts), texts
    assert any(t.startswith("all ") and "tested versions of locks/test.txt" in t for t in texts), texts
    assert any(t.startswith("debugpy uploaded to older remote Pythons: 1.8.") for t in texts), texts
    # someone upgrades a package by hand: the lock no longer matches what is there
    lock, installed = health.read_locked()
    changed = tmp_path / "locked.txt"
    changed.write_text(f"# {lock}\n" + "".join(f"{n}=={'0.0.1' if n == 'asyncssh' else v}\n"
                                               for n, v in installed.items()))
    monkeypatch.setattr(health, "LOCKED", changed)
    items = {i["text"]: i["level"] for i in health.local_health()}
    warned = [t for t, level in items.items() if level == "warn" and "differ from locks/test.txt" in t]
    assert len(warned) == 1 and "asyncssh" in warned[0] and "(locked 0.0.1)" in warned[0], items
    assert any(t.startswith("asyncssh ") and "(the lock says 0.0.1)" in t for t in items), items


NOISY = '''\
import warnings

warnings.warn("old thing", FutureWarning)


def again():
    warnings.warn("old thing", FutureWarning)


again()
warnings.warn("another thing\\nover two lines", UserWarning)
'''


def test_library_warnings_go_to_the_log_once_and_ours_stay_on_screen(tmp_path):
    lib = tmp_path / "lib"
    (lib / "noisylib").mkdir(parents=True)
    (lib / "noisylib" / "__init__.py").write_text(NOISY)
    state = tmp_path / "state"
    code = (f"import sys, warnings\nsys.path.insert(0, {str(lib)!r})\n"
            "import remote_dev\nimport noisylib\n"
            "warnings.warn_explicit('ours speaks', UserWarning, remote_dev.__file__, 1)\n"
            "from remote_dev.engine import setup_logging\nsetup_logging()\n"
            "warnings.warn_explicit('late library word', UserWarning, noisylib.__file__, 3)\n")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                         env={"XDG_STATE_HOME": str(state), "PATH": "/usr/bin:/bin"})
    assert res.returncode == 0, res.stderr
    assert "ours speaks" in res.stderr and "thing" not in res.stderr and "late" not in res.stderr, res.stderr
    logged = [ln for ln in (state / "remote-dev" / "remote-dev.log").read_text().splitlines() if "a library warned" in ln and "noisylib" in ln]
    assert len(logged) == 3, logged
    assert "FutureWarning: old thing" in logged[0] and "noisylib" in logged[0]
    assert logged[1].endswith("UserWarning: another thing over two lines")
    assert logged[2].endswith("UserWarning: late library word")


def test_the_cli_on_a_broken_config_prints_its_one_line(tmp_path):
    """The installed command (console script of the venv), as a user calls it."""
    (tmp_path / ".remote-dev.toml").write_text("targets = 3\n")
    cli = Path(sys.executable).with_name("remote-dev")
    res = subprocess.run([str(cli), "status"], cwd=tmp_path, capture_output=True, text=True, timeout=60,
                         env={"XDG_STATE_HOME": str(tmp_path / "state"), "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)})
    assert res.returncode == 2
    assert res.stderr.splitlines() == [f"remote-dev: {tmp_path / '.remote-dev.toml'}: targets: must be a table "
                                       f"([targets.NAME] tables), not a whole number (3)"], res.stderr
