"""Sync: push the project tree to the target, pull results back.  A pipeline in stages,
one module each, like mutagen's pkg/synchronization/core:

  scan       the local tree: which files count (git, or ignore.Walker), with their stat
  ignore     git's ignore rules without git, the global excludes, sync.exclude / sync.pull
  watch      inotify or watchdog: what may have changed since the last whole-tree scan
  quick      without a watcher: the same from git status and the folders' mtimes
  records    what the last sync left per path (a Record), stored as snapshot + journal
  content    the content hash and the conflict rule (the agent applies the same on the remote)
  reconcile  the one place that decides: pure functions of scan, records, remote state
  transfer   moving content over the agent channel(s): batches, large files, pull reads
  apply      what a sync changes here: records from the agent's answers, pulled files
  problem    the result, per-path problems with reasons, the message and event payload
  state      per-project state: the lock, the scanner, records per target, the save queue
  push, pull the orchestration: scan -> ask the remote -> decide -> transfer -> commit

The public names are the four the actions call.
"""

from __future__ import annotations

from ..engine import Project
from .pull import do_pull
from .push import do_push, push_on_save
from .scan import rel_paths as _rel_paths

__all__ = ["do_pull", "do_push", "push_on_save", "rel_paths"]


def rel_paths(proj: Project, paths: list[str] | None, cwd: str | None) -> list[str] | None:
    """Paths given by the user (absolute, or relative to cwd) as paths relative to the
    project root (None: the whole tree)."""
    return _rel_paths(proj.root, paths, cwd)
