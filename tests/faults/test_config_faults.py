"""Malformed configs generated from the schema (remote_dev.config.SCHEMA and the Lua
option schema): every key with every wrong type, values out of range, paths that escape the
project, broken structure.  Each must give one line naming the file and the key, never an
internal error; a few go through the CLI and Neovim to see what reaches the screen."""
from __future__ import annotations

import datetime
import json
import math
from pathlib import Path
from typing import Any, Iterator

import pytest

from conftest import wait_for
from remote_dev.config import SCHEMA, Key
from remote_dev.errors import RemoteDevError

from .conftest import cli, screen_problems

# One value of each TOML type, by the name config.toml_type gives it.
PALETTE: dict[str, Any] = {
    "string": "text", "integer": 7, "float": 1.5, "boolean": True, "array": [1, 2],
    "strings": ["a"], "table": {"zz": 1}, "date": datetime.date(2024, 1, 2), "tables": [{"a": 1}],
}
ACCEPTS = {   # palette entries each kind of key accepts (a table's content is checked further)
    "string": {"string"}, "integer": {"integer"}, "number": {"integer", "float"}, "boolean": {"boolean"},
    "strings": {"strings"}, "numbers": {"array"}, "env": set(), "table": set(),
}
BASE = {"targets": {"t": {"host": "h", "remote_root": "/srv/p"}}}


