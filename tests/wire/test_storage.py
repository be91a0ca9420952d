from __future__ import annotations

import base64
import hashlib
import re
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import anyio
import pytest
from azure.core.credentials import AccessToken

from batchpilot.backends.azure import AzureBackend
from batchpilot.config import AzureSettings, BatchSettings, StorageSettings
from batchpilot.errors import AuthenticationError, ConfigError, NotFoundError
from batchpilot.records import BlobInfo, Permission, UploadOutcome
from tests.helpers import FakeClock

from .conftest import BATCH, BLOBS, STORAGE_KEY, Http

NOW = datetime(2030, 1, 1, 12, 0, 0, tzinfo=UTC)
XML = "application/xml"


def blob(path: str) -> re.Pattern[str]:
    return re.compile(re.escape(BLOBS + path) + r"(\?.*)?$")


def sas_query(url: str) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(urlsplit(url).query).items()}


@pytest.fixture
async def key_backend(settings: AzureSettings, retry_sleeps: list[float]) -> AsyncIterator[AzureBackend]:
    async with AzureBackend(settings, retry_total=0, clock=FakeClock(NOW)) as opened:
        yield opened


class FixedToken:
    """An AsyncTokenCredential stub: a fixed token, and a record of the scopes asked for."""

    def __init__(self) -> None:
        self.scopes: list[str] = []

    async def get_token(self, *scopes: str, **kwargs: Any) -> AccessToken:
        self.scopes.extend(scopes)
        return AccessToken("fixed-token", int(NOW.timestamp()) + 3600)

    async def close(self) -> None:
        return None

    async def __aenter__(self) -> FixedToken:
        return self

    async def __aexit__(self, *args: object) -> None:
        return None


@pytest.fixture
def entra_settings() -> AzureSettings:
    return AzureSettings(
        batch=BatchSettings(endpoint=BATCH, account=None),
        storage=StorageSettings(account="store", account_url=BLOBS),
    )


# --- SAS URLs ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("permissions", "expected"),
    [
        (Permission.READ, "r"),
        (Permission.READ | Permission.LIST, "rl"),
        (Permission.CREATE | Permission.WRITE, "cw"),
    ],
)
async def test_container_sas_has_exactly_the_permissions_and_expiry(
    key_backend: AzureBackend, permissions: Permission, expected: str
) -> None:
    url = await key_backend.storage.container_url("out", permissions, timedelta(hours=2))

    assert url.startswith(f"{BLOBS}/out?")
    query = sas_query(url)
    assert query["sp"] == expected
    assert query["se"] == "2030-01-01T14:00:00Z"
    assert query["sr"] == "c"
    assert "st" not in query  # valid at once: no start time for clock skew to break
    assert query["sig"]


async def test_blob_sas_is_read_only_for_one_blob(key_backend: AzureBackend) -> None:
    url = await key_backend.storage.blob_url("in", "my video.mp4", Permission.READ, timedelta(minutes=30))

    assert url.startswith(f"{BLOBS}/in/my%20video.mp4?")
    query = sas_query(url)
    assert (query["sp"], query["sr"], query["se"]) == ("r", "b", "2030-01-01T12:30:00Z")


@pytest.mark.parametrize("name", ["a b/c+d#e?.mp4", "ü~é%&=.mp4", "dir//x.mp4", "plain.mp4"])
async def test_blob_urls_are_spelled_as_the_sdk_spells_them(key_backend: AzureBackend, name: str) -> None:
    url = await key_backend.storage.blob_url("in-put", name, Permission.READ, timedelta(minutes=30))

    expected = key_backend.storage.service.get_blob_client("in-put", name).url
    assert url.split("?")[0] == expected


async def test_blob_sas_refuses_list(key_backend: AzureBackend) -> None:
    with pytest.raises(ValueError, match="LIST applies to containers"):
        await key_backend.storage.blob_url("in", "a.mp4", Permission.LIST, timedelta(minutes=5))


