"""`python tests/e2e/cli_tee.py ARGS` runs the CLI as `python -m batchpilot.cli ARGS` would, and copies
everything it prints to $BATCHPILOT_TEST_CAPTURE, so that the end-to-end tests can check every line for
leaked secrets whatever the test itself reads (some read only the exit code, or kill the process)."""

from __future__ import annotations

import os
import sys
from typing import TextIO


class _Tee:
    """A text stream that writes through to `stream` and to `copy`; terminal questions go to `stream`."""

    def __init__(self, stream: TextIO, copy: TextIO) -> None:
        self._stream = stream
        self._copy = copy

    def write(self, text: str) -> int:
        self._copy.write(text)
        self._copy.flush()  # a test may SIGKILL us: what was printed must already be in the copy
        return self._stream.write(text)

    def __getattr__(self, name: str) -> object:
        return getattr(self._stream, name)


if __name__ == "__main__":
    capture = os.environ.get("BATCHPILOT_TEST_CAPTURE")
    if capture:
        copy = open(capture, "a", encoding="utf-8")  # noqa: SIM115 - open for the life of the process
        sys.stdout = _Tee(sys.stdout, copy)  # type: ignore[assignment]
        sys.stderr = _Tee(sys.stderr, copy)  # type: ignore[assignment]
    from batchpilot.cli import main

    sys.exit(main())
