"""``python3 agent.pyz debug-launch READY -- script args | -m module args``: debugpy
listening on this node's address (a Slurm compute node), the address written to READY
(in the run folder, on the shared file system), then the program once a client came.

It runs under the user's interpreter (which has debugpy on its path): it imports nothing
of the agent beyond this module and common, so the program gets a clean process."""

import os
import runpy
import socket
import sys

from .common import write_json


def debug_launch(argv):
    import debugpy

    ready, rest = argv[0], argv[2:] if argv[1:2] == ["--"] else argv[1:]
    addr = os.environ.get("REMOTE_DEV_DEBUG_ADDR")
    if not addr:
        try:
            addr = socket.gethostbyname(socket.gethostname())
        except OSError:
            addr = "127.0.0.1"
    host, port = debugpy.listen((addr, 0))
    write_json(ready, {"host": host, "port": port, "node": socket.gethostname()})
    debugpy.wait_for_client()
    if rest[0] == "-m":
        sys.argv = rest[1:]
        runpy.run_module(rest[1], run_name="__main__", alter_sys=True)
    else:
        sys.argv = rest
        sys.path[0] = os.path.dirname(os.path.abspath(rest[0]))
        runpy.run_path(rest[0], run_name="__main__")
