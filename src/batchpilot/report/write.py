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


# What every page `render.py` writes holds near its start (in <title>); an existing file without it is not
# replaced, so that a mistyped --report cannot overwrite someone's data.
REPORT_MARK = b"<title>batchpilot report"
_HEAD_BYTES = 4096


def check_report_path(path: Path, *, flag: str = "--report") -> Path:
    """Raise ConfigError (one line, with the fix) unless a report can be written at `path`; creates nothing
    that stays (a temporary file is made and removed in the folder). An existing file is replaced only
    when it is empty or an earlier batchpilot report: the report is renamed over its path, which would
    destroy any other file and turn a device or a pipe into a regular file. `flag` names the option in
    the messages (`report --job` takes `--out`)."""
    if path.is_dir():
        raise ConfigError(f"{flag} {path} is a folder; give a file name such as {path / 'report.html'}")
    if path.exists() and not path.is_file():
        raise ConfigError(f"{flag} {path} is not a regular file; give a file name such as report.html")
    if path.is_file() and not _is_report(path, flag):
        raise ConfigError(
            f"{flag} {path} exists and is not a batchpilot report; it would be replaced: remove it or"
            " choose another name"
        )
    folder = path.parent
    if not folder.is_dir():
        raise ConfigError(f"{flag} {path}: the folder {folder} does not exist; create it or choose another")
    try:
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".batchpilot-report-", suffix=".tmp"):
            pass
    except OSError as exc:
        raise ConfigError(
            f"cannot write the report {path} ({exc.strerror}); choose a writable {flag} path"
        ) from None
    return path


def _is_report(path: Path, flag: str) -> bool:
    try:
        with path.open("rb") as file:
            head = file.read(_HEAD_BYTES)
    except OSError as exc:
        raise ConfigError(
            f"cannot read the existing report {path} ({exc.strerror}); choose a writable {flag} path"
        ) from None
    return not head or REPORT_MARK in head


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
