"""`remote-dev`: the plugin's actions from a shell (same engine, same config file)."""

from __future__ import annotations

import argparse
import getpass
import json
import os
import sys
import threading
from typing import Any

from .actions import ACTIONS
from .engine import Engine
from .errors import RemoteDevError
from .runners import RUNNERS


_ESCAPES = {ord("\n"): "\\n", ord("\r"): "\\r", ord("\t"): "\\t", ord("'"): "\\'"}


def shown(name: str) -> str:
    """A file name on one line as a person reads it: as is when printable, else quoted with
    escapes (a newline as \\n, a byte that is not UTF-8 as \\xff), as `ls` quotes names."""
    if name.isprintable() and not any("\udc80" <= c <= "\udcff" for c in name):
        return name
    text = "".join(c if c.isprintable() or "\udc80" <= c <= "\udcff" else f"\\x{ord(c):02x}"
                   for c in name.translate(_ESCAPES))
    return "'" + text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace") + "'"


def format_preview(res: dict[str, Any]) -> str:
    """A push preview as a person reads it (what :RemotePush --dry-run shows)."""
    lines = [f"push preview for {res['target']} (nothing was written)"]

    def section(title: str, items: list[str]) -> None:
        lines.append(f"{title} ({len(items)})")
        lines.extend(f"  {item}" for item in items)
    section("send", [shown(p) for p in res.get("send") or []])
    section("delete on the remote", [shown(p) for p in res.get("delete") or []])
    section("conflicts (not overwritten without --force)",
            [f"{shown(c['path'])}: {c['reason']}" for c in res.get("conflict_details") or []])
    section("skipped", [f"{shown(s['path'])}: {s.get('reason') or str(s.get('size', '?')) + ' bytes, over sync.max_file_size'}"
                        for s in res.get("skipped") or []])
    if res.get("errors"):
        section("errors", [f"{shown(e['path'])}: {e['reason']}" for e in res["errors"]])
    return "\n".join(lines)


class Printer:
    """Reports from the engine, printed; remembers run exits for `run`."""

    def __init__(self, quiet: bool = False) -> None:
        self.quiet = quiet
        self.exits: dict[str, dict[str, Any]] = {}
        self.exited = threading.Condition()

    def __call__(self, kind: str, payload: dict[str, Any]) -> None:
        if kind == "message" and not self.quiet:
            stream = sys.stderr if payload["level"] in ("warn", "error") else sys.stdout
            print(f"remote_dev: {payload['text']}", file=stream, flush=True)
        elif kind == "run_output":
            if payload.get("dropped"):
                print(f"[remote_dev: {payload['dropped']} lines skipped]", flush=True)
            for line in payload["lines"]:
                print(line, flush=True)
        elif kind == "event" and payload["name"] == "RemoteDevRunExit":
            with self.exited:
                self.exits[payload["data"]["id"]] = payload["data"]
                self.exited.notify_all()

    def wait_exit(self, run_id: str) -> dict[str, Any]:
        with self.exited:
            while run_id not in self.exits:
                self.exited.wait(1)
            return self.exits[run_id]


