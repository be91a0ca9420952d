"""What the harness hands a worker and what a worker hands back, as JSON-friendly dataclasses."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any


@dataclass(frozen=True, slots=True)
class SideConfig:
    """One side's run: where the services are and what workload to carry through them."""

    name: str  # distinct per scenario and side: job id, pool id and containers derive from it
    endpoint: str
    account: str
    key: str
    storage_connection_string: str
    storage_port: int
    storage_latency_ms: float
    inputs: list[str]
    upload: bool  # False: inputs count as already in storage (the 10,000-task scenario)
    nodes: int
    slots: int
    outputs: bool = True  # False: tasks name no output file (the scale rows: Azurite is one thread)
    submit_only: bool = False  # True: stop once every task is submitted (the latency sweep)

    def dump(self, path: Path) -> None:
        path.write_text(json.dumps(asdict(self)))

    @classmethod
    def load(cls, path: Path) -> SideConfig:
        return cls(**json.loads(path.read_text()))


@dataclass(slots=True)
class SideResult:
    """Stage boundaries (epoch seconds), first-seen completion times, client-side request counts."""

    side: str
    started: float = 0.0
    uploaded: float = 0.0
    submitted: float = 0.0
    finished: float = 0.0
    seen: dict[str, float] = field(default_factory=dict)
    storage_requests: int = 0
    batch_requests: int = 0
    monitor_loops: int = 0
    tasks_listed: int = 0  # task records the monitor received, summed over its listings
    max_rss_mb: float = 0.0
    submit_cpu_s: float = 0.0  # this process's CPU (user + system) during the submit stage
    cpu_s: float = 0.0  # this process's CPU over the whole run
    ok: bool = True
    note: str = ""

    def dump(self, path: Path) -> None:
        path.write_text(json.dumps(asdict(self)))

    @classmethod
    def load(cls, path: Path) -> SideResult:
        data: dict[str, Any] = json.loads(path.read_text())
        return cls(**data)


BLOB_SAS_HOURS = 2
TASK_COMMAND = "ffmpeg -hide_banner -nostdin -loglevel error -y -i {input} -vn -codec:a libmp3lame {stem}.mp3"
