"""A Batch service emulator: the REST subset `azure.batch.aio.BatchClient` uses, served over HTTP.

Tasks run on this machine through the local executor; resource files are fetched from their URLs and outputs
uploaded to blob containers (Azurite) by SAS URL. Faults can be injected for tests and benchmarks.
"""

from typing import TYPE_CHECKING, Any

from .config import DEFAULT_ACCOUNT, DEFAULT_KEY, EmulatorConfig
from .faults import FaultConfig, RequestKind

if TYPE_CHECKING:
    from .app import Emulator, RunningEmulator, create_app, running, serve
    from .host import emulator_in_thread

# The server (aiohttp, the storage SDK) loads on first use: every `batchpilot` command builds the emulator's
# argument parser, and only `batchpilot emulator` needs the server.
_LAZY = {
    "Emulator": "app", "RunningEmulator": "app", "create_app": "app", "running": "app", "serve": "app",
    "emulator_in_thread": "host",
}  # fmt: skip


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from importlib import import_module

    return getattr(import_module(f".{_LAZY[name]}", __name__), name)


__all__ = (
    "DEFAULT_ACCOUNT",
    "DEFAULT_KEY",
    "Emulator",
    "EmulatorConfig",
    "FaultConfig",
    "RequestKind",
    "RunningEmulator",
    "create_app",
    "emulator_in_thread",
    "running",
    "serve",
)