DELEGATION_KEY = (
    "<?xml version='1.0' encoding='utf-8'?><UserDelegationKey><SignedOid>oid-1</SignedOid>"
    "<SignedTid>tid-1</SignedTid><SignedStart>2030-01-01T11:55:00Z</SignedStart>"
    "<SignedExpiry>2030-01-08T11:55:00Z</SignedExpiry><SignedService>b</SignedService>"
    "<SignedVersion>2025-01-05</SignedVersion><Value>" + base64.b64encode(b"delegation").decode() + "</Value>"
    "</UserDelegationKey>"
)


async def test_entra_id_sas_uses_one_cached_user_delegation_key(
    http: Http, entra_settings: AzureSettings, retry_sleeps: list[float]
) -> None:
    http.add(blob("/"), "POST", body=DELEGATION_KEY, content_type=XML)
    token = FixedToken()

    async with AzureBackend(
        entra_settings, token_credential=token, retry_total=0, clock=FakeClock(NOW)
    ) as backend:
        first = await backend.storage.container_url(
            "out", Permission.WRITE | Permission.CREATE, timedelta(hours=1)
        )
        second = await backend.storage.blob_url("in", "a.mp4", Permission.READ, timedelta(hours=3))

    [sent] = http.sent()
    assert sent.query == {"restype": "service", "comp": "userdelegationkey"}
    assert sent.headers["authorization"] == "Bearer fixed-token"
    body = sent.data.decode() if isinstance(sent.data, bytes) else sent.data
    assert "<Start>2030-01-01T11:55:00Z</Start>" in body
    assert "<Expiry>2030-01-08T11:55:00Z</Expiry>" in body
    for url, permissions in ((first, "cw"), (second, "r")):
        query = sas_query(url)
        assert (query["sp"], query["skoid"], query["sktid"]) == (permissions, "oid-1", "tid-1")
    assert token.scopes == ["https://storage.azure.com/.default"]


async def test_a_delegation_key_is_renewed_before_a_sas_it_signs_would_outlive_it(
    http: Http, entra_settings: AzureSettings, retry_sleeps: list[float]
) -> None:
    http.add(blob("/"), "POST", body=DELEGATION_KEY, content_type=XML)
    http.add(blob("/"), "POST", body=DELEGATION_KEY, content_type=XML)
    clock = FakeClock(NOW)

    async with AzureBackend(
        entra_settings, token_credential=FixedToken(), retry_total=0, clock=clock
    ) as backend:
        await backend.storage.container_url("out", Permission.WRITE, timedelta(hours=1))
        # A long service: the first key ends in under an hour.
        clock.current = NOW + timedelta(days=6, hours=23)
        await backend.storage.container_url("out", Permission.WRITE, timedelta(hours=1))
        with pytest.raises(ConfigError, match="at most 7 days") as raised:
            await backend.storage.container_url("out", Permission.WRITE, timedelta(days=8))

    assert len(http.sent()) == 2  # one key, then a fresh one; none for the refused token
    assert "\n" not in str(raised.value)


async def test_entra_id_reaches_batch_with_a_bearer_token(
    http: Http, entra_settings: AzureSettings, retry_sleeps: list[float]
) -> None:
    http.batch(
        "GET",
        "/jobs/job-1/taskcounts",
        payload={
            "taskCounts": {"active": 1, "running": 0, "completed": 0, "succeeded": 0, "failed": 0},
            "taskSlotCounts": {"active": 1, "running": 0, "completed": 0, "succeeded": 0, "failed": 0},
        },
    )
    token = FixedToken()

    async with AzureBackend(entra_settings, token_credential=token, retry_total=0) as backend:
        counts = await backend.compute.task_counts("job-1")

    assert counts.active == 1
    [sent] = http.sent()
    assert sent.headers["authorization"] == "Bearer fixed-token"
    assert token.scopes == ["https://batch.core.windows.net//.default"]


# --- containers and blobs ---------------------------------------------------------------------------------


