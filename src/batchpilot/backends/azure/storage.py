"""`Storage` over azure.storage.blob.aio: containers, uploads, downloads and SAS URLs for tasks.

SAS URLs are signed with the account key when there is one, otherwise with a user delegation key obtained
through Entra ID. The delegation key is cached and renewed before it would expire under a SAS it signs.
File I/O runs in worker threads (anyio), so a large upload or download never blocks the event loop.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

import anyio
from azure.core.exceptions import ResourceExistsError, ResourceNotFoundError
from azure.storage.blob import (
    BlobSasPermissions,
    ContainerSasPermissions,
    ContentSettings,
    UserDelegationKey,
    generate_blob_sas,
    generate_container_sas,
)
from azure.storage.blob.aio import BlobServiceClient

from ...clock import Clock, SystemClock
from ...config import StorageSettings
from ...errors import ConfigError
from ...files import md5_of, temporary_sibling
from ...records import BlobDownload, BlobInfo, Permission, UploadOutcome
from ..base import download_each
from .errors import translated

_CHUNK_BYTES = 4 * 1024 * 1024
# Parallel block transfers within one large file; many files in parallel is the engine's business.
_TRANSFER_CONCURRENCY = 4
# A delegation key lives at most 7 days; renew it when less than this would remain after the SAS expires.
_DELEGATION_KEY_MAX = timedelta(days=7)
_DELEGATION_KEY_MARGIN = timedelta(minutes=5)
# The key's validity starts a little in the past: the service's clock may be behind ours.
_CLOCK_SKEW = timedelta(minutes=5)


@dataclass(frozen=True, slots=True)
class _DelegationKey:
    key: UserDelegationKey
    expires: datetime


class AzureStorage:
    """Implements `batchpilot.backends.base.Storage`. The service client belongs to `AzureBackend`."""

    def __init__(
        self,
        service: BlobServiceClient,
        settings: StorageSettings,
        *,
        clock: Clock | None = None,
        secrets: tuple[str, ...] = (),
    ) -> None:
        self._service = service
        self._settings = settings
        self._clock = clock or SystemClock()
        self._secrets = secrets
        self._delegation: _DelegationKey | None = None
        self._delegation_lock = anyio.Lock()
        self._container_urls: dict[str, str] = {}

    @property
    def service(self) -> BlobServiceClient:
        """The SDK client, for calls beyond the protocol (e.g. `check`)."""
        return self._service

    async def ensure_container(self, container: str) -> bool:
        with translated(f"create container {container}", self._secrets):
            try:
                await self._service.get_container_client(container).create_container()
            except ResourceExistsError:
                return False
        return True

    async def upload(
        self, container: str, blob_name: str, source: Path, md5_hex: str, *, check_existing: bool = True
    ) -> UploadOutcome:
        blob = self._service.get_blob_client(container, blob_name)
        md5 = bytes.fromhex(md5_hex)
        size = (await anyio.Path(source).stat()).st_size
        with translated(f"upload {source.name} to {container}/{blob_name}", self._secrets):
            existing = None
            if check_existing:
                try:
                    existing = await blob.get_blob_properties()
                except ResourceNotFoundError:
                    existing = None
            if (
                existing is not None
                and existing.size == size
                and existing.content_settings.content_md5 is not None
                and bytes(existing.content_settings.content_md5) == md5
            ):
                return UploadOutcome.SKIPPED
            content_settings = ContentSettings(content_md5=bytearray(md5))
            if size <= _CHUNK_BYTES:
                # One trip to a worker thread and one request; streaming would cost a trip per read (and at
                # the end) plus the SDK's wrapper around the stream, for a file that fits in one read anyway.
                data = await anyio.Path(source).read_bytes()
                await blob.upload_blob(data, overwrite=True, content_settings=content_settings)
            else:
                async with await anyio.open_file(source, "rb") as handle:
                    await blob.upload_blob(
                        _chunks(handle),
                        length=size,
                        overwrite=True,
                        content_settings=content_settings,
                        max_concurrency=_TRANSFER_CONCURRENCY,
                    )
        return UploadOutcome.UPLOADED

    async def list_blobs(self, container: str, prefix: str = "") -> list[BlobInfo]:
        with translated(f"list blobs in {container}", self._secrets):
            listing = self._service.get_container_client(container).list_blobs(
                name_starts_with=prefix or None
            )
            return [
                BlobInfo(
                    name=item.name,
                    size=item.size,
                    md5_hex=bytes(item.content_settings.content_md5).hex()
                    if item.content_settings.content_md5
                    else None,
                )
                async for item in listing
            ]

    async def download(self, container: str, blob_name: str, dest: Path) -> None:
        await anyio.Path(dest.parent).mkdir(parents=True, exist_ok=True)
        # Same folder as dest, so the final rename is atomic and a partial file never has dest's name; a
        # name the file system takes however long dest's is (files.temporary_sibling).
        temp = temporary_sibling(dest)
        try:
            with translated(f"download {container}/{blob_name}", self._secrets):
                stream = await self._service.get_blob_client(container, blob_name).download_blob(
                    max_concurrency=_TRANSFER_CONCURRENCY
                )
                async with await anyio.open_file(temp, "wb") as handle:
                    async for chunk in stream.chunks():
                        await handle.write(chunk)
            await anyio.to_thread.run_sync(os.replace, temp, dest)
        except BaseException:
            with anyio.CancelScope(shield=True):
                await anyio.Path(temp).unlink(missing_ok=True)
            raise

    async def download_prefix(
        self,
        container: str,
        prefix: str,
        plan: Callable[[Sequence[BlobInfo]], Iterable[tuple[BlobInfo, Path]]],
    ) -> list[BlobDownload]:
        """`Storage.download_prefix`: one listing, then each pick downloaded in turn (a request each)."""

        async def holds(blob: BlobInfo, dest: Path) -> bool:
            return await anyio.to_thread.run_sync(_holds, dest, blob)

        return await download_each(self, container, plan(await self.list_blobs(container, prefix)), holds)

    async def container_url(self, container: str, permissions: Permission, expiry: timedelta) -> str:
        expires = self._clock.now() + expiry
        sas_permission = ContainerSasPermissions(
            read=Permission.READ in permissions,
            write=Permission.WRITE in permissions,
            list=Permission.LIST in permissions,
            create=Permission.CREATE in permissions,
        )
        url = self._service.get_container_client(container).url
        sas = generate_container_sas(
            self._settings.account,
            container,
            permission=sas_permission,
            expiry=expires,
            **await self._signer(expires),
        )
        return f"{url}?{sas}"

    async def blob_url(
        self, container: str, blob_name: str, permissions: Permission, expiry: timedelta
    ) -> str:
        if Permission.LIST in permissions:
            raise ValueError("LIST applies to containers; ask container_url for it")
        expires = self._clock.now() + expiry
        sas_permission = BlobSasPermissions(
            read=Permission.READ in permissions,
            create=Permission.CREATE in permissions,
            write=Permission.WRITE in permissions,
        )
        url = self._blob_url(container, blob_name)
        sas = generate_blob_sas(
            self._settings.account,
            container,
            blob_name,
            permission=sas_permission,
            expiry=expires,
            **await self._signer(expires),
        )
        return f"{url}?{sas}"

    def _blob_url(self, container: str, blob_name: str) -> str:
        """The blob's URL as `BlobClient.url` spells it, without building a client and its pipeline per
        blob (that was most of the cost of signing 10,000 task inputs)."""
        base = self._container_urls.get(container)
        if base is None:
            base = self._container_urls[container] = self._service.get_container_client(container).url
        parts = urlsplit(base)
        path = f"{parts.path.rstrip('/')}/{quote(blob_name, safe='~/')}"
        return urlunsplit((parts.scheme, parts.netloc, path, parts.query, parts.fragment))

    async def _signer(self, sas_expires: datetime) -> dict[str, Any]:
        """What signs a SAS: the account key, or (with Entra ID) a user-delegation key."""
        if self._settings.account_key is not None:
            return {"account_key": self._settings.account_key}
        return {"user_delegation_key": await self._delegation_key(sas_expires)}

    async def delete_container(self, container: str) -> None:
        with translated(f"delete container {container}", self._secrets):
            try:
                await self._service.get_container_client(container).delete_container()
            except ResourceNotFoundError:
                return

    async def _delegation_key(self, sas_expires: datetime) -> UserDelegationKey:
        """A user delegation key valid until at least `sas_expires`, fetched once and reused."""
        async with self._delegation_lock:
            cached = self._delegation
            if cached is not None and cached.expires >= sas_expires + _DELEGATION_KEY_MARGIN:
                return cached.key
            now = self._clock.now()
            # Ask for the longest key the service allows, so one key signs every URL of a run.
            expires = now + _DELEGATION_KEY_MAX - _CLOCK_SKEW
            if sas_expires + _DELEGATION_KEY_MARGIN > expires:
                raise ConfigError(
                    f"with Entra ID, the tokens given to tasks last at most {_DELEGATION_KEY_MAX.days} days,"
                    f" and this run's would last until {sas_expires:%Y-%m-%d %H:%M} UTC: give a shorter"
                    " --timeout (or the tasks a shorter max_wall_clock), or a storage account key"
                )
            with translated("get a user delegation key", self._secrets):
                key = await self._service.get_user_delegation_key(now - _CLOCK_SKEW, expires)
            self._delegation = _DelegationKey(key, expires)
            return key


async def _chunks(handle: anyio.AsyncFile[bytes]) -> AsyncIterator[bytes]:
    while chunk := await handle.read(_CHUNK_BYTES):
        yield chunk


def _holds(dest: Path, blob: BlobInfo) -> bool:
    """Whether `dest` is a file of the blob's size and, when the store keeps one, MD5. Blocking."""
    try:
        if not dest.is_file() or dest.stat().st_size != blob.size:
            return False
    except OSError:
        return False
    return blob.md5_hex is None or md5_of(dest) == blob.md5_hex
