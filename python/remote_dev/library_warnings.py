"""Warnings raised inside other packages go to remote-dev.log, never to the person's screen.

A library's warning (asyncssh importing a DSA class that cryptography deprecates, a
``DeprecationWarning`` deep in pyzmq) says nothing the person can act on, yet Python prints
each one on stderr: the CLI's stderr, the Neovim host's.  Once ``install()`` has run (the
package's ``__init__`` calls it, before anything imports asyncssh), such a warning becomes one
line of the log, once per process for each (category, message); warnings whose code is
remote_dev's own keep Python's usual display.  Until the engine opens the log, the lines
wait here (``attach`` writes them).
"""

from __future__ import annotations

import logging
import os
import warnings
from typing import TextIO

_OURS = os.path.dirname(os.path.abspath(__file__)) + os.sep
_MAX_PENDING = 100

_shown: set[tuple[str, str]] = set()
_pending: list[str] = []
_log: logging.Logger | None = None
_python_show = warnings.showwarning


def ours(filename: str) -> bool:
    """A warning whose code is remote_dev's own (its stack level names one of our files)."""
    return os.path.abspath(filename).startswith(_OURS)


def _show(message: Warning | str, category: type[Warning], filename: str, lineno: int,
          file: TextIO | None = None, line: str | None = None) -> None:
    if ours(filename):
        _python_show(message, category, filename, lineno, file, line)
        return
    key = (category.__name__, str(message))
    if key in _shown:
        return
    _shown.add(key)
    text = " ".join(str(message).split())
    entry = f"a library warned ({filename}:{lineno}): {category.__name__}: {text}"
    if _log is not None:
        _log.warning("%s", entry)
    elif len(_pending) < _MAX_PENDING:
        _pending.append(entry)


def install() -> None:
    """Route other packages' warnings into the log (idempotent)."""
    warnings.showwarning = _show


def attach(log: logging.Logger) -> None:
    """From now on write into log, starting with what waited."""
    global _log
    _log = log
    while _pending:
        log.warning("%s", _pending.pop(0))

