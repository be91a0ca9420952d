"""One side of one scenario in a process of its own: `python -m benchmarks.worker SIDE CONFIG RESULT`.

Peak memory is this process's VmHWM (peak resident set, the whole interpreter with its SDKs), read at the end.
With BENCH_PROFILE=PREFIX set, the run is profiled with cProfile into PREFIX.SIDE.prof; with
BENCH_TRACEMALLOC=PREFIX, the allocation sites at the peak of traced memory go to PREFIX.SIDE.txt.
"""

from __future__ import annotations

import os
import resource
import sys
from pathlib import Path

import anyio

from . import instrument
from .common import SideConfig, SideResult


def _trace_memory(path: str) -> None:
    """BENCH_TRACEMALLOC=FILE: every 2 s, if more is traced than ever before, keep a snapshot; at exit, write
    the 30 largest allocation sites of the peak snapshot to FILE (slow: for finding where memory goes)."""
    import atexit
    import threading
    import time
    import tracemalloc

    tracemalloc.start(8)
    peak: dict[str, object] = {"size": 0, "snapshot": None}

    def sample() -> None:
        while True:
            time.sleep(2)
            current, _ = tracemalloc.get_traced_memory()
            if current > int(str(peak["size"])):
                peak["size"], peak["snapshot"] = current, tracemalloc.take_snapshot()

    def dump() -> None:
        snapshot = peak["snapshot"]
        if not isinstance(snapshot, tracemalloc.Snapshot):
            return
        with open(path, "w") as out:
            out.write(f"peak traced: {int(str(peak['size'])) / 1e6:.1f} MB\n")
            for stat in snapshot.statistics("traceback")[:30]:
                out.write(f"{stat.size / 1e6:8.2f} MB {stat.count:9,} blocks\n")
                for line in stat.traceback.format()[-8:]:
                    out.write(f"    {line}\n")

    threading.Thread(target=sample, daemon=True).start()
    atexit.register(dump)


def _peak_rss_mb(fallback: float) -> float:
    """This process's own peak resident set: VmHWM, which belongs to the address space made at exec. Not
    ru_maxrss: Linux carries into it the high-water mark of the process that spawned it (exec_mmap merges the
    old address space's), so a worker started by a harness holding a big emulator reported the harness's
    peak (a 10,000-task side read 213.7 MB after earlier scenarios, 100.3 MB alone)."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return fallback


def main(argv: list[str]) -> int:
    side, config_path, result_path = argv
    if traced := os.environ.get("BENCH_TRACEMALLOC"):
        _trace_memory(f"{traced}.{side}.txt")
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
    result.max_rss_mb = _peak_rss_mb(usage.ru_maxrss / 1024)
    result.cpu_s = usage.ru_utime + usage.ru_stime
    result.dump(Path(result_path))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
