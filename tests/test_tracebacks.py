"""Tests for remote_dev.tracebacks.

Most inputs are produced by really running failing programs (and pytest) in a
throw-away project with the interpreter running these tests, so the parser is
checked against what Python actually prints.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from remote_dev.tracebacks import ipython_traceback, parse

REMOTE_ROOT = "/remote/root"


# --------------------------------------------------------------------------
# helpers


def write_project(root: Path, files: Dict[str, str]) -> None:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def line_of(root: Path, name: str, marker: str) -> int:
    """1-based number of the line of ``name`` containing ``marker``."""
    lines = (root / name).read_text().splitlines()
    hits = [i for i, line in enumerate(lines, 1) if marker in line]
    assert len(hits) == 1, (name, marker, hits)
    return hits[0]


def child_env() -> Dict[str, str]:
    """The environment without settings that change how tracebacks look."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("PYTHON", "PYTEST", "HYPOTHESIS"))
        and k not in ("NO_COLOR", "FORCE_COLOR", "PY_COLORS")
    }
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    return env


def run(root: Path, *args: str) -> str:
    """Run ``python *args`` in ``root``; return stdout+stderr of the failed run."""
    proc = subprocess.run(
        [sys.executable, *args],
        cwd=root,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=child_env(),
        timeout=120,
    )
    assert proc.returncode != 0, proc.stdout
    return proc.stdout


def to_local_for(root: Path):
    """Like the plugin's mapping: the remote working directory is the project.

    Paths under the project (as it is on this machine, or rewritten to
    REMOTE_ROOT to simulate a remote checkout) and relative paths map into
    the project; everything else (stdlib, site-packages) is outside.
    """
    local = str(root)

    def to_local(path: str) -> Optional[str]:
        if path.startswith(REMOTE_ROOT + "/"):
            return local + path[len(REMOTE_ROOT):]
        if path.startswith(local + os.sep):
            return path
        if not path.startswith("/"):
            return os.path.normpath(os.path.join(local, path))
        return None

    return to_local


def as_remote(text: str, root: Path) -> str:
    return text.replace(str(root), REMOTE_ROOT)


def shape(entries: List[dict], root: Path) -> List[tuple]:
    """(relative file, line, type) per project entry, ("outside",) otherwise."""
    result = []
    for entry in entries:
        if "filename" in entry:
            rel = os.path.relpath(entry["filename"], root)
            result.append((rel, entry["lnum"], entry["type"]))
        else:
            assert entry["valid"] == 0 and set(entry) == {"text", "valid"}
            result.append(("outside",))
    return result


# --------------------------------------------------------------------------
# Python tracebacks

NESTED = {
    "main.py": (
        "from pkg.sub import mod\n"
        "\n"
        "\n"
        "def run():\n"
        '    return mod.load_config("{not json")  # CALL_LOAD\n'
        "\n"
        "\n"
        "run()  # CALL_RUN\n"
    ),
    "pkg/__init__.py": "",
    "pkg/sub/__init__.py": "",
    "pkg/sub/mod.py": (
        "from pkg.sub import util\n"
        "\n"
        "\n"
        "def load_config(text):\n"
        "    data = util.decode(text)  # CALL_DECODE\n"
        "    return data\n"
    ),
    "pkg/sub/util.py": (
        "import json\n"
        "\n"
        "\n"
        "def decode(text):\n"
        "    return json.loads(text)  # CALL_JSON\n"
    ),
}


