"""One side of one scenario in a process of its own: `python -m benchmarks.worker SIDE CONFIG RESULT`.

Peak memory is this process's ru_maxrss (resident set, the whole interpreter with its SDKs), read at the end.
With BENCH_PROFILE=PREFIX set, the run is profiled with cProfile into PREFIX.SIDE.prof.
"""

from __future__ import annotations

import os
import resource
import sys
from pathlib import Path

import anyio

from . import instrument
from .common import SideConfig, SideResult


def main(argv: list[str]) -> int:
    side, config_path, result_path = argv
    if profile := os.environ.get("BENCH_PROFILE"):
        import cProfile

        profiler = cProfile.Profile()
        profiler.enable()
        try:
            return _main(side, config_path, result_path)
        finally:
            profiler.disable()
            profiler.dump_stats(f"{profile}.{side}.prof")
    return _main(side, config_path, result_path)


def _main(side: str, config_path: str, result_path: str) -> int:
    config = SideConfig.load(Path(config_path))
    instrument.install(config.storage_port, config.storage_latency_ms)
    result: SideResult
    if side == "baseline":
        from . import baseline

        result = baseline.run(config)
    else:
        from . import pilot

        result = anyio.run(pilot.run, config)
    result.storage_requests = instrument.COUNTER.storage
    result.batch_requests = instrument.COUNTER.batch
    usage = resource.getrusage(resource.RUSAGE_SELF)
    result.max_rss_mb = usage.ru_maxrss / 1024
    result.cpu_s = usage.ru_utime + usage.ru_stime
    result.dump(Path(result_path))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