async def test_ensure_container_creates_or_finds_it(http: Http, key_backend: AzureBackend) -> None:
    http.add(blob("/new"), "PUT", status=201)
    http.add(blob("/old"), "PUT", status=409, headers={"x-ms-error-code": "ContainerAlreadyExists"})

    assert await key_backend.storage.ensure_container("new") is True
    assert await key_backend.storage.ensure_container("old") is False
    assert [s.query for s in http.sent()] == [{"restype": "container"}] * 2


async def test_delete_container_accepts_already_gone(http: Http, key_backend: AzureBackend) -> None:
    http.add(blob("/gone"), "DELETE", status=404, headers={"x-ms-error-code": "ContainerNotFound"})

    await key_backend.storage.delete_container("gone")

    assert [(s.method, s.path) for s in http.sent()] == [("DELETE", "/gone")]


def _write(path: Path, content: bytes) -> str:
    path.write_bytes(content)
    return hashlib.md5(content).hexdigest()


async def test_upload_skips_a_blob_with_the_same_size_and_md5(
    http: Http, key_backend: AzureBackend, tmp_path: Path
) -> None:
    content = b"mp4 bytes" * 100
    md5_hex = _write(tmp_path / "a.mp4", content)
    http.add(
        blob("/in/a.mp4"),
        "HEAD",
        headers={
            "Content-Length": str(len(content)),
            "Content-MD5": base64.b64encode(bytes.fromhex(md5_hex)).decode(),
        },
    )

    assert (
        await key_backend.storage.upload("in", "a.mp4", tmp_path / "a.mp4", md5_hex) is UploadOutcome.SKIPPED
    )
    assert [s.method for s in http.sent()] == ["HEAD"]


async def test_upload_sends_a_changed_file_with_its_md5(
    http: Http, key_backend: AzureBackend, tmp_path: Path
) -> None:
    content = b"new mp4 bytes" * 100
    md5_hex = _write(tmp_path / "a.mp4", content)
    stale_md5 = base64.b64encode(hashlib.md5(b"old").digest()).decode()
    http.add(
        blob("/in/a.mp4"), "HEAD", headers={"Content-Length": str(len(content)), "Content-MD5": stale_md5}
    )
    http.add(blob("/in/a.mp4"), "PUT", status=201)

    outcome = await key_backend.storage.upload("in", "a.mp4", tmp_path / "a.mp4", md5_hex)

    assert outcome is UploadOutcome.UPLOADED
    _, put = http.sent()
    assert put.method == "PUT"
    assert put.data == content
    assert put.headers["x-ms-blob-type"] == "BlockBlob"
    assert put.headers["x-ms-blob-content-md5"] == base64.b64encode(bytes.fromhex(md5_hex)).decode()
    assert "if-none-match" not in put.headers  # overwrite=True


async def test_upload_of_a_new_blob(http: Http, key_backend: AzureBackend, tmp_path: Path) -> None:
    md5_hex = _write(tmp_path / "b.mp4", b"b")
    http.add(blob("/in/b.mp4"), "HEAD", status=404, headers={"x-ms-error-code": "BlobNotFound"})
    http.add(blob("/in/b.mp4"), "PUT", status=201)

    assert (
        await key_backend.storage.upload("in", "b.mp4", tmp_path / "b.mp4", md5_hex) is UploadOutcome.UPLOADED
    )
    assert [s.method for s in http.sent()] == ["HEAD", "PUT"]


async def test_upload_into_a_fresh_container_sends_only_the_put(
    http: Http, key_backend: AzureBackend, tmp_path: Path
) -> None:
    md5_hex = _write(tmp_path / "c.mp4", b"c")
    http.add(blob("/in/c.mp4"), "PUT", status=201)

    outcome = await key_backend.storage.upload(
        "in", "c.mp4", tmp_path / "c.mp4", md5_hex, check_existing=False
    )

    assert outcome is UploadOutcome.UPLOADED
    assert [s.method for s in http.sent()] == ["PUT"]