def terminal_prompter(challenge: dict[str, Any], reply: Any) -> None:
    """A server's login prompts on the terminal (echo off where the server says so), asked
    in a thread of their own: the engine's loop never waits on the person."""
    def ask() -> None:
        answers: list[str] | None = []
        try:
            with open("/dev/tty", "w") as tty, open("/dev/tty") as keys:
                head = [f"remote-dev: login to {challenge['host']} as {challenge['user']}", challenge.get("why"),
                        challenge.get("name"), challenge.get("instructions")]
                tty.write("\n".join(str(h).rstrip("\n") for h in head if h) + "\n")
                tty.flush()
                for p in challenge["prompts"]:
                    if p["echo"]:
                        tty.write(p["text"])
                        tty.flush()
                        line = keys.readline()
                        answer = line.rstrip("\n") if line else None
                    else:
                        answer = getpass.getpass(p["text"]) or None
                    if answer is None:
                        answers = None
                        break
                    answers.append(answer)
        except (OSError, EOFError, KeyboardInterrupt):
            answers = None
        reply(answers)
    threading.Thread(target=ask, name="remote-dev-login", daemon=True).start()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="remote-dev", description=__doc__)
    parser.add_argument("-C", "--directory", default=os.getcwd(), help="project folder (default: cwd)")
    parser.add_argument("--json", action="store_true", help="print results as JSON")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("status", help="connect and show target, host, python, agent, round trip")
    p = sub.add_parser("target", help="show or switch the target")
    p.add_argument("name", nargs="?")
    p = sub.add_parser("push", help="push the tree or paths")
    p.add_argument("paths", nargs="*")
    p.add_argument("-f", "--force", action="store_true", help="overwrite remote changes (like :RemotePush!)")
    p.add_argument("-n", "--dry-run", action="store_true", help="show what would be sent, write nothing")
    p = sub.add_parser("pull", help="pull the sync.pull folders or paths")
    p.add_argument("paths", nargs="*")
    p.add_argument("-f", "--force", action="store_true")
    p = sub.add_parser("run", help="push, run, stream the output; exit with the run's code")
    p.add_argument("cmd", nargs=argparse.REMAINDER)
    sub.add_parser("runs", help="list runs of the target")
    p = sub.add_parser("stop", help="stop a run")
    p.add_argument("id", nargs="?")
    p = sub.add_parser("log", help="print a run's output")
    p.add_argument("id", nargs="?")
    sub.add_parser("health", help="the checks of :checkhealth remote_dev")
    p = sub.add_parser("alloc", help="hold a Slurm allocation for the target (sbatch arguments), show it, or stop it")
    p.add_argument("args", nargs=argparse.REMAINDER, help="sbatch/salloc arguments (after --), or: stop")
    args = parser.parse_args(argv)

    printer = Printer(quiet=args.json)
    # On a terminal a server's prompts (a one-time code) are asked there; elsewhere (a pipe,
    # a cron job) no one can answer them and the login fails with one line saying so.
    engine = Engine(report=printer, actions=ACTIONS, prompter=terminal_prompter if sys.stdin.isatty() else None,
                    runners=RUNNERS)
    ctx = {"cwd": os.path.abspath(args.directory)}
    try:
        result = dispatch(engine, printer, ctx, args)
    except RemoteDevError as e:
        print(f"remote-dev: {e.message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    finally:
        engine.close()
    return result


def dispatch(engine: Engine, printer: Printer, ctx: dict[str, Any], args: argparse.Namespace) -> int:
    call = engine.call_sync
    if args.command == "status":
        s = call("status", ctx)
        print(json.dumps(s, indent=2) if args.json else "\n".join(s["lines"]))
    elif args.command == "target":
        s = call("target", ctx, {"name": args.name})
        print(json.dumps(s, indent=2) if args.json else f"{s['target']}: {s['host']}:{s['remote_root']} ({s['runner']})")
    elif args.command == "push":
        res = call("push", ctx, {"paths": args.paths or None, "force": args.force, "dry_run": args.dry_run})
        if args.json:
            print(json.dumps(res, indent=2))
        elif args.dry_run:
            print(format_preview(res))
        return 1 if res.get("conflicts") or res.get("errors") else 0
    elif args.command == "pull":
        res = call("pull", ctx, {"paths": args.paths or None, "force": args.force})
        return 1 if res.get("conflicts") else 0
    elif args.command == "run":
        cmd = " ".join(args.cmd) if args.cmd else None
        run = call("run", ctx, {"cmd": cmd})
        return int(printer.wait_exit(run["id"])["code"] or 0)
    elif args.command == "runs":
        runs = call("runs", ctx)
        if args.json:
            print(json.dumps(runs, indent=2))
        for r in runs:
            code = "-" if r["code"] is None else r["code"]
            job = f" job {r['job']}" if r.get("job") else ""
            print(f"{r['id']:20} {r['state']:8} {code!s:>4} {r['duration']:8.1f}s  {r['cmd']}{job}")
    elif args.command == "stop":
        call("stop", ctx, {"id": args.id})
    elif args.command == "log":
        res = call("log", ctx, {"id": args.id})
        if args.json:
            print(json.dumps(res, indent=2))
        else:
            for line in res["header"] + res["lines"]:
                print(line)
    elif args.command == "alloc":
        words = [a for a in args.args if a != "--"]
        stop = words == ["stop"]
        res = call("alloc", ctx, {"args": [] if stop else words, "stop": stop})
        if args.json:   # else the messages have said it
            print(json.dumps(res, indent=2))
    elif args.command == "health":
        rep = call("health", ctx)
        for item in rep["local"]:
            print(f"{item['level'].upper():5} {item['text']}")
        print(f"project: {rep.get('project')}")
        for item in rep.get("remote") or []:
            print(f"{item['level'].upper():5} {item['text']}")
        return 1 if any(i["level"] == "error" for i in (rep["local"] + (rep.get("remote") or []))) else 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
