"""structlog set-up: console lines on a terminal, JSON lines otherwise, secrets redacted in both.

This module holds the process's logging configuration, which is global state: call `configure_logging` once,
at the entry point (the CLI does). Library users who embed batchpilot configure structlog themselves, or call
this. Standard-library loggers (azure-core's among them) are routed through the same chain, so no line
escapes redaction.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
from collections.abc import Callable, Iterable, MutableMapping
from pathlib import Path
from typing import Any, Literal, TextIO


def _import_structlog_without_rich() -> None:
    """Import structlog without the rich it imports for its development tracebacks (60-100 ms at start-up).

    `import structlog` imports `structlog.dev` and `structlog.tracebacks`, which import rich if it is
    installed, only to format exceptions on a console. batchpilot never shows a traceback (one line per
    error), so structlog is imported once with rich hidden: both modules then fall back to plain tracebacks,
    and rich stays importable for the progress bar. Nothing happens if either is already imported.
    """
    if "structlog" in sys.modules or "rich" in sys.modules:
        return
    sys.modules["rich"] = None  # type: ignore[assignment]  # makes `import rich` raise ImportError
    try:
        import structlog  # noqa: F401
    finally:
        del sys.modules["rich"]


_import_structlog_without_rich()

import structlog  # noqa: E402
from structlog.typing import EventDict, Processor, WrappedLogger  # noqa: E402

from .redact import redact  # noqa: E402
from .text import FIELD_CHARS, bounded, safe_text  # noqa: E402

# A traceback (format_exc_info) is kept longer than other fields: it is for whoever debugs.
_TRACEBACK_CHARS = 20_000

LogFormat = Literal["console", "json"]

_known_secrets: set[str] = set()

# Log lines repeat most of their strings (run, job, task and node ids, states, names): the redacted form of
# each short one is kept, so that it is searched once, not on every line. Bounded: emptied when full.
_REDACTED_KEPT = 4096
_REDACTED_MAX_CHARS = 256
_redacted: dict[str, str] = {}


def register_secrets(secrets: Iterable[str | None]) -> None:
    """Secrets this process holds (keys, connection strings): masked wherever they appear in a log line."""
    global _redacted, _safe
    _known_secrets.update(secret for secret in secrets if secret)
    # What was redacted without them is forgotten (new dicts: a line being rendered in another thread
    # meanwhile stores its result in the old ones).
    _redacted, _safe = {}, {}


def redact_text(text: str) -> str:
    if len(text) > _REDACTED_MAX_CHARS:
        return redact(text, _known_secrets)
    kept = _redacted
    done = kept.get(text)
    if done is None:
        done = redact(text, _known_secrets)
        if len(kept) >= _REDACTED_KEPT:
            kept.clear()
        kept[text] = done
    return done


def _redact_value(value: Any) -> Any:
    if isinstance(value, str):
        return redact_text(value)
    if isinstance(value, MutableMapping):
        return {key: _redact_value(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_redact_value(item) for item in value]
    if isinstance(value, BaseException | Path):
        return redact_text(str(value))
    return value


def redact_secrets(_logger: WrappedLogger, _method: str, event_dict: EventDict) -> EventDict:
    """A structlog processor: every string in the event, exception text included, goes through `redact`."""
    return {key: _redact_value(value) for key, value in event_dict.items()}


def bound_values(_logger: WrappedLogger, _method: str, event_dict: EventDict) -> EventDict:
    """A structlog processor, after redaction (a secret is masked whole before any cut): every value capped
    and its control characters escaped (`text.bounded`), so no log line grows with what a task wrote and
    none can drive the terminal (BatchExplorer#457)."""
    return {
        key: bounded(value, chars=_TRACEBACK_CHARS if key == "exception" else FIELD_CHARS)
        for key, value in event_dict.items()
    }


def default_format(stream: TextIO) -> LogFormat:
    return "console" if stream.isatty() else "json"


# The safe form (`redact_secrets`, then `bound_values`) of the short strings lines repeat, as `_redacted`.
_safe: dict[str, str] = {}


def safe_fields(_logger: WrappedLogger, _method: str, event_dict: EventDict) -> EventDict:
    """A structlog processor: `redact_secrets` then `bound_values`, in one pass over the event, each short
    string's result looked up once (lines repeat their ids, states and names)."""
    safe: dict[str, Any] = {}
    kept = _safe
    for key, value in event_dict.items():
        if type(value) is str and len(value) <= _REDACTED_MAX_CHARS:
            done = kept.get(value)
            if done is None:
                # Both caps are far above a short string's length, so the key does not matter here.
                done = safe_text(redact_text(value), FIELD_CHARS)
                if len(kept) >= _REDACTED_KEPT:
                    kept.clear()
                kept[value] = done
            safe[key] = done
        else:
            safe[key] = bounded(
                _redact_value(value), chars=_TRACEBACK_CHARS if key == "exception" else FIELD_CHARS
            )
    return safe


def _shared_processors() -> list[Processor]:
    return [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True, key="timestamp"),
        structlog.processors.format_exc_info,
        safe_fields,
    ]