def test_nested_packages_with_stdlib_frames(tmp_path: Path) -> None:
    write_project(tmp_path, NESTED)
    output = as_remote(run(tmp_path, "main.py"), tmp_path)
    assert f'File "{REMOTE_ROOT}/pkg/sub/mod.py"' in output

    entries = parse(output, to_local_for(tmp_path))

    assert shape(entries, tmp_path) == [
        ("main.py", line_of(tmp_path, "main.py", "CALL_RUN"), ""),
        ("main.py", line_of(tmp_path, "main.py", "CALL_LOAD"), ""),
        ("pkg/sub/mod.py", line_of(tmp_path, "pkg/sub/mod.py", "CALL_DECODE"), ""),
        ("pkg/sub/util.py", line_of(tmp_path, "pkg/sub/util.py", "CALL_JSON"), ""),
        ("outside",),  # json/__init__.py loads
        ("outside",),  # json/decoder.py decode
        ("outside",),  # json/decoder.py raw_decode
    ]
    assert entries[0]["text"] == "in <module>: run()  # CALL_RUN"
    assert entries[1]["text"] == 'in run: return mod.load_config("{not json")  # CALL_LOAD'
    assert entries[0]["col"] == 0
    assert re.fullmatch(
        r"/\S+/json/__init__\.py:\d+: in loads: return _default_decoder\.decode\(s\)",
        entries[4]["text"],
    )
    assert "/json/decoder.py:" in entries[6]["text"]
    # The exception goes with the innermost frame, even outside the project.
    assert "json.decoder.JSONDecodeError: Expecting property name" in entries[6]["text"]
    assert entries[6]["text"].endswith("(in raw_decode)")


CHAINED = {
    "main.py": (
        "def parse_port(text):\n"
        "    return int(text)  # INT\n"
        "\n"
        "\n"
        "def load(cfg):\n"
        "    try:\n"
        '        return parse_port(cfg["port"])  # CALL_PARSE\n'
        "    except ValueError as exc:\n"
        '        raise RuntimeError("bad port") from exc  # RAISE_FROM\n'
        "\n"
        "\n"
        "def cleanup():\n"
        '    raise KeyError("lock")  # RAISE_KEY\n'
        "\n"
        "\n"
        "def main():\n"
        "    try:\n"
        '        load({"port": "x"})  # CALL_LOAD\n'
        "    except RuntimeError:\n"
        "        cleanup()  # CALL_CLEANUP\n"
        "\n"
        "\n"
        "main()  # CALL_MAIN\n"
    ),
}


def test_chained_exceptions_both_kinds(tmp_path: Path) -> None:
    write_project(tmp_path, CHAINED)
    output = run(tmp_path, "main.py")
    assert "The above exception was the direct cause of the following exception:" in output
    assert "During handling of the above exception, another exception occurred:" in output

    entries = parse(output, to_local_for(tmp_path))

    def at(marker: str) -> int:
        return line_of(tmp_path, "main.py", marker)

    assert shape(entries, tmp_path) == [
        # ValueError, caught in load
        ("main.py", at("CALL_PARSE"), ""),
        ("main.py", at("INT"), "E"),
        # RuntimeError raised from it, caught in main
        ("main.py", at("CALL_LOAD"), ""),
        ("main.py", at("RAISE_FROM"), "E"),
        # KeyError raised while handling that
        ("main.py", at("CALL_MAIN"), ""),
        ("main.py", at("CALL_CLEANUP"), ""),
        ("main.py", at("RAISE_KEY"), "E"),
    ]
    texts = [e["text"] for e in entries]
    assert texts[1] == "ValueError: invalid literal for int() with base 10: 'x' (in parse_port)"
    assert texts[3] == "RuntimeError: bad port (in load)"
    assert texts[6] == "KeyError: 'lock' (in cleanup)"
    assert texts[4] == "in <module>: main()  # CALL_MAIN"


def test_syntax_error_in_imported_module(tmp_path: Path) -> None:
    write_project(
        tmp_path,
        {
            "main.py": "import pkg.broken  # IMPORT\n",
            "pkg/__init__.py": "",
            "pkg/broken.py": "x = 1\n\ndef f(:\n    pass\n",
        },
    )
    output = run(tmp_path, "main.py")

    entries = parse(output, to_local_for(tmp_path))

    assert shape(entries, tmp_path) == [
        ("main.py", 1, ""),
        ("pkg/broken.py", 3, "E"),
    ]
    assert entries[0]["text"] == "in <module>: import pkg.broken  # IMPORT"
    assert entries[1]["text"] == "SyntaxError: invalid syntax"
    assert entries[1]["col"] == 7  # the caret under ":" in "def f(:"


