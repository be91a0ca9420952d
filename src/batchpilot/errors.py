"""One exception family for everything batchpilot raises on purpose.

`ConfigError` is a user mistake (bad flag, missing setting, unreadable input): the CLI prints its message as
one line and exits 2. `BackendError` is the service (or the local machine standing in for it) saying no;
`transient` tells the caller whether trying again may help. Messages never carry secrets: backends build
them from service codes and resource names, and the log chain redacts anything that slips through.
"""

from __future__ import annotations


class BatchpilotError(Exception):
    """Root of every error batchpilot raises deliberately."""


class ConfigError(BatchpilotError):
    """A user mistake: a flag, setting, input or path that cannot work. Exit code 2."""


class ToolNotFoundError(ConfigError):
    """A program the workload needs (ffmpeg, docker) is not available."""


class UnsupportedImageError(ConfigError):
    """The pool's image or node agent is one the service does not take (not listed, past its end of Batch
    support, a node agent that does not go with it, or the wrong Hyper-V generation for the VM size).
    Raised before anything is created; the message names a supported replacement."""


class BackendError(BatchpilotError):
    """The compute or storage service refused or failed a request."""

    transient: bool = False

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        self.code = code


class TransientBackendError(BackendError):
    """Worth retrying: throttling, server errors, dropped connections."""

    transient = True

    def __init__(self, message: str, *, code: str | None = None, retry_after: float | None = None) -> None:
        super().__init__(message, code=code)
        self.retry_after = retry_after


class RequestTooLargeError(BackendError):
    """The request body exceeded the service's limit; the caller should send less per request."""


class NotFoundError(BackendError):
    """The pool, job, task, container or blob named does not exist."""


class AuthenticationError(BackendError):
    """The service rejected our credentials. Never retried."""


class RunTimeoutError(BatchpilotError):
    """The run did not finish within its timeout; what it created is left in place for a resume."""


class LostContactError(BackendError):
    """Polls kept failing past the deadline: task states are unknown, and the tasks go on without us."""


class ImageCheckError(BackendError):
    """The service's supported images could not be read, so the pool's image is unchecked: nothing was
    created, and the run stops rather than skip the check."""
