""":RemoteAlloc: a Slurm allocation held for the target; while it is held, runs, debug
runs, shells and kernels of the target are its job steps (``srun --jobid=JOB --overlap``)
on its node, with no queue wait.

The agent keeps the allocation (agent/remote/alloc.py: a holder batch job, its record in
<cache>/allocs/<name>/, per project and target like shells and kernels), so it outlives
Neovim and a new Neovim finds it.  Here: what this Neovim knows of it (``AllocState`` per
target connection), a watcher that asks the agent every POLL_PENDING seconds while it is
queued and every POLL_RUNNING seconds while it runs and fires ``User RemoteDevAlloc`` on
every change of state, the step a run becomes (``run_spec``) and the launcher of shells,
kernels and notebook servers (``AllocLauncher``, registered in wiring.py).

How a run becomes a step: a command that starts with ``srun`` runs as typed on the login
node, as it would in an salloc shell (SLURM_JOB_ID, SLURM_NTASKS, SLURM_NNODES and
SLURM_OVERLAP name the allocation, so it runs all of its tasks); any other command runs as
a one-task step, ``srun --jobid=JOB --overlap --nodes=1 --ntasks=1 /bin/sh -c CMD``, whose
first task writes its job, step and node into the run folder (the run's meta shows them).
"""

from __future__ import annotations

import asyncio
import posixpath
import re
import shlex
import time
from dataclasses import dataclass, field
from typing import Any

from typing import Callable

from . import services
from .agent.protocol import ALLOC_ENV, PENDING, STEP_FILE, is_live, run_dir
from .engine import Engine, Project, TargetSession, log
from .errors import ConnectError, RemoteDevError
from .slurm_errors import explain
from .status import publish_status

POLL_PENDING = 1.0       # seconds between looks at a queued allocation
POLL_RUNNING = 10.0      # ... at a running one (its end by time limit or scancel shows then)
MARKER = ALLOC_ENV   # NAME:JOB, in the environment of every process started for a step
# a command that launches its own steps: `srun ...`, `VAR=x srun ...`, `/usr/bin/srun ...`
SRUN = re.compile(r"^\s*(?:[A-Za-z_][A-Za-z0-9_]*=\S*\s+)*(?:exec\s+)?(?:\S*/)?srun(?:\s|$)")


def parse_left(text: str) -> float | None:
    """squeue's time left (``[D-]HH:MM:SS``, ``MM:SS``) in seconds; None when unlimited."""
    m = re.match(r"^(?:(\d+)-)?(?:(\d+):)?(\d+):(\d+)$", (text or "").strip())
    if not m:
        return None
    days, hours, mins, secs = (int(g or 0) for g in m.groups())
    return float(((days * 24 + hours) * 60 + mins) * 60 + secs)


def clock(seconds: float | None) -> str:
    if seconds is None:
        return "no time limit"
    s = max(0, int(seconds))
    d, rest = divmod(s, 86400)
    return (f"{d}-" if d else "") + f"{rest // 3600}:{rest % 3600 // 60:02d}:{rest % 60:02d} left"


@dataclass
class Allocation:
    name: str
    job: str
    state: str                 # Slurm's: PENDING, RUNNING, ... ; the final one (CANCELLED, TIMEOUT) or ENDED
    live: bool
    reason: str = ""
    nodes: list[str] = field(default_factory=list)
    ntasks: int = 1
    nnodes: int = 1
    addr: str | None = None    # the first node's address as the login node reaches it
    ends_at: float | None = None
    args: list[str] = field(default_factory=list)

    @classmethod
    def from_info(cls, info: dict[str, Any]) -> "Allocation":
        state = info.get("job_state") or ""
        # COMPLETING: it is ending (scancel, its time limit): no step starts in it any more
        live = is_live(info.get("state")) and state != "COMPLETING"
        if not live and not state:
            detail = str(info.get("detail") or "")
            state = detail if detail.isupper() and detail.replace("_", "").isalpha() else "ENDED"
        left = parse_left(info.get("time_left") or "")
        return cls(name=info.get("name", ""), job=str(info.get("job") or "?"),
                   state=state or ("PENDING" if info.get("state") == PENDING else "RUNNING"), live=live,
                   reason=info.get("reason") or "", nodes=list(info.get("nodes") or []),
                   ntasks=int(info.get("ntasks") or 1), nnodes=int(info.get("nnodes") or 1),
                   addr=info.get("addr"), ends_at=time.time() + left if left is not None else None,
                   args=list(info.get("args") or []))

    @property
    def marker(self) -> str:
        """The value of ALLOC_ENV: the allocation's name and job (job ids of two clusters
        served by one login node may be the same)."""
        return f"{self.name}:{self.job}"

    @property
    def running(self) -> bool:
        return self.live and self.state == "RUNNING"

    @property
    def watched(self) -> bool:
        """Its state may still change (queued, running, or ending)."""
        return self.live or self.state == "COMPLETING"

    def time_left(self) -> float | None:
        return None if self.ends_at is None else max(0.0, self.ends_at - time.time())

    def describe(self) -> str:
        if self.state == "PENDING":
            why = f" ({self.reason})" if self.reason not in ("", "None", "(null)") else ""
            return f"job {self.job} PENDING{why}"
        if self.live:
            where = ",".join(self.nodes) or "?"
            return f"job {self.job} {self.state} on {where} ({clock(self.time_left())})"
        if self.state == "COMPLETING":
            return f"job {self.job} ending (Slurm is ending its steps)"
        return f"job {self.job} ended ({self.state})"

    def summary(self, target: str) -> dict[str, Any]:
        left = self.time_left()
        return {"job_id": self.job, "state": self.state, "nodes": self.nodes, "live": self.live,
                "target": target, "detail": self.describe(), "ntasks": self.ntasks, "args": self.args,
                "time_left": round(left) if left is not None else None, "ends_at": self.ends_at}


