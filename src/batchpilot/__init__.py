"""batchpilot: run parallel workloads on Azure Batch or locally, with an async event-driven orchestrator."""
