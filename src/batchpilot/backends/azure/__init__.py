"""The Azure backend: Batch for compute, Blob Storage for files.

    async with AzureBackend(AzureSettings.load(flags)) as backend:
        await backend.compute.ensure_pool(spec)

The backend owns its clients and any credential it creates, and closes them all on exit.
"""

from __future__ import annotations

from contextlib import AsyncExitStack
from types import TracebackType
from typing import Any, Self
from urllib.parse import urlsplit

import structlog
from azure.batch.aio import BatchClient
from azure.core.credentials_async import AsyncTokenCredential
from azure.core.pipeline import PipelineResponse
from azure.storage.blob.aio import BlobServiceClient

from ...config import AzureSettings
from .auth import Credentials
from .compute import AzureCompute
from .storage import AzureStorage, Clock, _utc_now

__all__ = ("AzureBackend", "AzureCompute", "AzureStorage", "log_retryable_response")

_log = structlog.get_logger("batchpilot.azure")
_RETRYABLE = frozenset({408, 429, 500, 502, 503, 504})


def log_retryable_response(response: PipelineResponse[Any, Any]) -> None:
    """Called by the SDK pipelines after every attempt: the SDKs retry throttling and server errors on their
    own and say nothing, so each one is logged here. The path only: a query may carry a SAS."""
    status = response.http_response.status_code
    if status in _RETRYABLE:
        request = response.http_request
        _log.warning(
            "service_retryable_response",
            method=request.method,
            path=urlsplit(request.url).path,
            status=status,
            retry_after=response.http_response.headers.get("Retry-After"),
        )


class AzureBackend:
    """`batchpilot.backends.base.Backend` on Azure Batch and Blob Storage.

    `token_credential` replaces DefaultAzureCredential for Entra ID (the caller keeps ownership);
    `retry_total` overrides the SDKs' retry count per request (None keeps their defaults).
    """

    name = "azure"

    def __init__(
        self,
        settings: AzureSettings,
        *,
        token_credential: AsyncTokenCredential | None = None,
        retry_total: int | None = None,
        clock: Clock = _utc_now,
    ) -> None:
        self._settings = settings
        self._token_credential = token_credential
        self._retry_total = retry_total
        self._clock = clock
        self._stack: AsyncExitStack | None = None
        self._compute: AzureCompute | None = None
        self._storage: AzureStorage | None = None

    @property
    def settings(self) -> AzureSettings:
        return self._settings

    @property
    def compute(self) -> AzureCompute:
        if self._compute is None:
            raise RuntimeError("use AzureBackend inside `async with`")
        return self._compute

    @property
    def storage(self) -> AzureStorage:
        if self._storage is None:
            raise RuntimeError("use AzureBackend inside `async with`")
        return self._storage

    async def __aenter__(self) -> Self:
        async with AsyncExitStack() as stack:
            options: dict[str, Any] = {"raw_response_hook": log_retryable_response}
            if self._retry_total is not None:
                options["retry_total"] = self._retry_total
            credentials = Credentials(self._settings, stack, self._token_credential)
            batch = await stack.enter_async_context(
                BatchClient(self._settings.batch.endpoint, await credentials.batch(), **options)
            )
            blobs = await stack.enter_async_context(
                BlobServiceClient(self._settings.storage.account_url, await credentials.storage(), **options)
            )
            secrets = self._settings.secrets
            self._compute = AzureCompute(batch, secrets)
            self._storage = AzureStorage(blobs, self._settings.storage, clock=self._clock, secrets=secrets)
            # Everything opened; from here on the stack is closed by __aexit__, not by this block.
            self._stack = stack.pop_all()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        stack, self._stack = self._stack, None
        self._compute = self._storage = None
        if stack is not None:
            await stack.aclose()