def configure_logging(
    *,
    fmt: LogFormat | None = None,
    level: str = "info",
    stream: TextIO | None = None,
    log_file: Path | None = None,
) -> None:
    """Send structured logs to `stream` (stdout by default) and, as JSON lines, to `log_file` if given."""
    stream = stream or sys.stdout
    fmt = fmt or default_format(stream)
    renderer: Processor = (
        structlog.dev.ConsoleRenderer(colors=stream.isatty())
        if fmt == "console"
        else structlog.processors.JSONRenderer()
    )
    console = _handler(_StreamHandler(stream), renderer)
    console.setLevel(level.upper())
    handlers: list[logging.Handler] = [console]
    if log_file is not None:
        # The file is for log shippers: it keeps every event, whatever the console shows.
        to_file = _handler(_FileHandler(log_file, encoding="utf-8"), structlog.processors.JSONRenderer())
        to_file.setLevel(min(logging.INFO, console.level))
        handlers.append(to_file)
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
        with contextlib.suppress(OSError, ValueError):  # a stream its owner closed already
            old.flush()
        old.close()
    for handler in handlers:
        root.addHandler(handler)
    root.setLevel(min(handler.level for handler in handlers))
    # The SDKs log every HTTP request at INFO; keep their warnings and errors only.
    for noisy in ("azure", "azure.core.pipeline.policies.http_logging_policy", "aiohttp.access"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    structlog.configure(
        processors=[
            structlog.stdlib.filter_by_level,
            *_shared_processors(),
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=False,
    )


def _handler(handler: logging.Handler, renderer: Processor) -> logging.Handler:
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[structlog.stdlib.add_logger_name, *_shared_processors()],
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
        )
    )
    return handler


class _FlushSoon:
    """When a handler's lines are flushed: a line at warning or above at once (with every line before it),
    and so is a line written outside an event loop (a worker thread, a synchronous caller); other lines
    once per turn of the event loop that wrote them, all together (`loop.call_soon`), instead of one
    write to the stream per line. The loop runs the flush before it waits for anything, and asyncio runs
    its last callbacks before it closes, so lines reach the stream as before, in order, only in fewer
    writes; at the process's exit `logging.shutdown` flushes whatever remains."""

    def __init__(self, flush: Callable[[], None]) -> None:
        self._flush = flush
        self._scheduled_on: asyncio.AbstractEventLoop | None = None

    def written(self, level: int) -> None:
        if level < logging.WARNING:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                pass
            else:
                # Another loop's flush (another thread's, or a closed one's) is not counted on.
                if self._scheduled_on is not loop:
                    self._scheduled_on = loop
                    loop.call_soon(self._due)
                return
        self._flush()

    def _due(self) -> None:
        self._scheduled_on = None
        with contextlib.suppress(OSError, ValueError):  # a stream closed meanwhile: nothing to flush to
            self._flush()


class _StreamHandler(logging.StreamHandler[TextIO]):
    """A StreamHandler whose lines are flushed as `_FlushSoon` says, not each on its own."""

    def __init__(self, stream: TextIO) -> None:
        super().__init__(stream)
        self._flush_soon = _FlushSoon(self.flush)

    def emit(self, record: logging.LogRecord) -> None:
        _write_soon(self, self._flush_soon, record)


class _FileHandler(logging.FileHandler):
    """A FileHandler whose lines are flushed as `_FlushSoon` says, not each on its own."""

    def __init__(self, path: Path, *, encoding: str) -> None:
        super().__init__(path, encoding=encoding)
        self._flush_soon = _FlushSoon(self.flush)

    def emit(self, record: logging.LogRecord) -> None:
        if self.stream is None:  # closed: FileHandler reopens it
            super().emit(record)
            return
        _write_soon(self, self._flush_soon, record)


def _write_soon(
    handler: logging.StreamHandler[Any], flush_soon: _FlushSoon, record: logging.LogRecord
) -> None:
    """`StreamHandler.emit` without its flush: the line written, its flush left to `flush_soon`."""
    try:
        handler.stream.write(handler.format(record) + handler.terminator)
        flush_soon.written(record.levelno)
    except RecursionError:
        raise
    except Exception:
        handler.handleError(record)
