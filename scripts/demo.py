"""The demo behind scripts/demo: a loopback sshd as the remote, a sample project, Neovim."""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))
from support.sshd import start_sshd, stop_sshd  # noqa: E402

NVIM = str(Path(sys.executable).parent / "nvim")
INIT = '''
vim.opt.runtimepath:prepend(%r)
vim.g.python3_host_prog = %r
vim.opt.swapfile = false
'''
TRAIN = '''\
"""A tiny "training" script: it fails inside a project module, as real ones do."""
from model import net


def main():
    for epoch in range(3):
        loss = net.step(epoch)
        print(f"epoch {epoch}: loss {loss:.3f}", flush=True)


main()
'''
NET = '''\
import math


def step(epoch):
    return forward(2.0 - epoch)


def forward(x):
    return math.log(x)   # epoch 2: log(0) -> ValueError
'''


def make_project(base: Path, sshd) -> Path:
    proj = base / "project"
    (proj / "model").mkdir(parents=True)
    (proj / "train.py").write_text(TRAIN)
    (proj / "model" / "__init__.py").write_text("")
    (proj / "model" / "net.py").write_text(NET)
    (proj / ".gitignore").write_text("data/\n")
    (proj / ".remote-dev.toml").write_text(
        f'[targets.demo]\nhost = "{sshd.alias}"\nssh_config = "{sshd.ssh_config}"\n'
        f'remote_root = "{base / "remote" / "project"}"\n\n[sync]\npush_on_save = true\n\n'
        f'[run]\ncommand = "python3 {{file}}"\n')
    return proj


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--interactive", action="store_true", help="open Neovim on the demo project")
    args = parser.parse_args()
    base = Path(tempfile.mkdtemp(prefix="remote-dev-demo-"))
    env = {
        "XDG_CONFIG_HOME": str(base / "config"), "XDG_DATA_HOME": str(base / "data"),
        "XDG_STATE_HOME": str(base / "state"), "NVIM_RPLUGIN_MANIFEST": str(base / "rplugin.vim"),
    }
    os.environ.update(env)
    init = base / "init.lua"
    init.write_text(INIT % (str(REPO), sys.executable))
    sshd = start_sshd(base / "sshd", alias="demo-remote")
    try:
        proj = make_project(base, sshd)
        print(f"remote_dev demo: sshd on 127.0.0.1:{sshd.port} is the remote ({sshd.alias}); project {proj}")
        subprocess.run([NVIM, "--headless", "-u", str(init), "-i", "NONE", "+UpdateRemotePlugins", "+qa!"],
                       check=True, capture_output=True)
        if args.interactive:
            print("In Neovim: :RemoteStatus, :RemoteRun, :copen, :RemoteRuns, :checkhealth remote_dev")
            return subprocess.call([NVIM, "-u", str(init), "-i", "NONE", str(proj / "train.py")], cwd=proj)
        return headless(init, proj)
    finally:
        stop_sshd(sshd)
        shutil.rmtree(base, ignore_errors=True)


def headless(init: Path, proj: Path) -> int:
    import pynvim

    nvim = pynvim.attach("child", argv=[NVIM, "--embed", "--headless", "-u", str(init), "-i", "NONE", "-n"])
    nvim.exec_lua("_G.ev = {}; vim.api.nvim_create_autocmd('User', {pattern='RemoteDev*', "
                  "callback=function(a) table.insert(_G.ev, {name=a.match, data=a.data}) end})")

    def wait(name: str, timeout: float = 60):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for e in nvim.exec_lua("return _G.ev"):
                if e["name"] in (name, "RemoteDevError"):
                    if e["name"] == "RemoteDevError":
                        raise SystemExit(f"remote_dev error: {e['data']['message']}")
                    return e["data"]
            time.sleep(0.05)
        raise SystemExit(f"timed out waiting for {name}")

    try:
        nvim.command(f"cd {proj}")
        nvim.command(f"edit {proj / 'train.py'}")
        nvim.command("RemoteStatus")
        t0 = time.monotonic()
        while not nvim.exec_lua("return require('remote_dev').status().connected"):
            if time.monotonic() - t0 > 60:
                raise SystemExit("could not connect")
            time.sleep(0.05)
        s = nvim.exec_lua("return require('remote_dev').status()")
        print(f"\n:RemoteStatus  target {s['target']}, host {s['host']}, remote_root {s['remote_root']}, "
              f"connected, python {s['python']}, agent {s['agent']}, round trip {s['rtt_ms']} ms")
        nvim.command("RemoteRun")
        push = wait("RemoteDevPushDone")
        print(f":RemoteRun     pushed {push['files']} files ({push['bytes']} bytes) in {push['ms']:.0f} ms")
        start = wait("RemoteDevRunStart")
        ex = wait("RemoteDevRunExit")
        print(f"               run {start['id']}: `{start['cmd']}` exited with code {ex['code']} in {ex['ms']} ms")
        buf = [b for b in nvim.buffers if b.name.startswith("remote-dev://run/")][0]
        print("\nrun buffer:\n  " + "\n  ".join(buf[:]))
        qf = nvim.call("getqflist", {"title": 1, "items": 1})
        print(f"\nquickfix: {qf['title']}")
        for item in qf["items"]:
            where = (f"{nvim.call('fnamemodify', nvim.call('bufname', item['bufnr']), ':~:.')}:{item['lnum']}"
                     if item["valid"] else "(outside the project)")
            print(f"  {where:24} {item['text']}")
        ok = ex["code"] != 0 and any(i["valid"] for i in qf["items"])
        print("\ndemo " + ("OK: the remote traceback is in quickfix at local files" if ok else "FAILED"))
        return 0 if ok else 1
    finally:
        try:
            nvim.command("qa!")
        except Exception:  # noqa: BLE001
            pass


if __name__ == "__main__":
    sys.exit(main())
