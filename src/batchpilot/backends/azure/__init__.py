"""The Azure backend: Batch for compute, Blob Storage for files.

    async with AzureBackend(AzureSettings.load(flags)) as backend:
        await backend.compute.ensure_pool(spec)

The backend owns its clients and any credential it creates, and closes them all on exit.
"""

from __future__ import annotations

from contextlib import AsyncExitStack
from types import TracebackType
from typing import Any, Self

from azure.batch.aio import BatchClient
from azure.core.credentials_async import AsyncTokenCredential
from azure.storage.blob.aio import BlobServiceClient

from ...clock import Clock, SystemClock
from ...config import AzureSettings
from .auth import Credentials
from .compute import AzureCompute
from .requests import RequestTally, response_hook
from .storage import AzureStorage

__all__ = ("AzureBackend", "AzureCompute", "AzureStorage", "RequestTally")


class AzureBackend:
    """`batchpilot.backends.base.Backend` on Azure Batch and Blob Storage.

    `token_credential` replaces DefaultAzureCredential for Entra ID (the caller keeps ownership);
    `retry_total` overrides the SDKs' retry count per request (None keeps their defaults). `requests`
    counts every request by kind, and the throttled ones (pass one in to share it; one is made otherwise).
    `clock` (a `batchpilot.clock.Clock`) dates the tokens handed to tasks and paces the waits for a pool.
    """

    name = "azure"

    def __init__(
        self,
        settings: AzureSettings,
        *,
        token_credential: AsyncTokenCredential | None = None,
        retry_total: int | None = None,
        clock: Clock | None = None,
        requests: RequestTally | None = None,
    ) -> None:
        self._settings = settings
        self.requests = requests if requests is not None else RequestTally()
        self._token_credential = token_credential
        self._retry_total = retry_total
        self._clock = clock or SystemClock()
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
            options: dict[str, Any] = {}
            if self._retry_total is not None:
                options["retry_total"] = self._retry_total
            credentials = Credentials(self._settings, stack, self._token_credential)
            batch = await stack.enter_async_context(
                BatchClient(
                    self._settings.batch.endpoint,
                    await credentials.batch(),
                    raw_response_hook=response_hook(self.requests, "batch"),
                    **options,
                )
            )
            blobs = await stack.enter_async_context(
                BlobServiceClient(
                    self._settings.storage.account_url,
                    await credentials.storage(),
                    raw_response_hook=response_hook(self.requests, "blob"),
                    **options,
                )
            )
            secrets = self._settings.secrets
            self._compute = AzureCompute(batch, secrets, clock=self._clock)
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