def test_syntax_error_of_the_main_script_has_no_traceback_header(tmp_path: Path) -> None:
    write_project(tmp_path, {"main.py": 'print("ok")\ntext = "abc\n'})
    output = run(tmp_path, "main.py")
    assert "Traceback" not in output

    entries = parse(output, to_local_for(tmp_path))

    assert shape(entries, tmp_path) == [("main.py", 2, "E")]
    # "unterminated string literal" since 3.10, "EOL while scanning ..." before.
    assert entries[0]["text"].startswith("SyntaxError: ")
    assert "string literal" in entries[0]["text"]
    # The caret is under the opening quote since 3.10, after the line before.
    assert entries[0]["col"] == (8 if sys.version_info >= (3, 10) else 12)


@pytest.mark.skipif(sys.version_info < (3, 11), reason="exception groups are new in 3.11")
def test_exception_group(tmp_path: Path) -> None:
    write_project(
        tmp_path,
        {
            "main.py": (
                "def check(n):\n"
                '    raise ValueError(f"bad {n}")  # RAISE_ONE\n'
                "\n"
                "\n"
                "def check_all():\n"
                "    errors = []\n"
                "    for n in range(2):\n"
                "        try:\n"
                "            check(n)  # CALL_CHECK\n"
                "        except ValueError as exc:\n"
                "            errors.append(exc)\n"
                '    raise ExceptionGroup("checks failed", errors)  # RAISE_GROUP\n'
                "\n"
                "\n"
                "check_all()  # CALL_ALL\n"
            )
        },
    )
    output = run(tmp_path, "main.py")
    assert "Exception Group Traceback" in output and "  |   File" in output

    entries = parse(output, to_local_for(tmp_path))

    def at(marker: str) -> int:
        return line_of(tmp_path, "main.py", marker)

    sub = [("main.py", at("CALL_CHECK"), ""), ("main.py", at("RAISE_ONE"), "E")]
    assert shape(entries, tmp_path) == [
        ("main.py", at("CALL_ALL"), ""),
        ("main.py", at("RAISE_GROUP"), "E"),
        *sub,
        *sub,
    ]
    assert entries[1]["text"] == "ExceptionGroup: checks failed (2 sub-exceptions) (in check_all)"
    assert [entries[3]["text"], entries[5]["text"]] == [
        "ValueError: bad 0 (in check)",
        "ValueError: bad 1 (in check)",
    ]


def test_repeated_frames_collapse(tmp_path: Path) -> None:
    write_project(
        tmp_path,
        {
            "main.py": (
                "import sys\n"
                "\n"
                "\n"
                "def down(n):\n"
                "    return down(n + 1)  # RECURSE\n"
                "\n"
                "\n"
                "sys.setrecursionlimit(60)\n"
                "down(0)  # CALL\n"
            )
        },
    )
    output = run(tmp_path, "main.py")
    assert "Previous line repeated" in output

    entries = parse(output, to_local_for(tmp_path))

    recurse = line_of(tmp_path, "main.py", "RECURSE")
    assert shape(entries, tmp_path) == [
        ("main.py", line_of(tmp_path, "main.py", "CALL"), ""),
        ("main.py", recurse, ""),
        ("main.py", recurse, "E"),
    ]
    assert entries[2]["text"].startswith("RecursionError: maximum recursion depth exceeded")


# --------------------------------------------------------------------------
# prefixed output of several ranks / tasks

WORKER = {
    "worker.py": (
        "import multiprocessing\n"
        "import sys\n"
        "\n"
        "from pkg import jobs\n"
        "\n"
        'if __name__ == "__main__":\n'
        "    proc = multiprocessing.Process(target=jobs.work, args=(int(sys.argv[1]),))\n"
        "    proc.start()\n"
        "    proc.join()\n"
        "    sys.exit(proc.exitcode)\n"
    ),
    "pkg/__init__.py": "",
    "pkg/jobs.py": (
        "def work(rank):\n"
        "    if rank == 0:\n"
        "        return 1 / 0  # RANK0\n"
        "    shard = [1, 2]\n"
        "    return shard[rank + 5]  # RANK1\n"
    ),
}


