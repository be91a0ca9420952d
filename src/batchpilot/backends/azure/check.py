"""`batchpilot check`: are the settings complete, do both services answer, and does Batch take the pool's
image today? Creates nothing."""

from __future__ import annotations

from azure.core.credentials_async import AsyncTokenCredential

from ...config import AzureSettings
from ...errors import BackendError
from ...images import describe, enforced, unchecked
from ...spec import PoolSpec
from . import AzureBackend
from .errors import translated


async def check(
    settings: AzureSettings,
    *,
    pool: PoolSpec | None = None,
    token_credential: AsyncTokenCredential | None = None,
) -> list[str]:
    """Human lines describing what was reached. ConfigError/BackendError (one line) on the first failure;
    with `pool`, UnsupportedImageError when Batch would refuse its image (List Supported Images) and
    ImageCheckError when that list cannot be read."""
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
        if pool is not None:
            try:
                verdict = await backend.compute.check_pool_image(pool)
            except BackendError as exc:
                raise unchecked(pool, exc) from exc
            lines.append(describe(pool, enforced(pool, verdict)))
    return lines