class AllocState:
    """What this Neovim knows of a target's allocation."""

    def __init__(self) -> None:
        self.current: Allocation | None = None
        self.checked: Any = None          # the connection it was last asked on
        self.at = 0.0                     # when (monotonic)
        self.seen: tuple[str, str] | None = None   # (job, state) last announced
        self.engine: Engine | None = None
        self.watcher: asyncio.Task[None] | None = None
        self.warned: set[tuple[str, float]] = set()   # (job, seconds before its end) told


def state_of(sess: TargetSession) -> AllocState:
    return sess.state(AllocState)


def alloc_name(sess: TargetSession) -> str:
    return services.namespace(sess) + "alloc"


async def refresh(sess: TargetSession, engine: Engine | None = None, found: bool = False,
                  fresh: bool = False) -> Allocation | None:
    """Ask the agent (fresh: Slurm now, for a command of the user's); announce a change of
    state (event, message, status)."""
    st = state_of(sess)
    if engine is not None:
        st.engine = engine
    info = await sess.call("alloc_info", alloc_name(sess), fresh)
    st.checked, st.at = sess.conn, time.monotonic()
    update(sess, Allocation.from_info(info) if info else None, found)
    if st.current is not None:
        warn_of_end(sess, st.current)
    return st.current


def update(sess: TargetSession, a: Allocation | None, found: bool = False) -> None:
    st = state_of(sess)
    st.current = a
    key = (a.job, a.state) if a is not None else None
    first_sight_of_old = st.seen is None and (a is None or not a.live)
    if key == st.seen or first_sight_of_old:
        st.seen = key
        return
    st.seen = key
    engine = st.engine
    if engine is None or a is None:
        return
    t = sess.target.name
    engine.emit("RemoteDevAlloc", {**a.summary(t), "found": found})
    if a.running:
        engine.message(f"allocation on {t}: {a.describe()}" + (" (held already)" if found else "")
                       + f"; runs, shells and kernels of {t} start in it")
    else:
        engine.message(f"allocation on {t}: {a.describe()}", "info" if a.live or a.state == "CANCELLED" else "warn")
    publish_status(engine, sess.project)
    if a.watched and (st.watcher is None or st.watcher.done()):
        st.watcher = engine.loop.create_task(watch(sess))


async def watch(sess: TargetSession) -> None:
    """Follow a live allocation until it ends (its state in status, events on changes)."""
    st = state_of(sess)
    while st.current is not None and st.current.watched:
        await asyncio.sleep(next_look(sess, st.current))
        if sess.project.sessions.get(sess.target.name) is not sess:
            return   # the target's config changed: its new session follows it
        try:
            await refresh(sess)
        except ConnectError:
            continue   # asked again once the host answers
        except RemoteDevError as e:
            log.info("allocation %s: %s", alloc_name(sess), e.message)


def next_look(sess: TargetSession, a: Allocation) -> float:
    """Seconds to the watcher's next look: POLL_PENDING / POLL_RUNNING, sooner when a
    warning of slurm.warn_before falls due before then."""
    if not a.running:
        return POLL_PENDING
    left = a.time_left()
    due = [left - w for w in sess.target.slurm.warn_before if left is not None and left > w]
    return max(0.05, min([POLL_RUNNING, *due]))