def interleave(outputs: List[List[str]]) -> str:
    lines = []
    for i in range(max(len(o) for o in outputs)):
        lines.extend(o[i] for o in outputs if i < len(o))
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize(
    "prefixes",
    [
        # torchrun --tee 3 / --log-line-prefix-template style
        ("[rank0]: ", "[rank1]: "),
        ("[default0]:", "[default1]:"),
        # srun --label
        ("0: ", "1: "),
    ],
)
def test_rank_prefixed_interleaved_tracebacks(tmp_path: Path, prefixes) -> None:
    write_project(tmp_path, WORKER)
    # Each rank really runs; its output is then prefixed line by line the
    # way torchrun (--tee / --log-line-prefix-template) or srun --label do,
    # and the ranks' lines are interleaved as a shared log would have them.
    outputs = []
    for rank, prefix in enumerate(prefixes):
        text = as_remote(run(tmp_path, "worker.py", str(rank)), tmp_path)
        assert "multiprocessing" in text
        outputs.append([prefix + line for line in text.splitlines()])
    log = interleave(outputs)

    entries = parse(log, to_local_for(tmp_path))

    for rank, prefix in enumerate(prefixes):
        shown = prefix if prefix.endswith(" ") else prefix + " "
        mine = [e for e in entries if e["text"].startswith(shown)]
        assert shape(mine, tmp_path) == [
            ("outside",),  # multiprocessing/process.py _bootstrap
            ("outside",),  # multiprocessing/process.py run
            ("pkg/jobs.py", line_of(tmp_path, "pkg/jobs.py", f"RANK{rank}"), "E"),
        ]
        assert "multiprocessing/process.py:" in mine[0]["text"]
        assert "in _bootstrap" in mine[0]["text"]
    assert len(entries) == 6
    rank0 = [e for e in entries if "filename" in e and e["text"].startswith(prefixes[0].strip())]
    assert rank0[0]["text"].endswith("ZeroDivisionError: division by zero (in work)")


# --------------------------------------------------------------------------
# pytest

PYTEST_PROJECT = {
    "pytest.ini": "[pytest]\n",
    "pkg/__init__.py": "",
    "pkg/helpers.py": (
        "import json\n"
        "\n"
        "\n"
        "def check(x):\n"
        '    assert x == 2, "x must be 2"  # ASSERT\n'
        "\n"
        "\n"
        "def load(text):\n"
        "    return json.loads(text)  # LOADS\n"
    ),
    "tests/test_demo.py": (
        "from pkg import helpers\n"
        "\n"
        "\n"
        "def test_check():\n"
        "    helpers.check(1)  # CALL_CHECK\n"
        "\n"
        "\n"
        "def test_load():\n"
        '    helpers.load("{bad")  # CALL_LOAD\n'
        "\n"
        "\n"
        "def test_compare():\n"
        "    x = [1, 2]\n"
        "    assert x == [1, 3]  # COMPARE\n"
        "\n"
        "\n"
        "def test_ok():\n"
        "    assert True\n"
    ),
}


@pytest.mark.parametrize("tb", ["auto", "long", "short"])
@pytest.mark.parametrize("color", ["no", "yes"])
def test_real_pytest_failures(tmp_path: Path, tb: str, color: str) -> None:
    write_project(tmp_path, PYTEST_PROJECT)
    output = run(tmp_path, "-m", "pytest", "-p", "no:cacheprovider", f"--tb={tb}", f"--color={color}")
    assert ("\x1b[" in output) == (color == "yes")
    assert "FAILED tests/test_demo.py::test_check" in re.sub(r"\x1b\[[0-9;]*m", "", output)

    entries = parse(output, to_local_for(tmp_path))

    def at(name: str, marker: str) -> int:
        return line_of(tmp_path, name, marker)

    test, helpers = "tests/test_demo.py", "pkg/helpers.py"
    assert shape(entries, tmp_path) == [
        (test, at(test, "CALL_CHECK"), ""),
        (helpers, at(helpers, "ASSERT"), "E"),
        (test, at(test, "CALL_LOAD"), ""),
        (helpers, at(helpers, "LOADS"), ""),
        ("outside",),  # json/__init__.py loads
        ("outside",),  # json/decoder.py decode
        ("outside",),  # json/decoder.py raw_decode, the failing frame
        (test, at(test, "COMPARE"), "E"),
    ]
    # The "FAILED path::test - message" summary lines give no entries.
    assert not any("::" in e["text"] for e in entries)
    assert "\x1b" not in repr(entries)
    assert "AssertionError: x must be 2" in entries[1]["text"]
    assert "json.decoder.JSONDecodeError: Expecting property name" in entries[6]["text"]
    assert "assert [1, 2] == [1, 3]" in entries[7]["text"]
    assert "helpers.check(1)" in entries[0]["text"]


