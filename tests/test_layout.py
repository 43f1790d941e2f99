"""The house rules of ARCHITECTURE.md, checked on the code itself: layers only point down,
no import circles, the remote agent imports nothing of the local package, and no source
file, class or function grows past what a newcomer can read in one sitting."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PKG = REPO / "python" / "remote_dev"

# Lower numbers sit lower; a module may import its own layer or a lower one.
LAYERS = {
    "cli": 5,
    "actions": 4,
    "status": 2,
    "engine": 1,
}
BASE = {"ssh", "login", "master", "rpc", "config", "mapping", "tracebacks", "termtext", "errors", "slurm_errors",
        "agent", "library_warnings"}
FEATURES = 3   # sync, runs, debug, forwards, health, runners and every other module

MAX_FILE_LINES = 600
MAX_FUNCTION_LINES = 80
MAX_CLASS_LINES = 200
LONG_MARK = "Long because"   # a longer function says why in its docstring


def module_name(path: Path) -> str:
    rel = path.relative_to(PKG).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def layer(mod: str) -> int:
    top = mod.split(".")[0]
    if top in LAYERS:
        return LAYERS[top]
    if top in BASE or top == "":
        return 0
    return FEATURES


def imports_of(path: Path) -> set[str]:
    """remote_dev modules imported by a file (absolute names without the prefix)."""
    mod = module_name(path)
    package = mod.split(".") if path.name == "__init__.py" else mod.split(".")[:-1]
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[:len(package) - node.level + 1] if node.level > 1 else package
                target = ".".join(base + ([node.module] if node.module else []))
                names = [target] if node.module else [".".join(base + [a.name]) for a in node.names]
            elif node.module and node.module.startswith("remote_dev"):
                names = [node.module[len("remote_dev."):] if node.module != "remote_dev" else ""]
            else:
                continue
            out.update(n for n in names if n)
        elif isinstance(node, ast.Import):
            out.update(a.name[len("remote_dev."):] for a in node.names if a.name.startswith("remote_dev."))
    return out


def modules() -> dict[str, set[str]]:
    return {module_name(p): imports_of(p) for p in PKG.rglob("*.py")}


def resolve(name: str, known: set[str]) -> str | None:
    """The module an imported name lives in (an imported function names its module)."""
    while name:
        if name in known:
            return name
        name = name.rpartition(".")[0]
    return None


def layer_violations(graph: dict[str, set[str]]) -> list[str]:
    wrong = []
    for mod, deps in graph.items():
        for dep in deps:
            target = resolve(dep, set(graph))
            if target and layer(target) > layer(mod):
                wrong.append(f"{mod} (layer {layer(mod)}) imports {target} (layer {layer(target)})")
    return sorted(wrong)


def circles(graph: dict[str, set[str]]) -> list[str]:
    known = set(graph)
    edges = {m: {t for d in deps if (t := resolve(d, known)) and t != m} for m, deps in graph.items()}
    # a package's __init__ re-exporting its own modules is not a circle
    edges = {m: {t for t in ts if not t.startswith(m + ".")} for m, ts in edges.items()}
    seen: dict[str, int] = {}
    stack: list[str] = []
    found = []

    def visit(m: str) -> None:
        seen[m] = 1
        stack.append(m)
        for t in sorted(edges.get(m, ())):
            if seen.get(t) == 1:
                found.append(" -> ".join(stack[stack.index(t):] + [t]))
            elif t not in seen:
                visit(t)
        stack.pop()
        seen[m] = 2
    for m in sorted(edges):
        if m not in seen:
            visit(m)
    return found


def test_layers_only_point_down():
    wrong = layer_violations(modules())
    assert not wrong, "\n".join(wrong)


def test_no_import_circles():
    found = circles(modules())
    assert not found, "\n".join(found)


def test_the_checks_catch_what_they_are_for():
    graph = {**modules()}
    graph["engine"] = graph["engine"] | {"actions.ACTIONS"}
    assert layer_violations(graph) == ["engine (layer 1) imports actions (layer 4)"]
    assert any(c.startswith("actions") and c.endswith("actions") for c in circles(graph))


def test_the_remote_agent_imports_nothing_of_the_local_package():
    for path in (PKG / "agent" / "remote").rglob("*.py"):
        for dep in imports_of(path):
            assert dep.startswith("agent."), f"{path.relative_to(REPO)} imports remote_dev.{dep}"


def source_files() -> list[Path]:
    return sorted([*PKG.rglob("*.py"), *(REPO / "lua").rglob("*.lua"), *(REPO / "rplugin").rglob("*.py")])


@pytest.mark.parametrize("path", source_files(), ids=lambda p: str(p.relative_to(REPO)))
def test_source_files_stay_readable(path: Path):
    lines = path.read_text().count("\n")
    assert lines <= MAX_FILE_LINES, f"{path.relative_to(REPO)}: {lines} lines (at most {MAX_FILE_LINES}: split it)"


def test_functions_stay_short_or_say_why():
    long = []
    for path in PKG.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = node.end_lineno - node.lineno + 1
                if n > MAX_FUNCTION_LINES and LONG_MARK not in (ast.get_docstring(node) or ""):
                    long.append(f"{path.relative_to(REPO)}:{node.lineno} {node.name}: {n} lines")
    assert not long, "\n".join(long)


def test_classes_stay_readable():
    long = []
    for path in PKG.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef):
                n = node.end_lineno - node.lineno + 1
                if n > MAX_CLASS_LINES:
                    long.append(f"{path.relative_to(REPO)}:{node.lineno} {node.name}: {n} lines (at most "
                                f"{MAX_CLASS_LINES}: split it by what it does)")
    assert not long, "\n".join(long)
