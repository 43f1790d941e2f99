"""A headless Neovim listening on a socket with a real UI attached (a second client that
calls nvim_ui_attach at a real size and reads every redraw, as a terminal UI does), for
the tests and benches about how fast Neovim answers while output streams in.

The driving client (`UiNvim.api`) is a plain pynvim socket client; the UI client lives in
its own thread with its own pynvim session and only drains redraw notifications."""

from __future__ import annotations

import contextlib
import os
import subprocess
import threading
import time
from pathlib import Path
from typing import Any, Callable


class UiNvim:
    def __init__(self, nvim: str, init: str, sock: Path, env: dict[str, str], width: int = 180,
                 height: int = 45) -> None:
        self.sock = sock
        self.proc = subprocess.Popen([nvim, "--headless", "--listen", str(sock), "-u", init, "-i", "NONE", "-n"],
                                     env={**os.environ, **env}, stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            self._connect(sock, width, height)
        except BaseException:
            self.proc.kill()         # nothing left behind when it did not come up
            self.proc.wait(10)
            raise

    def _connect(self, sock: Path, width: int, height: int) -> None:
        import pynvim

        deadline = time.monotonic() + 30
        while not sock.exists():
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise RuntimeError(f"Neovim did not listen on {sock}")
            time.sleep(0.02)
        while True:      # the socket file exists from bind(); connections are taken from listen()
            try:
                self.api = pynvim.attach("socket", path=str(sock))
                break
            except ConnectionRefusedError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.02)
        self.redraws = 0             # redraw batches the UI received
        self._ui_ready = threading.Event()
        self._ui_error: list[BaseException] = []
        self._ui = threading.Thread(target=self._ui_loop, args=(width, height), daemon=True)
        self._ui.start()
        if not self._ui_ready.wait(30):
            raise RuntimeError(f"the UI did not attach: {self._ui_error}")
        if self._ui_error:
            raise RuntimeError(f"the UI did not attach: {self._ui_error[0]}")

    def _ui_loop(self, width: int, height: int) -> None:
        import pynvim

        try:
            ui = pynvim.attach("socket", path=str(self.sock))
            ui.ui_attach(width, height, rgb=True)
        except BaseException as e:  # noqa: BLE001 - reported by __init__
            self._ui_error.append(e)
            self._ui_ready.set()
            return
        self._ui_ready.set()

        def on_note(name: str, args: Any) -> None:
            if name == "redraw":
                self.redraws += 1
        with contextlib.suppress(Exception):   # ends when Neovim exits
            ui.run_loop(None, on_note)

    def ui_size(self) -> tuple[int, int]:
        return self.api.options["columns"], self.api.options["lines"]

    def close(self) -> None:
        with contextlib.suppress(Exception):   # it exits while answering
            self.api.command("qa!")
        with contextlib.suppress(Exception):
            self.api.close()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
        self._ui.join(5)


def answer_times(api: Any, done: Callable[[], bool], timeout: float, every: float = 0.005,
                 check_every: float = 0.1) -> list[float]:
    """Ask Neovim `1+1` every `every` seconds until done() (asked every `check_every`
    seconds, through the same client) is true; each answer's time in ms."""
    out: list[float] = []
    deadline = time.monotonic() + timeout
    next_check = 0.0
    while True:
        now = time.monotonic()
        if now >= next_check:
            if done():
                return out
            if now > deadline:
                raise TimeoutError(f"not done after {timeout} s")
            next_check = now + check_every
        t0 = time.perf_counter()
        assert api.eval("1+1") == 2
        out.append((time.perf_counter() - t0) * 1000)
        time.sleep(every)