def test_pytest_syntax_error_quoted_in_e_lines(tmp_path: Path) -> None:
    write_project(
        tmp_path,
        {
            "pytest.ini": "[pytest]\n",
            "pkg/__init__.py": "",
            "pkg/broken.py": "def f(:\n    pass\n",
            "tests/test_import.py": "def test_import():\n    import pkg.broken  # IMPORT\n",
        },
    )
    for tb in ("long", "short"):
        output = run(tmp_path, "-m", "pytest", "-p", "no:cacheprovider", f"--tb={tb}")

        entries = parse(output, to_local_for(tmp_path))

        assert shape(entries, tmp_path) == [
            ("tests/test_import.py", 2, "E"),
            ("pkg/broken.py", 1, "E"),
        ], tb
        assert "SyntaxError: invalid syntax" in entries[0]["text"]
        assert entries[1]["col"] == 7


# --------------------------------------------------------------------------
# generic file:line[:col]: message lines


def test_python_warning_is_a_generic_location(tmp_path: Path) -> None:
    write_project(
        tmp_path,
        {"main.py": 'import warnings\nwarnings.warn("careful")  # WARN\nraise SystemExit(3)\n'},
    )
    output = run(tmp_path, "main.py")

    entries = parse(output, to_local_for(tmp_path))

    assert shape(entries, tmp_path) == [("main.py", 2, "W")]
    assert entries[0]["text"] == "UserWarning: careful"


def test_warnings_come_after_the_error(tmp_path: Path) -> None:
    """A FutureWarning printed before the traceback (nanoGPT's train.py does): :cfirst
    reaches the error's frames, the warning is a W entry at the end."""
    write_project(
        tmp_path,
        {
            "main.py": "import warnings\nfrom pkg import model\n"
                       "warnings.warn('old API', FutureWarning)  # WARN\n"
                       "model.train()  # CALL\n",
            "pkg/__init__.py": "",
            "pkg/model.py": "def train():\n    raise ValueError('bad shape')  # RAISE\n",
        },
    )
    output = run(tmp_path, "main.py")
    assert output.index("FutureWarning") < output.index("Traceback")

    entries = parse(output, to_local_for(tmp_path))

    assert shape(entries, tmp_path) == [
        ("main.py", line_of(tmp_path, "main.py", "# CALL"), ""),
        ("pkg/model.py", line_of(tmp_path, "pkg/model.py", "# RAISE"), "E"),
        ("main.py", line_of(tmp_path, "main.py", "# WARN"), "W"),
    ]
    assert entries[-1]["text"] == "FutureWarning: old API"


