"""The fault suite's figures: per fault and remote user, how often it was injected (tried),
how often a guarantee broke (failed), and what stayed behind (partial or temporary files,
processes).  Printed as a table at the end of the session whatever the capture mode, and
written to fault-figures.txt (and .json) in the session's temporary folder; set
REMOTE_DEV_FAULT_FIGURES to a path to get the table there too."""

from __future__ import annotations

import json
import os
import threading
from dataclasses import asdict, dataclass
from pathlib import Path


@dataclass
class Figure:
    fault: str
    user: str
    tried: int
    failed: int
    left: int
    note: str = ""


class Figures:
    def __init__(self) -> None:
        self.rows: list[Figure] = []
        self.lock = threading.Lock()
        self.out_dir: Path | None = None

    def add(self, fault: str, user: str, tried: int, failed: int, left: int = 0, note: str = "") -> Figure:
        fig = Figure(fault, user, tried, failed, left, note)
        with self.lock:
            self.rows.append(fig)
        return fig

    def table(self) -> str:
        if not self.rows:
            return ""
        head = ("fault", "user", "tried", "failed", "left behind", "measured")
        rows = [(r.fault, r.user, str(r.tried), str(r.failed), str(r.left), r.note) for r in self.rows]
        widths = [max(len(x[i]) for x in [head, *rows]) for i in range(len(head))]

        def line(cells: tuple[str, ...]) -> str:
            return "  ".join(c.ljust(w) if i in (0, 1, 5) else c.rjust(w)
                             for i, (c, w) in enumerate(zip(cells, widths))).rstrip()
        return "\n".join([line(head), line(tuple("-" * w for w in widths)), *map(line, rows)])

    def write(self) -> list[Path]:
        text = self.table()
        if not text:
            return []
        written = []
        targets = [self.out_dir / "fault-figures.txt"] if self.out_dir else []
        if os.environ.get("REMOTE_DEV_FAULT_FIGURES"):
            targets.append(Path(os.environ["REMOTE_DEV_FAULT_FIGURES"]))
        for path in targets:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text + "\n")
            path.with_suffix(".json").write_text(json.dumps([asdict(r) for r in self.rows], indent=1))
            written.append(path)
        return written


FIGURES = Figures()
