"""remote_dev's remote agent: stdlib only (Python >= 3.8) plus the pure-Python half of
msgpack, packed into one zip (see remote_dev.agent.bundle) that the bootstrap uploads
content-addressed into the remote user's cache folder and runs as ``python3 agent.pyz``
over one long-lived SSH channel.

    main.py          entry point: serve, supervise, supervise-spare, debug-launch
    server.py        msgpack-RPC transport, dispatch, the file-op worker thread
    host.py          hello, ping, stat_root, which, exec, free_port
    files.py         path checks, atomic writes, push/stage/append/unstage/state/list/read
    temps.py         temporary files of atomic writes
    runs.py          run folders: start, info, list, read, stop, listening, file
    slurm.py         sbatch, squeue, scontrol, scancel
    alloc.py         allocations held for a target (a holder job), its steps' ends
    supervisor.py    the detached supervisor of a run, the spare supervisor
    procs.py         /proc: processes of a run, stopping them, listening sockets
    debug_launch.py  debugpy on a Slurm compute node
    compiled.py      a copy of the zip with bytecode for the remote's interpreter
    common.py        AgentError, cache folder, JSON records

What the local side shares with it (run states, content hash, op shapes, the conflict
rule) is in ../protocol.py.  Modules import each other relatively, so the same files work
as remote_dev.agent.remote (locally, in tests) and as remote_dev_agent.remote (in the zip).
"""