def test_generic_compiler_and_linter_lines(tmp_path: Path) -> None:
    output = "\n".join(
        [
            "src/app.py:3:5: E501 line too long (99 > 79 characters)",
            "src/app.py:10: error: Incompatible return value type  [return-value]",
            "src/app.py:11: note: See https://mypy.rtfd.io",
            "csrc/kernel.cu:42:7: error: expected ';' after expression",
            f"{REMOTE_ROOT}/src/app.py:12:1: warning: unused variable",
            "/usr/include/stdio.h:10:2: error: outside the project",
            # Not locations:
            "http://host:80: connection refused",
            "12:30:45: training step done",
            "localhost:8080: listening",
            "v1.2:3: release notes",
            "    src/app.py:3: indented lines are not taken",
            "FAILED tests/test_app.py::test_main - AssertionError: boom",
            "src/app.py:3:5: E501 line too long (99 > 79 characters)",  # repeated: collapses
        ]
    )

    entries = parse(output, to_local_for(tmp_path))

    assert entries == [
        {
            "filename": str(tmp_path / "src/app.py"),
            "lnum": 3,
            "col": 5,
            "text": "E501 line too long (99 > 79 characters)",
            "type": "",
        },
        {
            "filename": str(tmp_path / "src/app.py"),
            "lnum": 10,
            "col": 0,
            "text": "error: Incompatible return value type  [return-value]",
            "type": "E",
        },
        {
            "filename": str(tmp_path / "src/app.py"),
            "lnum": 11,
            "col": 0,
            "text": "note: See https://mypy.rtfd.io",
            "type": "",
        },
        {
            "filename": str(tmp_path / "csrc/kernel.cu"),
            "lnum": 42,
            "col": 7,
            "text": "error: expected ';' after expression",
            "type": "E",
        },
        {"text": "/usr/include/stdio.h:10: error: outside the project", "valid": 0},
        {
            "filename": str(tmp_path / "src/app.py"),
            "lnum": 3,
            "col": 5,
            "text": "E501 line too long (99 > 79 characters)",
            "type": "",
        },
        {   # a warning: type W, after the rest
            "filename": str(tmp_path / "src/app.py"),
            "lnum": 12,
            "col": 1,
            "text": "warning: unused variable",
            "type": "W",
        },
    ]
    # Only consecutive duplicates collapse.
    twice = parse("a.py:1: x\na.py:1: x\nb.py:2: y\na.py:1: x\n", to_local_for(tmp_path))
    assert [(os.path.basename(e["filename"]), e["lnum"]) for e in twice] == [
        ("a.py", 1),
        ("b.py", 2),
        ("a.py", 1),
    ]


def test_pseudo_files_are_never_mapped(tmp_path: Path) -> None:
    asked = []

    def to_local(path: str) -> Optional[str]:
        asked.append(path)
        return "/anything/" + path

    output = run(tmp_path, "-c", "def f():\n    1/0\nf()\n")
    entries = parse(output, to_local)

    assert asked == []
    texts = [e["text"] for e in entries]
    assert len(texts) == 2
    assert texts[0].startswith("<string>:3: in <module>")  # 3.13+ adds ": f()"
    assert texts[1] == "<string>:2: ZeroDivisionError: division by zero (in f)"


# --------------------------------------------------------------------------
# debugger internals


def test_debugpy_launcher_frames_are_not_the_programs(tmp_path: Path) -> None:
    """An uncaught exception of a program run by debugpy: its traceback starts with runpy,
    debugpy and pydevd frames; only the program's frames become entries."""
    write_project(tmp_path, {"main.py": 'def f(x):\n    raise ValueError("bad %s" % x)  # RAISE\n\n\nf(1)  # CALL\n'})
    output = run(tmp_path, "-Xfrozen_modules=off", "-m", "debugpy", "--listen", "127.0.0.1:0", "main.py")
    assert "pydevd_runpy.py" in output and "debugpy/server/cli.py" in output
    entries = parse(as_remote(output, tmp_path), to_local_for(tmp_path))
    assert shape(entries, tmp_path) == [("main.py", line_of(tmp_path, "main.py", "CALL"), ""),
                                        ("main.py", line_of(tmp_path, "main.py", "RAISE"), "E")]
    assert entries[-1]["text"] == "ValueError: bad 1 (in f)"


