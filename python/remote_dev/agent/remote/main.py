"""The agent's entry point: ``python3 agent.pyz [COMMAND ...]``.

    (none)                         serve msgpack-RPC on stdin/stdout (server.py)
    supervise DIR                  supervise the run in folder DIR (supervisor.py)
    supervise-spare                a spare supervisor: reads its run folder from stdin

Each command imports only its own modules: a supervisor never loads msgpack or the server."""

import sys


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    command = argv[0] if argv else None
    if command == "supervise":
        from .supervisor import supervise

        supervise(argv[1])
    elif command == "supervise-spare":
        from .supervisor import supervise_spare

        supervise_spare()
    elif command is None:
        from . import compiled, server
        from .common import activate_interpreter

        activate_interpreter()   # what the agent starts inherits it
        compiled.ensure()
        server.serve()
    else:
        sys.stderr.write("remote_dev agent: unknown command %r\n" % command)
        sys.exit(2)
