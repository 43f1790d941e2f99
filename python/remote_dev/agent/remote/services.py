"""Long-lived processes found again by name: services (a Jupyter kernel, a notebook
server) and shells (tmux sessions).

A service is a run whose folder has a fixed name, <cache>/services/<name>/ (mode 0700: it
holds the kernel's key and the server's token), with the files of a run folder (runs.py):
the same supervisor starts it detached, the same record says whether it lives, and a stop
ends its whole process tree.  Starting a service that is alive finds it again; one that
ended leaves its folder to the new one.

A shell is a tmux session on remote_dev's own tmux server (``tmux -L remote-dev``, so the
user's tmux and its options stay untouched).  Its processes carry REMOTE_DEV_RUN_ID=<name>
(the session environment), so killing it leaves none behind, also not the ones a pane
started in the background.  <cache>/shells/<name>.json keeps what killing it needs besides
(a container's `rm -f`).
"""

import os
import shutil
import signal
import subprocess
import time

from .. import protocol as P
from . import procs, runs, supervisor
from .common import (AgentError, cache_dir, expand_root, private_dir, private_file, read_json, renew_dir,
                     unlink_quiet, write_json)

TMUX_SOCKET = "remote-dev"
TMUX_MIN = (3, 0)
TMUX_FIX = "install it there (Debian/Ubuntu: `sudo apt install tmux`; Fedora/RHEL: `sudo dnf install tmux`)"
START_TIMEOUT = 10.0


# --------------------------------------------------------------------------- services


def services_dir():
    return os.path.join(cache_dir(), P.SERVICES_DIR)


def _check_name(name):
    if not name or "/" in name or name.startswith("."):
        raise AgentError("service", "bad service name %r" % (name,))
    return name


def service_dir(name):
    return os.path.join(services_dir(), _check_name(name))


def _info(d):
    try:
        info = runs.run_info(d)
    except (OSError, ValueError):
        return None
    info["name"] = os.path.basename(d)
    return info


def service_info(name):
    """The service's info (a run's, plus its name), or None when there is none."""
    return _info(service_dir(name))


def service_start(spec):
    """Start the service spec names unless it is alive: {name, root, argv, env, meta,
    stop_commands}.  Returns its info, with found = True when it was running already."""
    name = _check_name(spec["name"])
    d = service_dir(name)
    info = _info(d)
    if info is not None and P.is_live(info["state"]):
        info["found"] = True
        return info
    if not renew_dir(d):  # another client started it this instant
        info = _info(d) or {"state": P.STARTING, "name": name}
        info["found"] = True
        return info
    root = expand_root(spec["root"])
    os.makedirs(root, exist_ok=True)
    record = {"id": name, "root": root, "argv": list(spec["argv"]), "env": spec.get("env") or {},
              "meta": spec.get("meta") or {}, "stop_commands": spec.get("stop_commands") or [],
              "created": time.time()}
    write_json(os.path.join(d, "spec.json"), record)
    private_file(os.path.join(d, "output.log"))
    supervisor.start_supervisor(d)
    try:
        deadline = time.time() + START_TIMEOUT
        delay = 0.001
        while time.time() < deadline:
            info = _info(d)
            if info is not None and info["state"] != P.STARTING:
                break
            time.sleep(delay)
            delay = min(delay * 1.5, 0.02)
        info = _info(d)
    finally:
        supervisor.spare_later()
    info["found"] = False
    return info


def service_list(prefix):
    """The services whose names start with prefix (alive or not), and the shells."""
    out = []
    try:
        names = sorted(os.listdir(services_dir()))
    except OSError:
        names = []
    for name in names:
        if name.startswith(prefix):
            info = _info(os.path.join(services_dir(), name))
            if info is not None:
                info["kind"] = (info.get("meta") or {}).get("kind", "service")
                out.append(info)
    return out + shell_list(prefix)


def service_stop(name, grace):
    """Stop a service (its whole process tree); its info, None when there is none."""
    d = service_dir(name)
    if not os.path.isdir(d):
        return None
    info = runs.stop_in(d, grace)
    info["name"] = name
    return info


def service_signal(name, signum):
    """Send a signal to the service's program (SIGINT interrupts a kernel)."""
    info = service_info(name)
    if info is None or not P.is_live(info["state"]) or not info.get("pid"):
        raise AgentError("service", "%s is not running" % name)
    try:
        os.kill(info["pid"], signum)
    except OSError as e:
        raise AgentError("service", "cannot signal %s: %s" % (name, e.strerror))
    return True


def service_file(name, filename, timeout):
    """A JSON file the service writes into its folder (a kernel's connection file), once
    it exists and parses; None when the service ends first or timeout passes."""
    d = service_dir(name)
    path = os.path.join(d, os.path.basename(filename))
    deadline = time.time() + timeout
    while True:
        try:
            return read_json(path)
        except (OSError, ValueError):
            pass
        info = _info(d)
        if time.time() >= deadline or info is None or not P.is_live(info["state"]):
            return None
        time.sleep(0.05)


