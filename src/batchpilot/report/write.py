"""Writing a report file: checked before a run creates anything, replaced atomically when written.

A reader (a browser, a web server serving a `serve` report) sees the old file or the new one, never half of
one: the page is written to a hidden temporary file in the same folder and renamed over the target.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

from ..errors import BatchpilotError, ConfigError


class ReportWriteError(BatchpilotError):
    """The report could not be written (disk full, folder gone, no permission); the run is not affected."""


def check_report_path(path: Path) -> Path:
    """Raise ConfigError (one line, with the fix) unless a report can be written at `path`; creates nothing
    that stays (a temporary file is made and removed in the folder)."""
    if path.is_dir():
        raise ConfigError(f"--report {path} is a folder; give a file name such as {path / 'report.html'}")
    folder = path.parent
    if not folder.is_dir():
        raise ConfigError(f"--report {path}: the folder {folder} does not exist; create it or choose another")
    try:
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".batchpilot-report-", suffix=".tmp"):
            pass
    except OSError as exc:
        raise ConfigError(
            f"cannot write the report {path} ({exc.strerror}); choose a writable --report path"
        ) from None
    return path


def write_report(path: Path, text: str) -> int:
    """Write `text` (UTF-8) to `path` atomically; returns its size in bytes. ReportWriteError when it
    cannot be written, leaving any earlier report and no temporary file behind."""
    data = text.encode()
    temporary: str | None = None
    try:
        fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=".batchpilot-report-", suffix=".tmp")
        with os.fdopen(fd, "wb") as file:
            file.write(data)
        os.chmod(temporary, 0o644)
        os.replace(temporary, path)
        temporary = None
    except OSError as exc:
        raise ReportWriteError(f"could not write the report {path}: {exc.strerror or exc}") from None
    finally:
        if temporary is not None:
            with contextlib.suppress(OSError):
                os.unlink(temporary)
    return len(data)