# What a program stopped at a breakpoint prints when SIGINT reaches it (seen under debugpy
# 1.8 with its Cython speedups): the launcher's frames, the program's, then pydevd's wait.
INTERRUPTED_AT_A_BREAKPOINT = """\
Traceback (most recent call last):
  File "/usr/lib/python3.11/runpy.py", line 198, in _run_module_as_main
    return _run_code(code, main_globals, None,
           ^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^
  File "/usr/lib/python3.11/runpy.py", line 88, in _run_code
    exec(code, run_globals)
  File "/cache/remote-dev/debugpy/1.8.22-513c/debugpy/__main__.py", line 71, in <module>
    cli.main()
  File "/cache/remote-dev/debugpy/1.8.22-513c/debugpy/server/cli.py", line 568, in main
    run()
  File "/cache/remote-dev/debugpy/1.8.22-513c/debugpy/_vendored/pydevd/_pydevd_bundle/pydevd_runpy.py", \
line 118, in _run_code
    exec(code, run_globals)
  File "main.py", line 5, in <module>
    print('result', f(1), flush=True)
                    ^^^^
  File "main.py", line 3, in f
    y = x + 1
        ^
  File "_pydevd_bundle/pydevd_cython.pyx", line 1704, in _pydevd_bundle.pydevd_cython.SafeCallWrapper.__call__
  File "_pydevd_bundle/pydevd_cython.pyx", line 497, in _pydevd_bundle.pydevd_cython.PyDBFrame.do_wait_suspend
  File "/cache/remote-dev/debugpy/1.8.22-513c/debugpy/_vendored/pydevd/pydevd.py", line 2328, in _do_wait_suspend
    notify_event.wait(wait_timeout)
  File "/usr/lib/python3.11/threading.py", line 331, in wait
    gotit = waiter.acquire(True, timeout)
            ^^^^^^^^^^^^^^^^^^^^^^^^^^^^^
KeyboardInterrupt
Traceback (most recent call last):
  File "/cache/remote-dev/debugpy/1.8.22-513c/debugpy/_vendored/pydevd/pydevd.py", line 2328, in _do_wait_suspend
    notify_event.wait(wait_timeout)
  File "/usr/lib/python3.11/threading.py", line 331, in wait
    gotit = waiter.acquire(True, timeout)
KeyboardInterrupt
Traceback (most recent call last):
  File "main.py", line 9, in <module>
    g()
  File "/usr/lib/python3.11/json/__init__.py", line 346, in loads
    return _default_decoder.decode(s)
ValueError: untouched
"""


def test_the_debuggers_wait_and_what_it_calls_are_dropped(tmp_path: Path) -> None:
    entries = parse(INTERRUPTED_AT_A_BREAKPOINT, to_local_for(tmp_path))
    # the program's frames, the interrupt moved to its innermost one; a traceback that is the
    # debugger's alone is gone; one without debugger frames stays as it was
    assert shape(entries, tmp_path) == [("main.py", 5, ""), ("main.py", 3, "E"), ("main.py", 9, ""), ("outside",)]
    assert entries[1]["text"] == "KeyboardInterrupt (in f)"
    assert entries[3]["text"].endswith("ValueError: untouched (in loads)")
    assert not any("pydevd" in e["text"] or "debugpy" in e["text"] or "threading" in e["text"] for e in entries)


# --------------------------------------------------------------------------
# robustness


TRACEBACK_BITS = [
    "Traceback (most recent call last):",
    '  File "/remote/root/a.py", line 3, in f',
    '  File "b.py", line 99999999999, in <module>',
    '  File "c.py", line 2',
    "    x = foo(bar)",
    "        ^^^",
    "           ~~~^^^",
    "ValueError: bad",
    "KeyboardInterrupt",
    "During handling of the above exception, another exception occurred:",
    "  + Exception Group Traceback (most recent call last):",
    "  | ValueError: x",
    "  +-+---------------- 1 ----------------",
    "    | Traceback (most recent call last):",
    "[rank0]: ",
    "[default1]:",
    "0: ",
    "E   AssertionError: boom",
    ">       assert x",
    "tests/t.py:12: AssertionError",
    "tests/t.py:3: in test_x",
    "tests/t.py:3: ",
    "x.py:1:2: E1 msg",
    "\x1b[31m",
    "\x1b]8;;file://x\x1b\\",
    "\r",
    "|",
    "E",
    ">",
    "",
]

text_strategy = st.one_of(
    st.text(),
    st.lists(st.one_of(st.sampled_from(TRACEBACK_BITS), st.text(max_size=20)), max_size=40).map(
        "\n".join
    ),
    st.lists(st.sampled_from(TRACEBACK_BITS), max_size=40).map("".join),
)