def service_listening(name, port, timeout):
    """Wait until a process of the service listens on TCP port; False when it ends first
    or timeout passes."""
    d = service_dir(name)
    deadline = time.time() + timeout
    while time.time() < deadline:
        info = _info(d)
        if info is None or not P.is_live(info["state"]):
            return False
        for pid in procs.run_processes(name, info.get("supervisor")):
            if procs.listens_on(pid, port):
                return True
        time.sleep(0.05)
    return False


def service_log(name, max_bytes):
    """The end of the service's output (its messages when it failed to start)."""
    path = os.path.join(service_dir(name), "output.log")
    try:
        with open(path, "rb") as f:
            f.seek(0, 2)
            size = f.tell()
            f.seek(max(0, size - max_bytes))
            return f.read()
    except OSError:
        return b""


# --------------------------------------------------------------------------- shells


def shells_dir():
    return os.path.join(cache_dir(), "shells")


def find_tmux(env):
    """tmux on the PATH the shell gets (the target's env may set PATH)."""
    path = (env or {}).get("PATH") or os.environ.get("PATH", "")
    return shutil.which("tmux", path=path)


def _tmux(tmux, args, timeout=15):
    try:
        p = subprocess.run([tmux, "-L", TMUX_SOCKET] + list(args), stdin=subprocess.DEVNULL,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise AgentError("tmux", "tmux did not answer within %d s" % timeout)
    return p.returncode, p.stdout.decode("utf-8", "replace"), p.stderr.decode("utf-8", "replace").strip()


def tmux_version(tmux):
    try:
        out = subprocess.run([tmux, "-V"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                             timeout=10).stdout.decode()
    except (OSError, subprocess.TimeoutExpired):
        return None, ""
    word = out.split()[-1] if out.split() else ""
    digits = []
    for part in word.replace("next-", "").split("."):
        num = "".join(c for c in part if c.isdigit())
        if not num:
            break
        digits.append(int(num))
    return (tuple(digits) or None), out.strip()


def _need_tmux(env):
    tmux = find_tmux(env)
    if tmux is None:
        raise AgentError("no-tmux", "tmux is not installed: :RemoteShell needs it; " + TMUX_FIX)
    version, text = tmux_version(tmux)
    if version is not None and version < TMUX_MIN:
        raise AgentError("no-tmux", "%s is too old: :RemoteShell needs tmux %d.%d or newer; %s"
                         % (text, TMUX_MIN[0], TMUX_MIN[1], TMUX_FIX))
    return tmux


def _exists(tmux, name):
    return _tmux(tmux, ["has-session", "-t", "=" + name])[0] == 0


def login_shell():
    shell = os.environ.get("SHELL")
    if not shell:
        try:
            import pwd

            shell = pwd.getpwuid(os.getuid()).pw_shell
        except (ImportError, KeyError):
            shell = None
    return shell or "/bin/sh"


def shell_ensure(spec):
    """The tmux session spec names, made when missing: {name, root, argv (None: the login
    shell), env, cols, rows, stop_commands, meta}.  Returns {name, tmux, created}."""
    name = _check_name(spec["name"])
    env = dict(spec.get("env") or {})
    tmux = _need_tmux(env)
    if _exists(tmux, name):
        return {"name": name, "tmux": tmux, "created": False}
    root = expand_root(spec["root"])
    os.makedirs(root, exist_ok=True)
    env[P.RUN_ID_ENV] = name
    for key in ("PATH", "VIRTUAL_ENV", "CONDA_PREFIX"):   # the target python's (common.activate_interpreter)
        if key in os.environ and key not in env:
            env[key] = os.environ[key]
    argv = spec.get("argv") or [login_shell(), "-l"]
    command = ["env"] + ["%s=%s" % kv for kv in sorted(env.items())] + list(argv)
    size = ["-x", str(int(spec.get("cols") or 80)), "-y", str(int(spec.get("rows") or 24))]
    code, _, err = _tmux(tmux, ["new-session", "-d", "-s", name, "-c", root] + size + command)
    if code != 0:
        if _exists(tmux, name):  # another client made it this instant
            return {"name": name, "tmux": tmux, "created": False}
        raise AgentError("tmux", "tmux could not make session %s: %s" % (name, err))
    private_dir(shells_dir())
    write_json(os.path.join(shells_dir(), name + ".json"),
               {"stop_commands": spec.get("stop_commands") or [], "meta": spec.get("meta") or {},
                "env": spec.get("env") or {}, "created": time.time()})
    for key, value in sorted(env.items()):   # new windows of the session get them too
        _tmux(tmux, ["set-environment", "-t", "=" + name, key, value])
    # The session fills the Neovim window: no status line, which would also keep the
    # lines tmux scrolls out of Neovim's scrollback.
    _tmux(tmux, ["set-option", "-t", "=" + name + ":", "status", "off"])
    # This server's clients draw on the normal screen (lines scrolled off go to the
    # terminal's scrollback, which the alternate screen has none of).
    _tmux(tmux, ["set-option", "-s", "-a", "terminal-overrides", ",xterm-256color:smcup@:rmcup@"])
    if not spec.get("argv"):
        activate_in_shell(tmux, name, argv[0])
    return {"name": name, "tmux": tmux, "created": True}


def activate_in_shell(tmux, name, shell):
    """A login shell's profile may set PATH anew (Debian's /etc/profile does): in a venv,
    the new shell is sent the venv's own activate line for its kind of shell, as VS Code
    does in its terminals (with a leading space: kept out of bash's history)."""
    venv = os.environ.get("VIRTUAL_ENV")
    if not venv or "'" in venv:
        return
    kind = os.path.basename(shell)
    script, source = ("activate.fish", "source") if kind == "fish" else \
        ("activate.csh", "source") if kind in ("csh", "tcsh") else ("activate", ".")
    path = os.path.join(venv, "bin", script)
    if os.path.isfile(path):
        _tmux(tmux, ["send-keys", "-t", "=" + name + ":", " %s '%s'" % (source, path), "Enter"])


def shell_list(prefix):
    """The tmux sessions whose names start with prefix."""
    tmux = find_tmux(None)
    if tmux is None:
        return []
    fmt = "\t".join(["#{session_name}", "#{session_created}", "#{session_attached}", "#{session_windows}",
                     "#{pane_current_command}", "#{pane_current_path}"])
    code, out, _ = _tmux(tmux, ["list-sessions", "-F", fmt])
    if code != 0:   # no server running: no sessions
        return []
    shells = []
    for line in out.splitlines():
        fields = line.split("\t")
        if len(fields) < 6 or not fields[0].startswith(prefix):
            continue
        extra = _read_shell_record(fields[0])
        shells.append({"name": fields[0], "kind": "shell", "state": P.RUNNING,
                       "created": float(fields[1] or 0), "attached": int(fields[2] or 0),
                       "windows": int(fields[3] or 0), "command": fields[4], "cwd": fields[5],
                       "meta": extra.get("meta") or {}})
    return shells


def _read_shell_record(name):
    try:
        return read_json(os.path.join(shells_dir(), name + ".json"))
    except (OSError, ValueError):
        return {}


def shell_capture(name, lines):
    """The session's history above its screen (up to ``lines`` lines, with colours), so a
    new terminal shows the earlier scrollback before tmux redraws the screen."""
    tmux = find_tmux(None)
    if tmux is None:
        return b""
    code, out, _ = _tmux(tmux, ["capture-pane", "-p", "-e", "-J", "-S", "-%d" % int(lines), "-E", "-1",
                                "-t", "=" + _check_name(name) + ":"])
    if code != 0:
        return b""
    return out.rstrip("\n").encode("utf-8")


def shell_kill(name, grace):
    """End a shell: its tmux session and every process that carries its marker, the
    panes' process trees included.  Returns False when there was no such shell."""
    name = _check_name(name)
    tmux = find_tmux(None)
    record = _read_shell_record(name)
    panes = []
    existed = False
    if tmux is not None and _exists(tmux, name):
        existed = True
        code, out, _ = _tmux(tmux, ["list-panes", "-s", "-t", "=" + name, "-F", "#{pane_pid}"])
        panes = [int(p) for p in out.split() if p.isdigit()] if code == 0 else []
    env = dict(os.environ)
    env.update(record.get("env") or {})
    for argv in record.get("stop_commands") or []:
        try:
            subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL, timeout=60, env=env)
        except (OSError, subprocess.TimeoutExpired):
            pass
    if existed:
        _tmux(tmux, ["kill-session", "-t", "=" + name])
    _kill_all(name, panes, grace)
    unlink_quiet(os.path.join(shells_dir(), name + ".json"))
    return existed or bool(record)


def _shell_processes(name, panes):
    found = procs.run_processes(name, None)
    table = procs.proc_table()
    children = {}
    for pid, ppid in table.items():
        children.setdefault(ppid, []).append(pid)
    todo = [p for p in panes if p in table]
    while todo:
        pid = todo.pop()
        if pid in found:
            continue
        found.add(pid)
        todo.extend(children.get(pid, []))
    found.discard(os.getpid())
    return found


def _kill_all(name, panes, grace):
    procs.kill_run_processes(name, None, grace, signals=(signal.SIGHUP, signal.SIGTERM, signal.SIGKILL),
                             find=lambda: _shell_processes(name, panes))
