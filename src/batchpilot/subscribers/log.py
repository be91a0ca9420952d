"""One structured log line per event, under the event's `kind`, with stable keys."""

from __future__ import annotations

import dataclasses
import enum
import logging
from datetime import datetime
from pathlib import Path
from typing import Any

import structlog

from ..events import (
    Event,
    MonitorDegraded,
    OutputDownloadFailed,
    RunFinished,
    TaskFailed,
    TaskOutputsMissing,
    TaskRequeued,
)
from ..records import FailureInfo

_LEVELS = {"info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}
_WARNINGS = (TaskFailed, TaskOutputsMissing, TaskRequeued, OutputDownloadFailed, MonitorDegraded)


def event_fields(event: Event) -> dict[str, Any]:
    """The event as flat, JSON-friendly log fields: enums as values, failure and summary spread out."""
    fields: dict[str, Any] = {}
    for name in _field_names(type(event)):
        value = getattr(event, name)
        if type(value) in _PLAIN_TYPES:
            fields[name] = value
        elif isinstance(value, FailureInfo):
            fields.update(
                failure_category=value.category, failure_code=value.code, failure_message=value.message
            )
        elif isinstance(event, RunFinished) and name == "summary":
            summary = dataclasses.asdict(value)
            summary["failed"] = [failed["task_id"] for failed in summary["failed"]]
            summary.pop("run_id")
            summary.pop("kept", None)  # each logged on its own (resource_kept)
            fields.update(summary, ok=value.ok)
        else:
            fields[name] = _plain(value)
    return fields


# Values logged as they are (exact types: an enum of str is not one).
_PLAIN_TYPES = frozenset({str, int, float, bool, type(None)})


_FIELD_NAMES: dict[type[Event], tuple[str, ...]] = {}


def _field_names(kind: type[Event]) -> tuple[str, ...]:
    """An event class's fields but `at` (each line has its own timestamp), in order; looked up once per
    event class."""
    names = _FIELD_NAMES.get(kind)
    if names is None:
        names = _FIELD_NAMES[kind] = tuple(
            item.name for item in dataclasses.fields(kind) if item.name != "at"
        )
    return names


def _plain(value: Any) -> Any:
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, datetime):
        return value.isoformat()  # JSON has no time: ISO 8601, UTC offset included
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    return value


class LogSubscriber:
    """Logs every event: warnings for failures and requeues, an error for a failed run; info otherwise."""

    def __init__(self, logger: Any = None) -> None:
        self._given = logger
        # The level is checked before an event's fields are built (the chain's filter_by_level would drop
        # the line only after): under --log-level warning the per-task info events cost next to nothing.
        self._enabled = logging.getLogger("batchpilot").isEnabledFor if logger is None else None
        self._bound: Any = None
        self._bound_for: tuple[int, ...] = ()

    def _logger(self) -> Any:
        """The logger to log with: the one given, else structlog's, assembled once for the configuration in
        force (a lazy proxy assembles a new one at each line; a new configuration is followed)."""
        if self._given is not None:
            return self._given
        config = tuple(map(id, structlog.get_config().values()))
        if config != self._bound_for:
            self._bound, self._bound_for = structlog.get_logger("batchpilot").bind(), config
        return self._bound

    async def __call__(self, event: Event) -> None:
        level = "warning" if isinstance(event, _WARNINGS) else "info"
        if isinstance(event, RunFinished) and not event.summary.ok:
            level = "error"
        if self._enabled is not None and not self._enabled(_LEVELS[level]):
            return
        getattr(self._logger(), level)(event.kind, **event_fields(event))