@settings(max_examples=400, deadline=None)
@given(
    text=text_strategy,
    to_local=st.functions(like=lambda path: None, returns=st.none() | st.text(), pure=True),
)
def test_parse_never_raises(text: str, to_local) -> None:
    entries = parse(text, to_local)
    assert isinstance(entries, list)
    for entry in entries:
        assert isinstance(entry, dict)
        if "filename" in entry:
            assert set(entry) == {"filename", "lnum", "col", "text", "type"}
            assert isinstance(entry["filename"], str) and entry["filename"]
            assert isinstance(entry["lnum"], int) and 0 <= entry["lnum"] < 10**9
            assert isinstance(entry["col"], int) and 0 <= entry["col"] < 10**9
            assert entry["type"] in ("E", "")
        else:
            assert set(entry) == {"text", "valid"} and entry["valid"] == 0
        assert isinstance(entry["text"], str)


@pytest.mark.parametrize(
    "line",
    [
        "Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod",
        "2024-05-01 12:30:45,123 INFO [trainer] step 100: loss=0.51 lr=1e-4 http://x:80/y",
        "[rank3]: step 100 loss 0.5 grad 1.0 tokens/s 12345.6 mem 40GB",
        "x",
        "",
        "1:2:3:4:5:6:7:8:9:" * 300,
        'File "' * 800,
        "  | " * 30,
    ],
)
def test_ten_megabytes_of_noise_is_fast(line: str) -> None:
    # A guard against quadratic regexes (minutes on 10 MB), not a performance target:
    # the bound is loose so a loaded CI machine never trips it.
    text = (line + "\n") * (10_000_000 // (len(line) + 1))
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        assert parse(text, lambda path: None) == []
        best = min(best, time.perf_counter() - start)
    assert best < 10.0, best


def test_single_huge_line_is_fast() -> None:
    text = "a.py:1:" + "x" * 10_000_000
    start = time.perf_counter()
    parse(text, lambda path: path)
    assert time.perf_counter() - start < 10.0  # quadratic-blowup guard, as above


# --------------------------------------------------------------------------- a Jupyter kernel's errors (IPython's format)

CHUNKS = [
    "\x1b[31m-----\x1b[39m", "\x1b[31mValueError\x1b[39m    Traceback (most recent call last)",
    "\x1b[36mCell\x1b[39m\x1b[36m \x1b[39m\x1b[32mIn[2]\x1b[39m\x1b[32m, line 3\x1b[39m\n\x1b[32m      1\x1b[39m import pkg.model\n"
    "\x1b[32m      2\x1b[39m \n\x1b[32m----> \x1b[39m\x1b[32m3\x1b[39m pkg.model.load('data')\n",
    "\x1b[36mFile \x1b[39m\x1b[32m~/proj/pkg/model.py:2\x1b[39m, in \x1b[36mload\x1b[39m\x1b[34m(p)\x1b[39m\n"
    "\x1b[32m      1\x1b[39m def load(p):\n\x1b[32m----> \x1b[39m\x1b[32m2\x1b[39m     return parse(p)\n",
    "\x1b[31mValueError\x1b[39m: bad data",
]


def test_ipython_traceback_in_python_format_with_cells_at_their_file():
    text = ipython_traceback(CHUNKS, "ValueError", "bad data", "/home/u", {2: ("/local/main.py", 10)})
    assert text == ('Traceback (most recent call last):\n'
                    '  File "/local/main.py", line 12, in <module>\n'
                    "    pkg.model.load('data')\n"
                    '  File "/home/u/proj/pkg/model.py", line 2, in load\n'
                    '    return parse(p)\n'
                    'ValueError: bad data\n')
    unknown = ipython_traceback(CHUNKS, "ValueError", "bad data", "/home/u", {})
    assert '  File "<cell 2>", line 3, in <module>' in unknown


def test_ipython_syntax_error_keeps_the_caret():
    chunk = ("  \x1b[36mCell\x1b[39m\x1b[36m \x1b[39m\x1b[32mIn[1]\x1b[39m\x1b[32m, line 1\x1b[39m\n"
             "\x1b[31m    \x1b[39m\x1b[31mdef f(:\x1b[39m\n          ^\n\x1b[31mSyntaxError\x1b[39m\x1b[31m:\x1b[39m invalid syntax\n")
    text = ipython_traceback([chunk], "SyntaxError", "invalid syntax", "/h", {1: ("/l/a.py", 5)})
    assert text == '  File "/l/a.py", line 5\n    def f(:\n          ^\nSyntaxError: invalid syntax\n'
