"""One place that turns expected failures into short messages users can act on."""

from __future__ import annotations


class RemoteDevError(Exception):
    """An expected failure: the message names the host, file or key and says what to do."""

    def __init__(self, message: str, *, kind: str = "error") -> None:
        super().__init__(message)
        self.message = message
        self.kind = kind

    def __str__(self) -> str:
        return self.message


class ConfigError(RemoteDevError):
    def __init__(self, file: str, key: str | None, problem: str) -> None:
        where = f"{file}: {key}: " if key else f"{file}: "
        super().__init__(where + problem, kind="config")
        self.file = file
        self.key = key
        self.problem = problem


class ConnectError(RemoteDevError):
    def __init__(self, message: str, *, kind: str = "connect", retry: bool = False) -> None:
        super().__init__(message, kind=kind)
        self.retry = retry


class AgentCallError(RemoteDevError):
    """The agent answered a request with an error."""

    def __init__(self, method: str, kind: str, message: str) -> None:
        super().__init__(message, kind=f"agent:{kind}")
        self.method = method
        self.agent_kind = kind