def warn_of_end(sess: TargetSession, a: Allocation) -> None:
    """Once per job and threshold of slurm.warn_before (the nearest one crossed): say when
    the allocation ends and what ends with it."""
    st = state_of(sess)
    left = a.time_left()
    engine = st.engine
    if engine is None or left is None or not a.running:
        return
    crossed = [w for w in sess.target.slurm.warn_before if left <= w]
    if not crossed or (a.job, min(crossed)) in st.warned:
        return
    st.warned.update((a.job, w) for w in crossed)
    t = sess.target.name
    proj = sess.project
    going = [f"run {r.id} ({r.cmd})" for r in proj.runs.values()   # type: ignore[attr-defined]
             if r.target == t and is_live(r.state) and r.meta.get("job") == a.job]
    going += [f"{i['kind']} {i['name']}" for i in services.known(sess).items
              if is_live(i.get("state")) and i.get("target", t) == t]
    ending = time.strftime("%H:%M", time.localtime(a.ends_at or time.time()))
    what = ("; ending with it: " + ", ".join(going)) if going else ""
    text = f"allocation on {t}: job {a.job} ends at {ending} ({clock(left)}, its time limit){what}"
    engine.message(text, "warn")


async def current(sess: TargetSession) -> Allocation | None:
    """The target's live allocation (pending or running), or None.  Asked of the agent on a
    new connection, or when no watcher has looked for POLL_RUNNING seconds."""
    if sess.target.runner != "slurm":
        return None
    st = state_of(sess)
    watching = st.watcher is not None and not st.watcher.done()
    if st.checked is None or st.checked is not sess.conn or (not watching and time.monotonic() - st.at > POLL_RUNNING):
        await refresh(sess)
    a = st.current
    return a if a is not None and a.live else None


async def held(sess: TargetSession) -> Allocation | None:
    """The running allocation things of the target start in; None when none is held; an
    error (nothing was started) while it is still queued, asked of Slurm before refusing."""
    a = await current(sess)
    if a is None or a.running:
        return a
    # what is known here may be a poll old (squeue may show it running already): ask Slurm now
    a = await refresh(sess, fresh=True)
    if a is None or not a.live:
        return None
    if a.running:
        return a
    raise RemoteDevError(f"{sess.target.name}: not started: the allocation is not running yet ({a.describe()}); "
                         f"start it again once it runs (User RemoteDevAlloc fires then), or give the allocation "
                         f"up with :RemoteAlloc stop", kind="alloc-pending")


def forget(sess: TargetSession) -> None:
    """The allocation may have ended (a step found it gone): ask again before the next use."""
    state_of(sess).checked = None


# --------------------------------------------------------------------------- steps


def srun_argv(a: Allocation, name: str, pty: bool = False) -> list[str]:
    return ["srun", f"--jobid={a.job}", "--overlap", "--nodes=1", "--ntasks=1", f"--job-name={name}",
            *(["--pty"] if pty else [])]


def step_record(path: str) -> str:
    """Shell: the first task of the step writes its job, step and node to path (JSON; with
    builtins only, so the program starts without a process on the way; a reader that
    finds it half-written takes it as not there yet)."""
    fmt = shlex.quote('{"job": "%s", "step": "%s", "node": "%s"}')
    return (f'[ "${{SLURM_PROCID:-0}}" != 0 ] || (umask 077; printf {fmt} "$SLURM_JOB_ID" "$SLURM_STEP_ID" '
            f'"${{SLURMD_NODENAME:-?}}" > {shlex.quote(path)}) 2>/dev/null; ')


def run_spec(sess: TargetSession, a: Allocation, run_id: str, command: str, env: dict[str, str]) -> dict[str, Any]:
    """The agent's spec of a run in allocation a (a process run on the login node whose
    program is srun; see the module's doc)."""
    env = {**env, MARKER: a.marker}
    meta = {"alloc": a.job}
    if SRUN.match(command):
        env.update(SLURM_JOB_ID=a.job, SLURM_JOBID=a.job, SLURM_NTASKS=str(a.ntasks), SLURM_NNODES=str(a.nnodes),
                   SLURM_OVERLAP="1")
        if a.ntasks > 1:
            env.setdefault("SLURM_LABELIO", "1")   # each line says its rank: `0: ...`
        return {"cmd": command, "env": env, "meta": meta}
    record = posixpath.join(run_dir(sess.hello["cache_dir"], run_id), STEP_FILE)
    argv = srun_argv(a, f"rd-{run_id}") + ["/bin/sh", "-c", step_record(record) + 'exec /bin/sh -c "$1"', "sh",
                                           command]
    return {"argv": argv, "env": env, "meta": meta}


class AllocLauncher(services.HostLauncher):
    """Shells, kernels and notebook servers as steps of the allocation, on its first node;
    servers listen on the node's address, where the forwards go through the login node."""

    def __init__(self, a: Allocation) -> None:
        self.alloc = a
        self.listen = a.addr or "127.0.0.1"
        self.env = {MARKER: a.marker}
        self.meta = {"alloc": a.job, "node": a.nodes[0] if a.nodes else ""}

    def launch(self, sess: TargetSession, argv: list[str], name: str = "") -> services.ServiceLaunch:
        return services.ServiceLaunch(srun_argv(self.alloc, name or "rd-step") + list(argv), dest_host=self.listen,
                               env=dict(self.env), meta=dict(self.meta))

    def shell(self, sess: TargetSession, argv: list[str] | None, name: str = "") -> list[str] | None:
        inner = argv or ["/bin/sh", "-c", 'exec "${SHELL:-/bin/sh}" -l']
        return srun_argv(self.alloc, name or "rd-shell", pty=True) + list(inner)

    def where(self) -> str:
        return f"in allocation job {self.alloc.job} on {','.join(self.alloc.nodes) or '?'}"


