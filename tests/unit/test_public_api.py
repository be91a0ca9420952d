"""The public API an embedding application uses is exported from `batchpilot`, and only what exists."""

from __future__ import annotations

import batchpilot


def test_every_exported_name_exists_and_the_embedding_api_is_there():
    assert [name for name in batchpilot.__all__ if not hasattr(batchpilot, name)] == []
    assert {
        "Orchestrator",
        "Workload",
        "TaskTemplate",
        "PoolSpec",
        "BlobInputs",
        "CleanupPolicy",
        "Event",
        "EventStream",
        "RunSummary",
        "Subscriber",
        "LocalBackend",
    } <= set(batchpilot.__all__)
    assert callable(batchpilot.Orchestrator.stop_monitoring)
