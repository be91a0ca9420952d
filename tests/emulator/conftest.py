"""SDK clients bound to the emulator and Azurite (those two fixtures live in tests/conftest.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from azure.batch.aio import BatchClient
from azure.storage.blob.aio import BlobServiceClient

from batchpilot.emulator import RunningEmulator

from .support import Azurite, batch_client


@pytest.fixture
async def client(emulator: RunningEmulator) -> AsyncIterator[BatchClient]:
    async with batch_client(emulator) as batch:
        yield batch


@pytest.fixture
async def blobs(azurite: Azurite) -> AsyncIterator[BlobServiceClient]:
    async with BlobServiceClient.from_connection_string(azurite.connection_string) as service:
        yield service
