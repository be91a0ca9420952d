"""SharedKey as the Batch docs define it: requests built and signed by hand, not by the SDK.

https://learn.microsoft.com/rest/api/batchservice/authenticate-requests-to-the-azure-batch-service: query
parameter names are lower-cased in the string to sign, and the service matches them without regard to case,
so `maxResults=1` and `maxresults=1` are the same request.
"""

from __future__ import annotations

import json
from email.utils import formatdate
from typing import Any

import aiohttp
import pytest
from azure.batch.aio import BatchClient
from yarl import URL

from batchpilot.emulator import RunningEmulator

from .recordings import authorization, string_to_sign
from .support import pool_options

API_VERSION = "2024-07-01.20.0"


async def signed_get(
    emulator: RunningEmulator, path: str, query: list[tuple[str, str]], *, key: str | None = None
) -> tuple[int, Any]:
    headers = {"ocp-date": formatdate(usegmt=True)}
    text = string_to_sign("GET", path, query, headers, emulator.account)
    headers["Authorization"] = authorization(key or emulator.key, emulator.account, text)
    url = URL(f"{emulator.endpoint}{path}").with_query(query)
    async with aiohttp.ClientSession() as session, session.get(url, headers=headers) as response:
        return response.status, json.loads(await response.read())


@pytest.mark.parametrize("name", ["maxResults", "maxresults", "MAXRESULTS"])
async def test_a_request_signed_as_the_docs_say_is_served_whatever_the_case_of_its_names(
    emulator: RunningEmulator, client: BatchClient, name: str
) -> None:
    for pool_id in ("pool-a", "pool-b", "pool-c"):
        await client.create_pool(pool_options(pool_id, nodes=0))

    status, body = await signed_get(emulator, "/pools", [("api-version", API_VERSION), (name, "2")])

    assert status == 200, body
    # Honoured: a page of two, and a link to the rest that keeps the page size.
    assert [pool["id"] for pool in body["value"]] == ["pool-a", "pool-b"]
    status, rest = await signed_get(emulator, "/pools", list(URL(body["odata.nextLink"]).query.items()))
    assert status == 200, rest
    assert [pool["id"] for pool in rest["value"]] == ["pool-c"]


async def test_a_name_in_capitals_is_signed_lower_cased_and_a_wrong_key_still_refused(
    emulator: RunningEmulator,
) -> None:
    query = [("api-version", API_VERSION), ("maxResults", "1")]
    signed_as_written = string_to_sign("GET", "/pools", query, {}, emulator.account)
    assert "\nmaxresults:1" in signed_as_written
    assert "maxResults" not in signed_as_written

    wrong_key = "d3Jvbmcta2V5LXdyb25nLWtleS13cm9uZy1rZXk="
    status, body = await signed_get(emulator, "/pools", query, key=wrong_key)
    assert (status, body["code"]) == (403, "AuthenticationFailed")
