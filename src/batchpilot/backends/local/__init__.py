"""The local backend: tasks run as subprocesses on this machine, containers are folders. The default."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Self

import anyio
from anyio.abc import TaskGroup

from ...files import private_folder
from .compute import LocalCompute
from .storage import FileStager, LocalStorage

__all__ = ("LocalBackend", "LocalCompute", "LocalStorage", "default_root")


def default_root() -> Path:
    """`$BATCHPILOT_HOME/local`, else the XDG data folder: where the local 'service' keeps its state."""
    if home := os.environ.get("BATCHPILOT_HOME"):
        return Path(home) / "local"
    data = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(data) / "batchpilot" / "local"


# What a state folder holds: the compute's and the storage's folders, the bundled tools, --sample's clips.
_STATE_ENTRIES = frozenset({"batch", "storage", "tools", "samples"})


def _private_state(root: Path) -> None:
    """`root` made private (0700) when it is the state's own (absent, or holding only `_STATE_ENTRIES`);
    a folder holding anything else (`--state-dir /tmp`, a home folder) keeps its mode, and the state's
    folders in it are made private instead."""
    if not root.exists() or all(entry.name in _STATE_ENTRIES for entry in root.iterdir()):
        private_folder(root)
    else:
        for folder in ("batch", "storage"):
            private_folder(root / folder)


class LocalBackend:
    """`async with LocalBackend() as backend`: compute and storage under one root folder."""

    name = "local"

    def __init__(self, root: Path | None = None, *, tool_dirs: Sequence[Path] = ()) -> None:
        self.root = root or default_root()
        self.storage = LocalStorage(self.root / "storage")
        self.compute = LocalCompute(self.root / "batch", stager=FileStager(), tool_dirs=tool_dirs)
        self._task_group: TaskGroup | None = None

    async def __aenter__(self) -> Self:
        # The state holds a copy of every input and output: private to the user, whatever the umask. A root
        # that exists is not ours to change (`--state-dir /tmp`): its state folders are made private instead.
        await anyio.to_thread.run_sync(_private_state, self.root)
        self._task_group = anyio.create_task_group()
        await self._task_group.__aenter__()
        self.compute.attach(self._task_group)
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> bool | None:
        assert self._task_group is not None
        # Workers wait on their queues forever; closing the backend stops them (and kills running tasks).
        # The compute closes after they have ended: a task cut short writes its record, queued again, while
        # its job is still known (closing first dropped the jobs, so whether a restart found the task cut
        # short depended on its 'running' record having landed before the close).
        self._task_group.cancel_scope.cancel()
        try:
            return await self._task_group.__aexit__(exc_type, exc, tb)
        finally:
            self.compute.close()
