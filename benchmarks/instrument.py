"""Client-side instruments shared by both sides, installed into a worker process before any client exists.

Azurite has no fault injection, so the same per-request latency the Batch emulator adds is added here, in
the azure-core transports, to every request bound for the storage port: a sleep before sending, `time.sleep`
in the synchronous transport and `asyncio.sleep` in the async one, so each side waits in its own style. The
patch also counts requests per service.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from azure.core.pipeline.transport import AioHttpTransport, RequestsTransport


@dataclass(slots=True)
class Counter:
    storage: int = 0
    batch: int = 0


COUNTER = Counter()


def install(storage_port: int, storage_latency_ms: float) -> None:
    delay = storage_latency_ms / 1000
    sync_send = RequestsTransport.send
    async_send = AioHttpTransport.send

    def is_storage(request: Any) -> bool:
        return bool(urlsplit(request.url).port == storage_port)

    def send(self: RequestsTransport, request: Any, **kwargs: Any) -> Any:
        if is_storage(request):
            COUNTER.storage += 1
            if delay:
                time.sleep(delay)
        else:
            COUNTER.batch += 1
        return sync_send(self, request, **kwargs)

    async def asend(self: AioHttpTransport, request: Any, **kwargs: Any) -> Any:
        if is_storage(request):
            COUNTER.storage += 1
            if delay:
                await asyncio.sleep(delay)
        else:
            COUNTER.batch += 1
        return await async_send(self, request, **kwargs)

    RequestsTransport.send = send
    AioHttpTransport.send = asend