async def launcher(sess: TargetSession) -> services.HostLauncher | None:
    a = await held(sess)
    return AllocLauncher(a) if a is not None else None



# --------------------------------------------------------------------------- :RemoteAlloc

# What ends with an allocation besides its steps, by name: hook(engine, project, job id)
# (wiring.py registers them; the kernel's: its client lets go of a kernel that was a step).
ON_END: dict[str, Callable[[Engine, Project, str], None]] = {}



def need_slurm(sess: TargetSession) -> None:
    t = sess.target
    if t.runner != "slurm":
        raise RemoteDevError(f":RemoteAlloc: target {t.name} has runner = \"{t.runner}\"; allocations are for "
                             f"runner = \"slurm\" targets (:RemoteTarget switches)")


async def alloc_command(engine: Engine, proj: Project, args: list[str] | None, stop: bool) -> dict[str, Any]:
    """:RemoteAlloc [args] | stop: hold an allocation (or find the one held), or end it."""
    sess = proj.session()
    need_slurm(sess)
    if stop:
        return await stop_alloc(engine, proj, sess)
    t = sess.target
    before = state_of(sess).seen
    a = await refresh(sess, engine, found=True, fresh=True)
    if a is not None and a.live:
        if args and list(args) != a.args:
            made = " ".join(a.args) or "no arguments"
            raise RemoteDevError(f"{t.name}: an allocation is held already ({a.describe()}, made with {made}); "
                                 f":RemoteAlloc stop ends it first")
        if before == (a.job, a.state):   # announced before: say it again
            engine.message(f"allocation on {t.name}: {a.describe()} (held already; :RemoteAlloc stop ends it)")
        return {**a.summary(t.name), "found": True}
    use = list(args) if args else list(t.slurm.args)
    spec = {"name": alloc_name(sess), "root": sess.remote_root or t.remote_root, "args": use, "env": dict(t.env),
            "meta": {"kind": "alloc", "target": t.name, "local_root": str(proj.root)}}
    info = await sess.call("alloc_start", spec)
    if info.get("error"):
        raise RemoteDevError(explain(info["error"], use, t.host, ":RemoteAlloc"), kind="slurm")
    found = bool(info.get("found"))
    update(sess, Allocation.from_info(info), found)
    a = state_of(sess).current
    assert a is not None
    return {**a.summary(t.name), "found": found}


async def stop_alloc(engine: Engine, proj: Project, sess: TargetSession) -> dict[str, Any]:
    """End the allocation: every step, shell and kernel in it ends with it."""
    t = sess.target
    a = await refresh(sess, engine, fresh=True)
    if a is None or not a.live:
        raise RemoteDevError(f"no allocation is held for {t.name} (:RemoteAlloc holds one)")
    for hook in ON_END.values():
        hook(engine, proj, a.job)
    info = await sess.call("alloc_stop", alloc_name(sess), proj.config.run.stop_grace)
    update(sess, Allocation.from_info(info) if info else None)
    try:
        await services.list_all(sess, engine)     # its shells and services are gone
    except RemoteDevError:
        pass
    publish_status(engine, proj)
    ended = state_of(sess).current
    return {**(ended or a).summary(t.name), "live": False}


# --------------------------------------------------------------------------- status, health


def status_part(proj: Project) -> dict[str, Any] | None:
    sess = proj.session()
    a = state_of(sess).current if sess.target.runner == "slurm" else None
    return a.summary(sess.target.name) if a is not None and a.live else None


def status_lines(s: dict[str, Any]) -> list[str]:
    """The :RemoteStatus line of a Slurm target's allocation."""
    if s["runner"] != "slurm":
        return []
    a = s.get("alloc")
    return [f"alloc       {a['detail'] if a else 'none'}"]



async def health_item(sess: TargetSession) -> dict[str, str]:
    try:
        a = await refresh(sess)
    except RemoteDevError as e:
        return {"level": "warn", "text": f"allocation: cannot tell ({e.message})"}
    if a is None or not a.live:
        return {"level": "info", "text": "allocation: none held (:RemoteAlloc holds one; meanwhile each run is a "
                                         "batch job)"}
    return {"level": "ok", "text": f"allocation: {a.describe()}: runs, debug runs, shells and kernels of "
                                   f"{sess.target.name} are its job steps"}
