"""Credentials for Batch and Storage: a shared key when the settings hold one, Entra ID otherwise.

Entra ID uses one `azure.identity.aio.DefaultAzureCredential` for both services (it caches tokens per
scope). A credential passed in by the caller (tests, an embedding application) is used instead and stays
the caller's to close.
"""

from __future__ import annotations

from contextlib import AsyncExitStack

from azure.core.credentials import AzureNamedKeyCredential
from azure.core.credentials_async import AsyncTokenCredential
from azure.identity.aio import DefaultAzureCredential

from ...config import AzureSettings


class Credentials:
    """The credentials for one backend; `token` is created on first need and closed with `stack`."""

    def __init__(
        self, settings: AzureSettings, stack: AsyncExitStack, token: AsyncTokenCredential | None
    ) -> None:
        self._settings = settings
        self._stack = stack
        self._token = token

    async def _token_credential(self) -> AsyncTokenCredential:
        if self._token is not None:
            return self._token
        created = await self._stack.enter_async_context(DefaultAzureCredential())
        self._token = created
        return created

    async def batch(self) -> AzureNamedKeyCredential | AsyncTokenCredential:
        batch = self._settings.batch
        if batch.access_key is not None and batch.account is not None:
            return AzureNamedKeyCredential(batch.account, batch.access_key)
        return await self._token_credential()

    async def storage(self) -> AzureNamedKeyCredential | AsyncTokenCredential:
        storage = self._settings.storage
        if storage.account_key is not None:
            return AzureNamedKeyCredential(storage.account, storage.account_key)
        return await self._token_credential()
