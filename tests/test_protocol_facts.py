"""Facts both sides share have one home, agent/protocol.py: no other module (local or
agent) spells a run or service state, a marker of the environment or a name of the agent's
cache layout, and Lua keeps no copy of the live states (payloads carry `live`)."""
from __future__ import annotations

import ast
import re
from pathlib import Path

from remote_dev.agent import protocol as P

REPO = Path(__file__).resolve().parent.parent
PKG = REPO / "python" / "remote_dev"
HOME = PKG / "agent" / "protocol.py"
BOOT = PKG / "agent" / "remote" / "debug_boot.py"   # uploaded on its own: it cannot import protocol

STATES = set(P.LIVE_STATES) | set(P.ENDED_STATES)
MARKERS = {P.RUN_ID_ENV, P.ALLOC_ENV, P.DEBUG_ENV, P.DEBUG_HOST_ENV, P.DEBUGPY_ENV, P.DEBUG_STOP_ENV,
           P.DEBUG_WAIT_MAX_ENV, P.DEBUG_TOKEN_ENV, P.DEBUG_GUARD_ENV}
FILES = {P.STEP_FILE, P.KERNEL_FILE}
# a shared folder below the cache folder spelled out instead of run_dir / service_dir / *_DIR
LAYOUT = re.compile(r"cache_dir(\"\]|\(\))\s*,\s*\"(%s)\"" % "|".join(map(re.escape, (P.RUNS_DIR, P.SERVICES_DIR,
                                                                                          P.ALLOCS_DIR))))


def state_uses(tree: ast.AST) -> set[int]:
    """String constants used as a state: compared (also inside a tuple compared against),
    a dict's "state" value, or a positional argument of a call.  (A dict key, a subscript
    such as info["stopped"] or a get("pending") names a field, not a state.)"""
    out: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Compare):
            for side in [node.left, *node.comparators]:
                items = side.elts if isinstance(side, (ast.Tuple, ast.List, ast.Set)) else [side]
                out.update(id(i) for i in items)
        elif isinstance(node, ast.Dict):
            out.update(id(v) for k, v in zip(node.keys, node.values)
                       if isinstance(k, ast.Constant) and k.value == "state")
        elif isinstance(node, ast.Call) and not (isinstance(node.func, ast.Attribute)
                                                 and node.func.attr in ("get", "pop", "setdefault")):
            out.update(id(a) for a in node.args)   # (a dict's get names a field)
    return out


def docstrings(tree: ast.AST) -> set[int]:
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = getattr(node, "body", [])
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                out.add(id(body[0].value))
    return out


def shared_literals(path: Path) -> list[str]:
    text = path.read_text()
    tree = ast.parse(text)
    skip = docstrings(tree)
    as_state = state_uses(tree)
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Constant) or not isinstance(node.value, str) or id(node) in skip:
            continue
        v = node.value
        if (v in STATES and id(node) in as_state) or v in FILES or any(m in v for m in MARKERS):
            found.append(f"{path.relative_to(REPO)}:{node.lineno}: {v!r}")
    for n, line in enumerate(text.splitlines(), 1):
        if LAYOUT.search(line):
            found.append(f"{path.relative_to(REPO)}:{n}: {line.strip()}")
    return found


def test_no_shared_fact_is_spelled_outside_protocol():
    found = []
    for path in sorted(PKG.rglob("*.py")):
        if path not in (HOME, BOOT):
            found += shared_literals(path)
    assert not found, "\n".join(found)


def test_the_check_finds_what_it_is_for(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text('"""running is fine in a docstring"""\n'
                   'x = info.get("state") in ("starting", "running")\n'
                   'env = {"REMOTE_DEV_ALLOC": a}\n'
                   'p = posixpath.join(sess.hello["cache_dir"], "runs", rid)\n')
    bad.write_text(bad.read_text() + 'ok = info["stopped"] or {"pending": 1}\n')
    found = sorted(f.split(": ", 1)[1] for f in shared_literals_at(bad))
    assert found == sorted(["'starting'", "'running'", "'REMOTE_DEV_ALLOC'",
                            'p = posixpath.join(sess.hello["cache_dir"], "runs", rid)'])


def shared_literals_at(path: Path) -> list[str]:
    global REPO
    saved, REPO = REPO, path.parent
    try:
        return shared_literals(path)
    finally:
        REPO = saved


def test_the_debug_bootstrap_reads_the_names_protocol_gives():
    text = BOOT.read_text()
    for name in (P.DEBUG_ENV, P.DEBUG_HOST_ENV, P.DEBUGPY_ENV, P.DEBUG_STOP_ENV, P.DEBUG_WAIT_MAX_ENV,
                 P.DEBUG_TOKEN_ENV, P.DEBUG_GUARD_ENV):
        assert f'"{name}"' in text, name


def test_lua_keeps_no_copy_of_the_live_states():
    for path in (REPO / "lua").rglob("*.lua"):
        text = path.read_text()
        assert "LIVE_STATES" not in text and "is_live" not in text, path
        assert not re.search(r"state\s*[~=]=\s*'(starting|running|pending)'", text), path


def test_payloads_carry_live():
    from remote_dev.runs import RunRecord

    for state in STATES:
        rec = RunRecord(id="r", target="t", cmd="c", root="/", runner="process", created=0.0, state=state)
        assert rec.summary()["live"] is P.is_live(state)
