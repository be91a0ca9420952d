"""Benchmarks: batchpilot against the Azure Batch ffmpeg tutorial's flow, side by side (`scripts/bench`).

Not tests: they measure and report. `harness.py` runs the scenarios, `baseline.py` is the tutorial's flow with
the synchronous SDKs, `pilot.py` embeds the Orchestrator, `worker.py` runs either in a subprocess of its own
(so peak memory is that side's alone), `report.py` writes the table, the markdown and the chart.
"""
