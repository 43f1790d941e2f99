"""A Python environment with the real PyTorch (CPU build) for the torchrun test, made once
per machine in the test bed's cache (beside the podman image), never in the checkout.

`pip install torch==TORCH` takes the wheel this machine kind keeps on disk (its other
requirements come from PyPI at the versions of locks/torch-cpu.txt): about 30 s and 0.9 GB
the first time, nothing after.  It is made only when a test asks for it, so the rest of the
suite never waits for it.
"""
from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

from support.pythons import cached_venv

TORCH = "2.13.0"
LOCK = Path(__file__).resolve().parent.parent.parent / "locks" / "torch-cpu.txt"   # what comes beside it
INSTALL_TIMEOUT = 600


def torch_python(version: str = TORCH) -> tuple[Path | None, str]:
    """(python of an environment with torch==version, "") once it exists, else (None, why)."""
    def gloo(python: Path) -> str:
        check = subprocess.run([str(python), "-c", "import torch.distributed as d; print(d.is_gloo_available())"],
                               capture_output=True, text=True, timeout=300, env={**os.environ, "PYTHONPATH": ""})
        if check.stdout.strip() != "True":
            return f"torch=={version} installed but torch.distributed with gloo is not usable: {check.stderr[-800:]}"
        return ""
    key = f"torch-{version}-{hashlib.sha256(LOCK.read_bytes()).hexdigest()[:12]}"
    return cached_venv(key, Path(sys.executable), [f"torch=={version}", "-c", str(LOCK)], INSTALL_TIMEOUT, gloo)
