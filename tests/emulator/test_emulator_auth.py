"""The emulator's key stays off the command line, and a signed request is refused once its date is more
than 15 minutes from the service's time (Batch's window against replayed requests)."""

from __future__ import annotations

import argparse
import base64
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import structlog
from azure.batch.aio import BatchClient
from azure.core.exceptions import HttpResponseError

from batchpilot.emulator.auth import fresh, request_time
from batchpilot.emulator.cli import KEY_ENV, add_arguments, config_from_args
from batchpilot.emulator.config import DEFAULT_KEY
from batchpilot.errors import ConfigError

from .support import CANARY_BATCH_KEY, pool_options

OTHER_KEY = base64.b64encode(b"another emulator key, from a file").decode()


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser.parse_args(list(argv))


async def test_fresh_date_is_accepted_stale_and_future_ones_refused(client: BatchClient) -> None:
    now = datetime.now(UTC)
    await client.create_pool(pool_options("p", nodes=0), ocp_date=now - timedelta(minutes=14))
    assert (await client.get_pool("p", ocp_date=now)).id == "p"
    for skew in (timedelta(minutes=-16), timedelta(hours=-24), timedelta(minutes=16)):
        with pytest.raises(HttpResponseError) as refused:
            await client.get_pool("p", ocp_date=now + skew)
        assert refused.value.status_code == 403
        assert refused.value.error is not None
        assert refused.value.error.code == "AuthenticationFailed"
    # A replayed create is refused before it changes anything.
    with pytest.raises(HttpResponseError):
        await client.create_pool(pool_options("replayed", nodes=0), ocp_date=now - timedelta(hours=1))
    assert [pool.id async for pool in client.list_pools()] == ["p"]


def test_request_time_reads_ocp_date_first() -> None:
    now = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)
    headers = {"ocp-date": "Mon, 30 Nov 2026 12:10:00 GMT", "Date": "Mon, 30 Nov 2026 08:00:00 GMT"}
    assert request_time(headers) == datetime(2026, 11, 30, 12, 10, tzinfo=UTC)
    assert fresh(headers, now)
    assert fresh({"Date": "Mon, 30 Nov 2026 11:45:00 GMT"}, now)
    assert not fresh({"Date": "Mon, 30 Nov 2026 11:44:59 GMT"}, now)
    for bad in (
        {},
        {"ocp-date": "yesterday"},
        {"ocp-date": "x" * 10_000},
        {"Date": "Mon, 30 Nov 2026 12:00:00 -0000"},
    ):
        assert not fresh(bad, now)


def test_key_comes_from_a_file_or_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(KEY_ENV, raising=False)
    monkeypatch.setenv("AZURE_BATCH_ACCESS_KEY", CANARY_BATCH_KEY)  # a real account's key is never taken
    assert config_from_args(parse()).key == DEFAULT_KEY
    monkeypatch.setenv(KEY_ENV, CANARY_BATCH_KEY)
    assert config_from_args(parse()).key == CANARY_BATCH_KEY
    key_file = tmp_path / "key"
    key_file.write_text(OTHER_KEY + "\n")
    assert config_from_args(parse("--key-file", str(key_file))).key == OTHER_KEY


def test_key_on_the_command_line_still_works_with_a_warning(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(KEY_ENV, raising=False)
    with structlog.testing.capture_logs() as logs:
        assert config_from_args(parse("--key", OTHER_KEY)).key == OTHER_KEY
    warnings = [entry for entry in logs if entry["event"] == "emulator.key_on_command_line"]
    assert len(warnings) == 1
    assert OTHER_KEY not in str(warnings)


@pytest.mark.parametrize(
    ("content", "problem"),
    [("not base64!", "not base64"), ("", "empty"), ("x" * 5000, "too large")],
)
def test_bad_key_file_is_one_line(tmp_path: Path, content: str, problem: str) -> None:
    key_file = tmp_path / "key"
    key_file.write_text(content)
    with pytest.raises(ConfigError) as refused:
        config_from_args(parse("--key-file", str(key_file)))
    assert problem in str(refused.value)
    assert "\n" not in str(refused.value)
    with pytest.raises(ConfigError):
        config_from_args(parse("--key-file", str(tmp_path / "absent")))
    with pytest.raises(ConfigError):
        config_from_args(parse("--key-file", str(key_file), "--key", OTHER_KEY))
