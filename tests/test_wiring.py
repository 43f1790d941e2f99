"""Explicit wiring: every registration one feature makes into another is in wiring.py, by
name; no feature writes into another's registry, and none imports another only to reach
into it (alloc knows nothing of kernels)."""
from __future__ import annotations

import ast
import re
from pathlib import Path

PKG = Path(__file__).resolve().parent.parent / "python" / "remote_dev"
REGISTRIES = re.compile(r"\b(STATUS_PARTS|LAUNCHERS|ON_END)\[[^\]]+\]\s*=")


def test_registrations_are_in_wiring_by_name_in_order():
    from remote_dev import actions  # noqa: F401 - brings the wiring in, as front-ends do
    from remote_dev import alloc, kernels, services
    from remote_dev.status import STATUS_PARTS

    assert list(STATUS_PARTS) == ["services", "alloc"]
    assert services.LAUNCHERS == {"alloc": alloc.launcher}
    assert alloc.ON_END == {"kernel": kernels.alloc_ended}


def test_no_feature_registers_into_another_outside_wiring():
    found = []
    for path in PKG.rglob("*.py"):
        if path.name == "wiring.py":
            continue
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if REGISTRIES.search(line):
                found.append(f"{path.relative_to(PKG)}:{n}: {line.strip()}")
    assert not found, "\n".join(found)


def test_alloc_does_not_reach_into_kernels():
    tree = ast.parse((PKG / "alloc.py").read_text())
    names = {a.name for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) for a in node.names}
    assert "kernels" not in names


def test_the_kernel_push_is_where_the_other_pushes_are():
    assert "do_push" not in (PKG / "kernels.py").read_text()
    assert (PKG / "actions.py").read_text().count("sync.do_push(") >= 4
