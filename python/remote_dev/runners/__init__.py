"""Runners: how a command becomes a detached run on the target.

A runner turns a run (its id and the command line to execute) into the spec the agent
starts (``spec``), may add quickfix entries of its own (``extra_quickfix``, a failed image
build), may name a known failure of itself in one line (``diagnose``) and adds its checks to
:checkhealth (``health``).  What features used to branch on by the runner's name are its
capabilities (base.py): whether runs are in a container, how a debug run starts (or that
debugging is refused), whether it honours a Launch's mounts and published ports, what
:checkhealth probes, what program a shell runs.  Runners know nothing of debugging: a
feature that needs more than the plain command hands them a ``Launch``.

RUNNERS is the registry, keyed as ``runner = "..."`` in .remote-dev.toml (the engine checks
every target's kind against it when it loads the file): a new kind is one file in this
folder and one line below.
"""

from __future__ import annotations

from ..config import check_runner
from ..engine import TargetSession
from ..mapping import PathMapping
from .base import BOOTSTRAP, DIRECT, Launch, ProjectView, Runner
from .container import ContainerRunner
from .process import ProcessRunner
from .slurm import SlurmRunner

RUNNERS: dict[str, type[Runner]] = {
    "process": ProcessRunner,
    "container": ContainerRunner,
    "slurm": SlurmRunner,
}

__all__ = ["BOOTSTRAP", "DIRECT", "RUNNERS", "Launch", "ProjectView", "Runner", "path_mapping", "runner_of"]


def runner_of(sess: TargetSession) -> Runner:
    """The session's runner (one per target connection); an unknown kind is one line naming
    the file, the key and the known kinds."""
    def make() -> Runner:
        t = sess.target
        check_runner(sess.project.config, RUNNERS)
        return RUNNERS[t.runner](t)
    return sess.state(Runner, make)


def path_mapping(sess: TargetSession) -> PathMapping:
    """Local <-> remote <-> container paths of the session's target (the container side
    when its runner runs in one)."""
    root = sess.remote_root or sess.target.remote_root
    return PathMapping(sess.project.config.root, root, runner_of(sess).container_root())
