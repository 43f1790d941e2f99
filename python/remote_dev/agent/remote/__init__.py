"""remote_dev's remote agent: stdlib only (Python >= 3.8) plus the pure-Python half of
msgpack, packed into one zip (see remote_dev.agent.bundle) that the bootstrap uploads
content-addressed into the remote user's cache folder and runs as ``python3 agent.pyz``
over one long-lived SSH channel.

    main.py          entry point: serve, supervise, supervise-spare
    server.py        msgpack-RPC transport, dispatch, the file-op worker thread
    host.py          hello, ping, stat_root, which, exec, free_port
    files.py         atomic writes, push/stage/append/unstage (FileOps), state/list/read
    reuse.py         the content index of what the user's agents wrote, copies from it
    blocks.py        a pull's reads: files in blocks compressed for the link
    zstdlib.py       zstd in the agent's process through libzstd (ctypes)
    paths.py         path checks under a root, what is at a path, its content hash
    verify.py        the remote check of a push against what the local side expects
    inotify.py       what changed in folders since the last look (verify's watch)
    temps.py         temporary files of atomic writes
    runs.py          run folders: start, info, list, read, stop, listening, endpoints
    services.py      services (kernel, notebook server) and shells (tmux) found by name
    slurm.py         sbatch, squeue, scontrol, scancel
    alloc.py         allocations held for a target (a holder job), its steps' ends
    envscan.py       what the target's python imports from outside the project (:RemoteEnv)
    supervisor.py    the detached supervisor of a run, the spare supervisor
    procs.py         /proc: processes of a run, stopping them, listening sockets
    compiled.py      a copy of the zip with bytecode for the remote's interpreter
    common.py        AgentError, cache folder, JSON records
    debug_boot.py    not the agent's: the debug bootstrap a debug run puts on PYTHONPATH
                     as sitecustomize.py (uploaded on its own, stdlib only)

What the local side shares with it (run states, markers, the cache layout, content hash,
op shapes, the conflict rule, the python's shell word) is in ../protocol.py.  Modules
import each other relatively, so the same files work as remote_dev.agent.remote (locally,
in tests) and as remote_dev_agent.remote (in the zip).
"""