LISTING = (
    "<?xml version='1.0' encoding='utf-8'?><EnumerationResults ServiceEndpoint='https://store.blob.core.windows.net/'"
    " ContainerName='out'><Prefix>task-</Prefix><Blobs>"
    "<Blob><Name>task-1/a.mp3</Name><Properties><Content-Length>3</Content-Length>"
    "<Content-MD5>" + base64.b64encode(hashlib.md5(b"abc").digest()).decode() + "</Content-MD5>"
    "<BlobType>BlockBlob</BlobType></Properties></Blob>"
    "<Blob><Name>task-2/b.mp3</Name><Properties><Content-Length>5</Content-Length><BlobType>BlockBlob</BlobType>"
    "</Properties></Blob></Blobs><NextMarker /></EnumerationResults>"
)


async def test_list_blobs(http: Http, key_backend: AzureBackend) -> None:
    http.add(blob("/out"), "GET", body=LISTING, content_type=XML)

    blobs = await key_backend.storage.list_blobs("out", prefix="task-")

    assert blobs == [
        BlobInfo("task-1/a.mp3", 3, hashlib.md5(b"abc").hexdigest()),
        BlobInfo("task-2/b.mp3", 5, None),
    ]
    assert http.sent()[0].query == {"restype": "container", "comp": "list", "prefix": "task-"}


async def test_download_writes_the_file_through_a_temporary_name(
    http: Http, key_backend: AzureBackend, tmp_path: Path
) -> None:
    http.add(
        blob("/out/task-1/a.mp3"),
        "GET",
        status=200,
        body=b"mp3!",
        content_type="application/octet-stream",
        headers={"Content-Length": "4", "Content-Range": "bytes 0-3/4", "x-ms-blob-type": "BlockBlob"},
    )
    dest = tmp_path / "outputs" / "a.mp3"

    await key_backend.storage.download("out", "task-1/a.mp3", dest)

    assert dest.read_bytes() == b"mp3!"
    assert sorted(p.name for p in dest.parent.iterdir()) == ["a.mp3"]


async def test_failed_download_leaves_no_file(http: Http, key_backend: AzureBackend, tmp_path: Path) -> None:
    http.add(blob("/out/missing.mp3"), "GET", status=404, headers={"x-ms-error-code": "BlobNotFound"})
    dest = tmp_path / "a.mp3"

    with pytest.raises(NotFoundError, match="404 BlobNotFound"):
        await key_backend.storage.download("out", "missing.mp3", dest)

    assert [p async for p in anyio.Path(tmp_path).iterdir()] == []


async def test_storage_auth_failure_is_one_line_without_the_key(
    http: Http, key_backend: AzureBackend
) -> None:
    http.add(
        blob("/in"),
        "PUT",
        status=403,
        headers={"x-ms-error-code": "AuthenticationFailed"},
        body="<?xml version='1.0'?><Error><Code>AuthenticationFailed</Code>"
        "<Message>Server failed to authenticate the request.</Message></Error>",
        content_type=XML,
    )

    with pytest.raises(AuthenticationError) as raised:
        await key_backend.storage.ensure_container("in")

    message = str(raised.value)
    assert "credentials refused (403 AuthenticationFailed)" in message
    assert "\n" not in message
    assert STORAGE_KEY not in message


async def test_upload_of_a_file_larger_than_a_read_is_streamed_whole_with_its_md5(
    http: Http, key_backend: AzureBackend, tmp_path: Path
) -> None:
    content = bytes(range(256)) * (5 * 4096)  # 5 MiB: more than one read of 4 MiB
    md5_hex = _write(tmp_path / "big.mp4", content)
    http.add(blob("/in/big.mp4"), "PUT", status=201)

    outcome = await key_backend.storage.upload(
        "in", "big.mp4", tmp_path / "big.mp4", md5_hex, check_existing=False
    )

    assert outcome is UploadOutcome.UPLOADED
    (put,) = http.sent()
    assert put.data == content
    assert put.headers["x-ms-blob-content-md5"] == base64.b64encode(bytes.fromhex(md5_hex)).decode()
