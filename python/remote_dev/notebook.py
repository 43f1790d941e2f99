""":RemoteNotebook: a Jupyter server (JupyterLab, Notebook or bare jupyter_server, whichever
the target's python has) on the remote, reached through an SSH forward.

The tree is pushed first.  The server is a service (services.py): started detached in remote_root, found again by
name, bound to the remote's 127.0.0.1 on a port chosen there, with a token chosen here and
handed over in its environment (JUPYTER_TOKEN: never on a command line others can read
with ps).  Port and token stay in the service's record (a folder only its user reads), so
a second :RemoteNotebook, also from a new Neovim, forwards to the same server.
"""

from __future__ import annotations

import secrets
import time
from typing import Any

from . import services
from .agent.protocol import RUNNING, is_live
from .engine import Engine, Project
from .errors import RemoteDevError
from .forwards import forwards_of
from .services import NOTEBOOK, remote_name

# (module run with -m, path of its UI), in order of preference
SERVERS = (("jupyterlab", "lab"), ("notebook", "tree"), ("jupyter_server", ""))
LISTEN_TIMEOUT = 90.0


async def open_notebook(engine: Engine, proj: Project) -> dict[str, Any]:
    """The project's notebook server on the target, started when none runs, forwarded
    (actions.notebook pushes the tree first, so the server lists the project as it is)."""
    sess = proj.session()
    await sess.ensure()
    t = sess.target
    name = remote_name(sess, NOTEBOOK)
    info = await sess.call("service_info", name)
    found = info is not None and is_live(info.get("state"))
    t0 = time.perf_counter()
    if not found:
        mods = await services.python_modules(sess, [m for m, _ in SERVERS])
        have = [m for m, _ in SERVERS if mods["modules"].get(m)]
        if not have:
            raise RemoteDevError(
                f"{t.host}: no Jupyter server is installed for {t.python}: :RemoteNotebook needs jupyterlab, "
                f"notebook or jupyter_server there; install one with `{t.python} -m pip install jupyterlab` "
                f"(or set targets.{t.name}.python to an interpreter that has it)", kind="no-jupyter")
        module = have[0]
        port = await sess.call("free_port")
        token = secrets.token_hex(24)
        launcher = await services.launcher_for(sess)
        args = ["-m", module, "--no-browser", f"--ip={launcher.listen}", f"--port={port}", "--port-retries=0"]
        if mods.get("root"):
            args.append("--allow-root")
        launch = launcher.launch(sess, services.python_argv(t.python, args), name)
        spec = {"name": name, "root": sess.remote_root or t.remote_root, "argv": launch.argv,
                "env": {**t.env, "JUPYTER_TOKEN": token, **launch.env},
                "meta": {"kind": NOTEBOOK, "target": t.name, "local_root": str(proj.root), "server": module,
                         "port": port, "token": token, "path": dict(SERVERS)[module], "host": launch.dest_host,
                         **launch.meta}}
        info = await sess.call("service_start", spec)
        found = bool(info.get("found"))
        if not is_live(info.get("state")):
            raise RemoteDevError(f"{t.host}: the Jupyter server ({module}) did not start:\n"
                                 + await services.service_log_tail(sess, name))
    meta = info.get("meta") or {}
    port, token = int(meta["port"]), meta["token"]
    if meta.get("alloc"):   # a job step in an allocation: on the node, reached at its address
        listening = await sess.call("step_listening", name, meta.get("host"), port, LISTEN_TIMEOUT)
    else:
        listening = await sess.call("service_listening", name, port, LISTEN_TIMEOUT)
    if not listening:
        tail = await services.service_log_tail(sess, name)
        raise RemoteDevError(f"{t.host}: the Jupyter server ({meta.get('server')}) is not listening on "
                             f"{meta.get('host') or '127.0.0.1'}:{port}" + (f":\n{tail}" if tail else ""))
    fwd = await forwards_of(sess).add(meta.get("host") or "127.0.0.1", port, name="notebook")
    path = meta.get("path") or ""
    url = f"http://127.0.0.1:{fwd.local_port}/{path}?token={token}"
    services.note(engine, sess, NOTEBOOK, "notebook", RUNNING, f"{meta.get('server')} at http://127.0.0.1:{fwd.local_port}/")
    engine.emit("RemoteDevNotebook", {"url": url, "target": t.name, "found": found})
    return {"url": url, "local_port": fwd.local_port, "remote_port": port, "server": meta.get("server"),
            "found": found, "ms": round((time.perf_counter() - t0) * 1000)}


async def stop_notebook(engine: Engine, proj: Project) -> dict[str, Any]:
    """Stop the project's notebook server (and the kernels it started)."""
    sess = proj.session()
    name = remote_name(sess, NOTEBOOK)
    info = await sess.call("service_info", name)
    live = info is not None and is_live(info.get("state"))
    if live:
        await sess.call("service_stop", name, proj.config.run.stop_grace)
    port = int((info or {}).get("meta", {}).get("port") or 0)
    fw = forwards_of(sess)
    for f in list(fw.items):
        if f.name == "notebook" and f.dest_port == port:
            fw.close(f)
    services.note(engine, sess, NOTEBOOK, "notebook", None)
    engine.message(f"notebook server on {sess.target.name} stopped" if live
                   else f"no notebook server was running on {sess.target.name}")
    return {"stopped": live}
