"""Logging in as a person: the server's keyboard-interactive and password prompts (a
one-time code, a Duo choice, a password after the key) answered by whoever sits at the
front-end, and what the server still wanted when a login fails.

The front-end gives an ``Ask``: it shows the server's own prompt text and instructions
(echo off where the server says so) and returns the answers, or None when the person
cancels.  Answers are handed to asyncssh and forgotten: never stored, logged or configured.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import Awaitable, Callable, Optional

import asyncssh

log = logging.getLogger("remote_dev")

PROMPT_TIMEOUT = 300   # a person who walked away: the login ends (sshd's LoginGraceTime is 120 s)


@dataclass
class Challenge:
    """What the server asks, as it says it: ``prompts`` are (text, echo) pairs."""
    host: str            # the host as the person knows it (a ProxyJump hop names its own)
    user: str
    name: str
    instructions: str
    prompts: list[tuple[str, bool]]
    why: str = ""        # e.g. why we log in again: the connection was lost

    def payload(self) -> dict[str, object]:
        return {"host": self.host, "user": self.user, "name": self.name, "instructions": self.instructions,
                "prompts": [{"text": t, "echo": e} for t, e in self.prompts], "why": self.why}


Ask = Callable[[Challenge], Awaitable[Optional[list[str]]]]
# Is the person's OpenSSH master connection to the target open?  Then it serves instead of asking.
MasterCheck = Callable[[], Awaitable[bool]]


@dataclass
class LoginState:
    """What happened during one login, to say truthfully why it failed."""
    keys_ran_out: bool = False        # every key was tried and refused (or there was none)
    kbdint_wanted: bool = False       # the server asked for keyboard-interactive
    password_wanted: bool = False
    answered: int = 0                 # challenges the person answered
    refused: str = ""                 # "code" / "password": an answer the server refused
    cancelled: bool = False
    no_person: str = ""               # the prompt nobody could answer (no front-end to ask)
    asking: bool = False
    use_master: bool = False          # a prompt came, and the person's OpenSSH master serves instead
    progress: int = 0                 # bumps on each answer: the connect timeout restarts
    prompts_seen: list[str] = field(default_factory=list)


class LoginClient(asyncssh.SSHClient):
    """The asyncssh client of one connection (or one ProxyJump hop): hands the server's
    prompts to the person, remembers what happened."""

    def __init__(self, host: str, user: str, ask: Ask | None, why: str = "",
                 master_open: MasterCheck | None = None) -> None:
        self.host = host
        self.user = user
        self.ask = ask
        self.why = why
        self.master_open = master_open
        self.state = LoginState()

    def begin_auth(self, username: str) -> None:
        self.user = username   # as the ssh config resolved it (a hop's own User)

    def auth_banner_received(self, msg: str, lang: str) -> None:
        log.info("%s: login banner: %s", self.host, msg.strip())

    def public_key_auth_requested(self) -> None:
        # asyncssh calls this only once the keys it loaded (files, ssh-agent, certificates)
        # are all tried: none was accepted.
        self.state.keys_ran_out = True
        return None

    def kbdint_auth_requested(self) -> str | None:
        st = self.state
        if st.answered:
            # A new keyboard-interactive round after we answered: the answer was refused.
            st.refused = st.refused or "code"
            return None
        if st.cancelled or st.no_person or st.use_master:
            return None
        st.kbdint_wanted = True
        return ""

    async def kbdint_challenge_received(self, name: str, instructions: str, lang: str,
                                        prompts: list[tuple[str, bool]]) -> list[str] | None:
        if not prompts:
            if instructions.strip():
                log.info("%s: %s", self.host, instructions.strip())
            return []
        self.state.prompts_seen.extend(p for p, _ in prompts)
        answers = await self._ask(Challenge(self.host, self.user, name, instructions, list(prompts), self.why))
        if answers is not None and len(answers) != len(prompts):
            answers = None
        return answers

    async def password_auth_requested(self) -> str | None:
        st = self.state
        if st.password_wanted:
            st.refused = "password"
            return None
        st.password_wanted = True
        if st.cancelled or st.no_person or st.use_master:
            return None
        text = f"{self.user}@{self.host}'s password: "
        self.state.prompts_seen.append(text)
        answers = await self._ask(Challenge(self.host, self.user, "", "", [(text, False)], self.why))
        return answers[0] if answers else None

    async def _ask(self, challenge: Challenge) -> list[str] | None:
        st = self.state
        if self.master_open is not None and await self.master_open():
            st.use_master = True
            return None
        if self.ask is None:
            st.no_person = challenge.prompts[0][0].strip()
            return None
        st.asking = True
        try:
            answers = await asyncio.wait_for(self.ask(challenge), PROMPT_TIMEOUT)
        except asyncio.TimeoutError:
            answers = None
        finally:
            st.asking = False
            st.progress += 1
        if answers is None:
            st.cancelled = True
            return None
        st.answered += 1
        self.why = ""
        return answers


def refusal(label: str, user: str, st: LoginState) -> tuple[str, str]:
    """(kind, one line) for a login the server refused, naming what it still wanted."""
    after_key = "" if st.keys_ran_out else " after the key"
    wanted = "keyboard-interactive" if st.kbdint_wanted else "a password" if st.password_wanted else ""
    prompt = f" ({st.prompts_seen[-1].strip()})" if st.prompts_seen else ""
    if st.refused == "code":
        what = "password" if "password" in prompt.lower() else "code"
        return "auth-code", (f"{label}: the server refused the {what} for user {user}{prompt}: "
                             f"keyboard-interactive{after_key}. Nothing was kept; try again"
                             + (" with a new code." if what == "code" else "."))
    if st.refused == "password":
        return "auth-password", f"{label}: the server refused the password for user {user}."
    if st.cancelled:
        return "auth-cancelled", (f"{label}: login cancelled: the server wanted {wanted or 'an answer'}"
                                  f"{after_key}{prompt} for user {user}.")
    if st.no_person:
        return "auth-no-person", (
            f"{label}: the server wants {wanted or 'an answer'}{after_key} ({st.no_person}) for user {user}, "
            f"and nothing here can ask you: connect from Neovim or a terminal, or open an OpenSSH master "
            f"connection first (ControlMaster, see :help remote_dev-2fa).")
    if st.keys_ran_out:
        return "auth", (f"{label}: authentication failed for user {user}: no key was accepted. "
                        f"Check identity_file / IdentityFile, ssh-agent, and the remote authorized_keys.")
    return "auth", (f"{label}: authentication failed for user {user}: the server accepted none of the "
                    f"methods offered (key, keyboard-interactive, password).")
