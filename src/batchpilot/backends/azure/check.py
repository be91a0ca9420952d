"""`batchpilot check`: are the settings complete, and do both services answer? Creates nothing."""

from __future__ import annotations

from azure.core.credentials_async import AsyncTokenCredential

from ...config import AzureSettings
from . import AzureBackend
from .errors import translated


async def check(
    settings: AzureSettings, *, token_credential: AsyncTokenCredential | None = None
) -> list[str]:
    """Human lines describing what was reached; ConfigError/BackendError (one line) on the first failure."""
    lines: list[str] = []
    # One attempt per request: a check should answer quickly, not retry for a minute.
    async with AzureBackend(settings, token_credential=token_credential, retry_total=0) as backend:
        batch = settings.batch
        with translated(f"list pools at {batch.endpoint}", settings.secrets):
            pools = backend.compute.client.list_pools(max_results=1, select=["id"])
            seen = [pool.id async for pool in pools]
        account = f" as {batch.account}" if batch.account else ""
        lines.append(
            f"Batch: {batch.endpoint} answers ({batch.auth}{account}); "
            f"{'at least one pool' if seen else 'no pools yet'}"
        )
        storage = settings.storage
        with translated(f"get account information of {storage.account_url}", settings.secrets):
            info = await backend.storage.service.get_account_information()
        lines.append(
            f"Storage: {storage.account_url} answers ({storage.auth}); "
            f"{info.get('account_kind', 'unknown kind')}, {info.get('sku_name', 'unknown SKU')}"
        )
    return lines
