"""Wire tests: the real SDK clients against aioresponses; every request they send is inspectable."""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any
from unittest.mock import Mock

import pytest
from aiohttp import ClientResponse
from aioresponses import aioresponses
from azure.core.pipeline.transport import AioHttpTransport

from batchpilot.backends.azure import AzureBackend
from batchpilot.config import AzureSettings, BatchSettings, StorageSettings
from tests.helpers import FakeClock

BATCH = "https://acct.westeurope.batch.azure.com"
BLOBS = "https://store.blob.core.windows.net"
BATCH_KEY = "YmF0Y2gta2V5LXRoYXQtbXVzdC1uZXZlci1sZWFr"  # base64 of "batch-key-that-must-never-leak"
STORAGE_KEY = "c3RvcmFnZS1rZXktdGhhdC1tdXN0LW5ldmVyLWxlYWs="
ODATA_JSON = "application/json;odata=minimalmetadata"


class _Response(ClientResponse):
    """aioresponses 0.7.9 builds responses without aiohttp 3.14's `stream_writer` argument
    (pnuckowski/aioresponses#289); supplying it here is the whole fix."""

    def __init__(self, method: str, url: Any, **kwargs: Any) -> None:
        kwargs.setdefault("stream_writer", Mock())
        super().__init__(method, url, **kwargs)


class Http(aioresponses):  # type: ignore[misc]
    """aioresponses with the response-class fix applied to every registered reply."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.ordered: list[Any] = []

    def add(self, url: Any, method: str = "GET", **kwargs: Any) -> None:
        kwargs.setdefault("response_class", _Response)
        super().add(url, method, **kwargs)

    def batch_error(self, method: str, path: str, status: int, code: str, **kwargs: Any) -> None:
        """A Batch error reply as the service sends it."""
        body = {"code": code, "message": {"lang": "en-US", "value": f"{code} message\nRequestId:1\nTime:now"}}
        self.add(_path(BATCH, path), method, status=status, payload=body, content_type=ODATA_JSON, **kwargs)

    def batch(self, method: str, path: str, status: int = 200, payload: Any = None, **kwargs: Any) -> None:
        self.add(
            _path(BATCH, path), method, status=status, payload=payload, content_type=ODATA_JSON, **kwargs
        )

    def _build_request_call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        # aioresponses groups calls by (method, url); keep the order in which they were sent too.
        call = super()._build_request_call(method, *args, **kwargs)
        self.ordered.append(call)
        return call

    def sent(self, method: str | None = None) -> list[Sent]:
        """Every request, in order of sending."""
        urls = {id(call): (verb, url) for (verb, url), calls in self.requests.items() for call in calls}
        result = []
        for call in self.ordered:
            verb, url = urls[id(call)]
            headers = {k.lower(): v for k, v in (call.kwargs.get("headers") or {}).items()}
            query = dict(url.query.items())
            if method is None or verb == method:
                result.append(Sent(verb, url.path, query, headers, call.kwargs.get("data")))
        return result


def _path(base: str, path: str) -> re.Pattern[str]:
    # Match the path exactly, with any query string.
    return re.compile(re.escape(base + path) + r"(\?.*)?$")


@dataclass(frozen=True)
class Sent:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    data: Any

    def json(self) -> Any:
        raw = self.data.decode() if isinstance(self.data, bytes) else self.data
        return json.loads(raw)


@pytest.fixture
def http() -> Iterator[Http]:
    with Http() as mock:
        yield mock


@pytest.fixture
def retry_sleeps(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """Both SDKs' retry policies wait through the transport; record the waits instead of sleeping."""
    slept: list[float] = []

    async def sleep(self: AioHttpTransport, duration: float) -> None:
        slept.append(duration)

    monkeypatch.setattr(AioHttpTransport, "sleep", sleep)
    return slept


@pytest.fixture
def settings() -> AzureSettings:
    return AzureSettings(
        batch=BatchSettings(endpoint=BATCH, account="acct", access_key=BATCH_KEY),
        storage=StorageSettings(account="store", account_url=BLOBS, account_key=STORAGE_KEY),
    )


@pytest.fixture
def clock() -> FakeClock:
    """The backend's clock: its waits for a pool are recorded, not slept."""
    return FakeClock()


@pytest.fixture
async def backend(
    settings: AzureSettings, retry_sleeps: list[float], clock: FakeClock
) -> AsyncIterator[AzureBackend]:
    async with AzureBackend(settings, retry_total=2, clock=clock) as opened:
        yield opened