def toml(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float) and math.isnan(v):
        return "nan"
    if isinstance(v, float) and math.isinf(v):
        return "inf" if v > 0 else "-inf"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, datetime.date):
        return v.isoformat()
    if isinstance(v, list):
        return "[" + ", ".join(toml(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{ " + ", ".join(f"{json.dumps(k)} = {toml(x)}" for k, x in v.items()) + " }"
    raise TypeError(v)


def flatten(tree: dict[str, Any], prefix: str = "") -> Iterator[tuple[str, Any]]:
    for k, v in tree.items():
        key = f"{prefix}.{json.dumps(k)}" if prefix else json.dumps(k)
        if isinstance(v, dict) and v and not k.startswith("@"):
            yield from flatten(v, key)
        else:
            yield key, v


def render(tree: dict[str, Any]) -> str:
    return "".join(f"{k} = {toml(v)}\n" for k, v in flatten(tree))


def with_value(place: str, key: str, value: Any) -> dict[str, Any]:
    """BASE with key of the table at place (e.g. "targets.*.container") set to value."""
    tree = json.loads(json.dumps(BASE))
    node = tree
    for part in [p for p in place.split(".") if p]:
        part = "t" if part == "*" else part
        node = node.setdefault(part, {})
    node[key] = value
    return tree


def bad_values(spec: Key) -> list[tuple[str, Any]]:
    """(why, value): every wrong type, then what the key's rules refuse."""
    out = [(f"wrong type {name}", v) for name, v in PALETTE.items() if name not in ACCEPTS[spec.kind]]
    if spec.kind == "string":
        out.append(("two lines", "a\nb"))
    if spec.nonempty:
        out += [("empty", ""), ("blank", "   ")]
    if spec.choices:
        out.append(("not a choice", "nope"))
    if spec.kind in ("integer", "number"):
        if spec.low is not None:
            out.append(("below range", spec.low - 1))
        if spec.high is not None:
            out.append(("above range", spec.high + 1))
        if spec.kind == "number":
            out += [("nan", float("nan")), ("infinite", float("inf"))]
    if spec.kind == "numbers":
        out += [("nan", [float("nan")]), ("infinite", [float("inf")])]
        if spec.low is not None:
            out.append(("below range", [spec.low - 1]))
    if spec.path == "inside":
        escapes = ["../x/", "/etc/", "a/../../b", ".", "~/x", "C:\\x"]
        out += [(f"escapes: {e}", [e] if spec.kind == "strings" else e) for e in escapes]
    if spec.path == "absolute":
        out += [("relative", "work"), ("root", "/")]
    if spec.kind == "env":
        out += [("bad name", {"A B": "x"}), ("not strings", {"A": 1})]
    if spec.kind == "table":
        out.append(("unknown key", {"zz": 1}))
    return out


def cases() -> list[tuple[str, str, str]]:
    """(id, file content, the key the message must name)."""
    out = []
    for place, keys in SCHEMA.items():
        for spec in keys:
            full = ".".join(p for p in [place.replace("*", "t"), spec.name] if p)
            for why, value in bad_values(spec):
                tree = with_value(place, spec.name, value)
                out.append((f"{full}: {why}", render(tree), full))
    base = render(BASE)
    structural = [
        ("targets = 3", "targets = 3\n", "targets"),
        ("[[targets]]", '[[targets]]\nhost = "h"\nremote_root = "/srv/p"\n', "targets"),
        ("targets = []", "targets = []\n", "targets"),
        ("[targets] empty", "[targets]\n", "targets"),
        ("targets.t = 3", "targets.t = 3\n", "targets.t"),
        ("[[targets.t]]", '[[targets.t]]\nhost = "h"\n', "targets.t"),
        ("target name with a space", '[targets."a b"]\nhost = "h"\nremote_root = "/srv/p"\n', 'targets.a b'),
        ("target name with a slash", '[targets."a/b"]\nhost = "h"\nremote_root = "/srv/p"\n', "targets.a/b"),
        ("empty target name", '[targets.""]\nhost = "h"\nremote_root = "/srv/p"\n', "targets."),
        ("no host", '[targets.t]\nremote_root = "/srv/p"\n', "targets.t.host"),
        ("no remote_root", '[targets.t]\nhost = "h"\n', "targets.t.remote_root"),
        ("remote_root ~", '[targets.t]\nhost = "h"\nremote_root = "~"\n', "targets.t.remote_root"),
        ("remote_root /", '[targets.t]\nhost = "h"\nremote_root = "/"\n', "targets.t.remote_root"),
        ("default_target unknown", base + 'default_target = "x"\n', "default_target"),
        ("sync = 3", base + "sync = 3\n", "sync"),
        ("[[sync]]", base + "[[sync]]\npull = []\n", "sync"),
        ("run = string", base + 'run = "python x.py"\n', "run"),
        ("unknown top key", base + "bogus = 1\n", "bogus"),
        ("image and dockerfile", base + 'targets.t.container.image = "i"\ntargets.t.container.dockerfile = "D"\n',
         "targets.t.container"),
        ("container runner without image", base + 'targets.t.runner = "container"\n', "targets.t.container"),
    ]
    out += [(f"structure: {name}", text, key) for name, text, key in structural]
    return out


WHOLE_FILE = [   # problems of the file itself: the message names the file
    ("not TOML", b"[targets.t\nhost = 1\n"),
    ("empty file", b""),
    ("not UTF-8", b'[targets.t]\nhost = "\xff\xfe"\nremote_root = "/srv/p"\n'),
    ("a NUL byte", b'[targets.t]\nhost = "h\x00"\n'),
]


def check_message(msg: str, file: Path, key: str | None) -> list[str]:
    problems = []
    if "\n" in msg.strip():
        problems.append("more than one line")
    if "internal error" in msg or "Traceback" in msg:
        problems.append("internal error")
    if not msg.startswith(str(file)):
        problems.append("does not name the file")
    if key is not None and f": {key}: " not in msg and f": {key}." not in msg:
        problems.append(f"does not name the key {key}")
    return problems


def test_malformed_configs_give_one_line_naming_file_and_key(engines, tmp_path, figures):
    eng = engines.new()
    all_cases = [(name, text.encode(), key) for name, text, key in cases()] + \
                [(name, data, None) for name, data in WHOLE_FILE]
    failed = []
    for i, (name, data, key) in enumerate(all_cases):
        root = tmp_path / f"c{i}"
        root.mkdir()
        f = root / ".remote-dev.toml"
        f.write_bytes(data)
        try:
            eng.call_sync("status", {"cwd": str(root)}, timeout=30)
            failed.append(f"{name}: accepted")
            continue
        except RemoteDevError as e:
            msg = e.message
        problems = check_message(msg, f, key)
        if problems:
            failed.append(f"{name}: {', '.join(problems)}: {msg}")
    figures.add("malformed config (from the schema)", "-", len(all_cases), len(failed),
                note=f"{len(all_cases)} configs, each one line naming file and key")
    assert not failed, "\n".join(failed)


def test_a_valid_config_from_the_same_generator_loads(tmp_path):
    """The generator's base config is valid, so each case fails for its one bad value."""
    from remote_dev.config import load_config

    f = tmp_path / ".remote-dev.toml"
    f.write_text(render(BASE) + render({"targets": {"t": {"container": {"image": "i", "workdir": "/w"}}},
                                        "sync": {"pull": ["out/", "./res"]}, "run": {"stop_grace": 0.5}}))
    cfg = load_config(f)
    assert cfg.target().container.workdir == "/w" and cfg.sync.pull == ("out/", "./res")


CLI_CASES = [("targets = 3", "targets = 3\n", "targets"),
             ("pull escapes", render(with_value("sync", "pull", ["../x/"])), "sync.pull"),
             ("port string", render(with_value("targets.*", "port", "22")), "targets.t.port")]


@pytest.mark.parametrize("name,text,key", CLI_CASES, ids=[c[0] for c in CLI_CASES])
def test_cli_shows_one_line(tmp_path, name, text, key):
    from .conftest import FaultProject

    root = tmp_path / "p"
    root.mkdir()
    (root / ".remote-dev.toml").write_text(text)
    proj = FaultProject(root, tmp_path, "", None)  # type: ignore[arg-type]
    for args in (["status"], ["push"]):
        out = cli(proj, *args, state=tmp_path / "state")
        assert out.returncode == 2, out
        assert not screen_problems(out.stderr), out.stderr
        assert check_message(out.stderr.strip().removeprefix("remote-dev: "), root / ".remote-dev.toml", key) == []


def test_neovim_shows_one_message(nvim, tmp_path):
    root = tmp_path / "p"
    root.mkdir()
    (root / ".remote-dev.toml").write_text("[[targets]]\nhost = 'h'\n")
    (root / "a.py").write_text("")
    nvim.open(root, root / "a.py")
    nvim.command("RemoteStatus")
    msgs = wait_for(lambda: nvim.messages(), 20, what="a message")
    assert len(msgs) == 1 and "\n" not in msgs[0], msgs
    assert check_message(msgs[0].removeprefix("remote_dev: "), root / ".remote-dev.toml", "targets") == [], msgs


def lua_cases(nvim) -> list[tuple[str, str]]:
    """(option path, Lua expression of a bad value) for every option of the Lua schema."""
    return nvim.exec_lua("""
      local out = {}
      local wrong = { boolean = 'true', number = '7', string = '"x"', table = '{}', ['function'] = 'print' }
      local function walk(specs, prefix)
        for _, s in ipairs(specs) do
          local name = prefix .. s.name
          for ty, expr in pairs(wrong) do
            if ty ~= s.type then table.insert(out, { name, expr }) end
          end
          if s.type == 'number' then
            for _, expr in ipairs({ '0', '-1', '1.5', '0/0', 'math.huge' }) do table.insert(out, { name, expr }) end
          end
          if s.type == 'string' and s.check then table.insert(out, { name, '"nope"' }) end
          if s.fields then walk(s.fields, name .. '.') end
        end
      end
      walk(require('remote_dev.config').schema, '')
      return out
    """)


def test_setup_options_from_the_lua_schema_are_checked(nvim, figures):
    failed = []
    cases = lua_cases(nvim)
    for name, expr in cases:
        path = name.split(".")
        opts = expr
        for part in reversed(path):
            opts = "{ " + part + " = " + opts + " }"
        err = nvim.exec_lua(f"local ok, err = pcall(require('remote_dev').setup, {opts}); return ok and '' or err")
        if not err or name not in err or "\n" in err:
            failed.append(f"setup({opts}): {err or 'accepted'}")
    nvim.exec_lua("require('remote_dev').setup({})")
    figures.add("malformed setup() options (Lua schema)", "-", len(cases), len(failed))
    assert not failed, "\n".join(failed)
