"""The polling schedule moved to the core: `batchpilot.backoff.BackoffPolicy`; this name stays importable."""

from __future__ import annotations

from ..backoff import BackoffPolicy

__all__ = ("BackoffPolicy",)
