"""A Batch service emulator: the REST subset `azure.batch.aio.BatchClient` uses, served over HTTP.

Tasks run on this machine through the local executor; resource files are fetched from their URLs and outputs
uploaded to blob containers (Azurite) by SAS URL. Faults can be injected for tests and benchmarks.
"""

from .app import Emulator, RunningEmulator, create_app, running, serve
from .config import DEFAULT_ACCOUNT, DEFAULT_KEY, EmulatorConfig
from .faults import FaultConfig, RequestKind
from .host import emulator_in_thread

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
