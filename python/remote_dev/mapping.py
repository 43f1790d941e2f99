"""Local <-> remote <-> container paths: one table for sync, quickfix and nvim-dap."""

from __future__ import annotations

import os
import posixpath
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class PathMapping:
    local_root: Path          # folder holding .remote-dev.toml
    remote_root: str          # absolute path on the remote (after ~ expansion)
    container_root: str | None = None   # workdir the tree is mounted at inside a container
    # (remote folder, local folder) of the :RemoteEnv mirror: the target's libraries
    libraries: tuple[tuple[str, str], ...] = ()

    def roots(self) -> list[str]:
        """Remote-side roots, most specific first."""
        out = [self.remote_root.rstrip("/")]
        if self.container_root:
            out.append(self.container_root.rstrip("/") or "/")
        return sorted(out, key=len, reverse=True)

    def to_local(self, path: str, cwd: str | None = None) -> str | None:
        """The local file for a path printed by a remote program (relative paths are
        taken from cwd, by default the remote root), or None when outside the project."""
        if not path:
            return None
        if not path.startswith("/"):
            path = posixpath.join(cwd or self.remote_root, path)
        path = posixpath.normpath(path)
        for root in self.roots():
            if path == root:
                return str(self.local_root)
            if path.startswith(root + "/"):
                rel = path[len(root) + 1:]
                return str(self.local_root / rel)
        return self.library_file(path)

    def library_file(self, path: str) -> str | None:
        """The mirror's copy of a remote library file (the longest mirrored folder holding
        it), when the mirror has it; else None."""
        for remote, local in sorted(self.libraries, key=lambda rl: len(rl[0]), reverse=True):
            if path.startswith(remote.rstrip("/") + "/"):
                mirrored = os.path.join(local, path[len(remote.rstrip("/")) + 1:])
                return mirrored if os.path.isfile(mirrored) else None
        return None

    def rel(self, local_path: str | Path) -> str:
        """Path relative to the local root, with '/' separators; ValueError outside it."""
        p = Path(os.path.abspath(local_path))
        try:
            return p.relative_to(self.local_root).as_posix()
        except ValueError:
            return p.resolve().relative_to(self.local_root.resolve()).as_posix()

    def dap_path_mappings(self, *, in_container: bool = False) -> list[dict[str, str]]:
        """The project, then every mirrored library folder, longest first (a container
        target's are the image's folders, as its programs see them)."""
        root = self.container_root if in_container and self.container_root else self.remote_root
        out = [{"localRoot": str(self.local_root), "remoteRoot": root}]
        for remote, local in sorted(self.libraries, key=lambda rl: len(rl[0]), reverse=True):
            out.append({"localRoot": local, "remoteRoot": remote})
        return out
