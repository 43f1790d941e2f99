"""Where :RemoteEnv reads a target's environment from: the agent (process and Slurm
targets: the host's python, the login node's view for Slurm), or, for container targets,
the image's python3 in a throwaway container per request (`ENGINE run --rm --network none
--entrypoint python3 IMAGE -c SCRIPT`), SCRIPT being the agent's own scan functions
(agent/remote/envscan.py with protocol.py: stdlib only), so both read alike."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any, Awaitable

from .agent import protocol
from .agent.remote import envscan
from .engine import Project, TargetSession
from .errors import RemoteDevError
from .runners import runner_of

ARGS_MAX = 96 << 10      # bytes of a container request's JSON argument (Linux: 128 KiB per argument)


class AgentSource:
    """The agent's env_probe / env_list / env_read."""

    def __init__(self, sess: TargetSession) -> None:
        self.sess = sess
        self.exclude = [sess.remote_root or sess.target.remote_root]

    async def probe(self) -> dict[str, Any]:
        return await self.sess.call("env_probe", None, dict(self.sess.target.env or {}), self.exclude)

    async def list(self, roots: list[str]) -> list[list[list[Any]]]:
        return await self.sess.call("env_list", roots, self.exclude)

    async def reader(self) -> Any:
        agent = await self.sess.ensure()

        def read(remote: str, rels: list[str], link: float | None, formats: list[str] | None) -> Awaitable[Any]:
            return agent.send("env_read", remote, rels, link, formats)
        return read, agent.drain

    def batch_limit(self) -> int:
        return 1 << 40


def driver_script() -> str:
    """protocol.py, envscan.py (its imports made local) and a main reading the request from
    argv: one stdlib-only program for the image's python3."""
    proto = Path(protocol.__file__).read_text()
    scan = Path(envscan.__file__).read_text()
    scan = scan.replace("from .. import protocol as P\n", "P = sys.modules[__name__]\n")
    scan = scan.replace("from .common import AgentError\n", "")
    return proto + _AGENT_ERROR + scan + _DRIVER


_AGENT_ERROR = '''

class AgentError(Exception):
    def __init__(self, kind, message):
        Exception.__init__(self, message)
        self.kind, self.message = kind, message
'''
_DRIVER = '''

def _main():
    op, args = sys.argv[1], json.loads(sys.argv[2])
    out = sys.stdout.buffer
    try:
        if op == "probe":
            res = env_probe(None, {}, args["exclude"])
        elif op == "list":
            res = env_list(args["roots"], args["exclude"])
        else:
            fmt, blob = env_read(args["root"], args["rels"], args["link"], args["formats"])
            out.write(fmt.encode("ascii") + b"\\n" + bytes(blob))
            return
    except AgentError as e:
        sys.stderr.write(e.message + "\\n")
        sys.exit(3)
    out.write(json.dumps(res).encode("utf-8", "surrogateescape"))


_main()
'''


class ContainerSource:
    """The image's python3, one container per request; the tree's workdir is not mounted
    (the project is never the environment), and the target's env is set inside."""

    def __init__(self, sess: TargetSession, proj: Project) -> None:
        self.sess = sess
        self.proj = proj
        self.runner = runner_of(sess)
        self.exclude = [sess.target.container.workdir]
        self.engine = ""
        self.image = ""
        self.script = driver_script()

    async def _prepare(self) -> None:
        if not self.engine:
            self.engine = await self.runner.engine_name(self.sess)
            self.image = self.runner.image(self.proj, self.sess.target)   # type: ignore[attr-defined]

    async def _call(self, op: str, args: dict[str, Any]) -> bytes:
        await self._prepare()
        t = self.sess.target
        argv = [self.engine, "run", "--rm", "--network", "none", "--entrypoint", "python3"]
        for key, value in (t.env or {}).items():
            argv += ["-e", f"{key}={value}"]
        argv += [self.image, "-c", self.script, op, json.dumps(args)]
        res = await self.sess.call("exec", argv, 600, dict(t.env or {}))
        if res["code"] != 0:
            err = bytes(res.get("stderr") or b"").decode(errors="replace").strip().splitlines()
            why = err[-1] if err else f"exit {res['code']}"
            raise RemoteDevError(f"{t.host}: reading the environment of image {self.image} with {self.engine} "
                                 f"failed ({why}); a run builds the image first", kind="env")
        return bytes(res["stdout"])

    async def probe(self) -> dict[str, Any]:
        return json.loads(await self._call("probe", {"exclude": self.exclude}))

    async def list(self, roots: list[str]) -> list[list[list[Any]]]:
        return json.loads(await self._call("list", {"roots": roots, "exclude": self.exclude}))

    async def reader(self) -> Any:
        await self._prepare()

        async def one(remote: str, rels: list[str], link: float | None, formats: list[str] | None) -> list[Any]:
            out = await self._call("read", {"root": remote, "rels": rels, "link": link, "formats": formats})
            fmt, _, blob = out.partition(b"\n")
            return [fmt.decode("ascii"), blob]

        def read(remote: str, rels: list[str], link: float | None, formats: list[str] | None) -> Awaitable[Any]:
            return asyncio.ensure_future(one(remote, rels, link, formats))

        async def drain() -> None:
            return None
        return read, drain

    def batch_limit(self) -> int:
        return ARGS_MAX


def source_of(sess: TargetSession, proj: Project) -> AgentSource | ContainerSource:
    return ContainerSource(sess, proj) if runner_of(sess).in_container() else AgentSource(sess)
