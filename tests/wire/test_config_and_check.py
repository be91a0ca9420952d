from __future__ import annotations

import logging
from pathlib import Path

import pytest

from batchpilot.backends.azure.check import check
from batchpilot.config import AuthMode, AzureSettings
from batchpilot.errors import AuthenticationError, ConfigError

from .conftest import BATCH, BATCH_KEY, BLOBS, STORAGE_KEY, Http

AZURITE = (
    "DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;"
    "AccountKey=Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==;"
    "BlobEndpoint=http://127.0.0.1:10000/devstoreaccount1;"
)
ENV = {
    "AZURE_BATCH_ENDPOINT": BATCH,
    "AZURE_BATCH_ACCESS_KEY": BATCH_KEY,
    "AZURE_STORAGE_ACCOUNT": "store",
    "AZURE_STORAGE_KEY": STORAGE_KEY,
}


def load(env: dict[str, str], toml: Path | None = None, **explicit: str) -> AzureSettings:
    return AzureSettings.load(explicit, env=env, toml_path=toml)


def test_environment_with_shared_keys() -> None:
    settings = load(ENV)

    assert settings.batch.endpoint == BATCH
    assert settings.batch.account == "acct"  # derived from the endpoint's first label
    assert settings.batch.auth is AuthMode.SHARED_KEY
    assert settings.storage.account_url == BLOBS
    assert settings.storage.auth is AuthMode.SHARED_KEY
    assert set(settings.secrets) == {BATCH_KEY, STORAGE_KEY}


def test_keys_never_appear_in_repr() -> None:
    text = repr(load({**ENV, "AZURE_STORAGE_CONNECTION_STRING": AZURITE}))

    assert BATCH_KEY not in text
    assert "Eby8vdM02" not in text


def test_explicit_beats_environment_beats_toml(tmp_path: Path) -> None:
    toml = tmp_path / "batchpilot.toml"
    toml.write_text(
        '[azure.batch]\nendpoint = "https://fromtoml.westeurope.batch.azure.com"\naccount = "tomlacct"\n'
        '[azure.storage]\naccount = "tomlstore"\n[workload]\nname = "not ours"\n'
    )
    env = {
        "AZURE_BATCH_KEY": BATCH_KEY,
        "AZURE_STORAGE_ACCOUNT": "envstore",
        "AZURE_STORAGE_KEY": STORAGE_KEY,
    }

    settings = AzureSettings.load({"batch.account": "flagacct"}, env=env, toml_path=toml)

    assert settings.batch.endpoint == "https://fromtoml.westeurope.batch.azure.com"
    assert settings.batch.account == "flagacct"
    assert settings.batch.access_key == BATCH_KEY  # the AZURE_BATCH_KEY alias
    assert settings.storage.account == "envstore"


def test_azurite_connection_string() -> None:
    settings = load({**ENV, "AZURE_STORAGE_CONNECTION_STRING": AZURITE})

    assert settings.storage.account == "devstoreaccount1"
    assert settings.storage.account_url == "http://127.0.0.1:10000/devstoreaccount1"
    assert settings.storage.account_key is not None


def test_entra_id_when_no_key() -> None:
    settings = load({"AZURE_BATCH_ENDPOINT": BATCH, "AZURE_STORAGE_ACCOUNT": "store"})

    assert settings.batch.auth is AuthMode.ENTRA_ID
    assert settings.storage.auth is AuthMode.ENTRA_ID
    assert settings.secrets == ()


@pytest.mark.parametrize(
    ("env", "toml_text", "expected"),
    [
        ({}, None, r"missing Batch endpoint: set AZURE_BATCH_ENDPOINT \(or endpoint in \[azure.batch\]"),
        (
            {**ENV, "AZURE_BATCH_ENDPOINT": "acct.batch.azure.com"},
            None,
            "malformed Batch endpoint 'acct.batch",
        ),
        (
            {**ENV, "AZURE_BATCH_ACCESS_KEY": "not base64!"},
            None,
            "malformed Batch access key in AZURE_BATCH_ACCESS_KEY",
        ),
        (
            {**ENV, "AZURE_BATCH_ENDPOINT": "http://127.0.0.1:8080"},
            None,
            "missing Batch account name .* AZURE_BATCH_ACCOUNT",
        ),
        (
            {"AZURE_BATCH_ENDPOINT": "http://127.0.0.1:8080", "AZURE_STORAGE_ACCOUNT": "s"},
            None,
            "Entra ID sign-in needs an https Batch endpoint.*AZURE_BATCH_ACCESS_KEY",
        ),
        ({"AZURE_BATCH_ENDPOINT": BATCH}, None, "missing Storage account: set AZURE_STORAGE_ACCOUNT"),
        (
            {**ENV, "AZURE_STORAGE_CONNECTION_STRING": "AccountName=s;garbage"},
            None,
            "malformed Storage connection string in AZURE_STORAGE_CONNECTION_STRING",
        ),
        ({**ENV, "AZURE_STORAGE_CONNECTION_STRING": "AccountName=s"}, None, "has no AccountKey"),
        (
            {**ENV, "AZURE_STORAGE_CONNECTION_STRING": AZURITE.replace(":10000/", ":/")},
            None,
            "malformed BlobEndpoint 'http://127.0.0.1:/devstoreaccount1'",
        ),
        (
            {**ENV, "AZURE_BATCH_ENDPOINT": "http://127.0.0.1:"},
            None,
            "malformed Batch endpoint 'http://127.0.0.1:'",
        ),
        ({}, "[azure.batch]\nendpont = 'x'\n", "unknown setting 'endpont' in \\[azure.batch\\]"),
        ({}, "[azure.batch\n", "cannot read config file"),
        ({}, "[azure.batch]\nendpoint = 3\n", "endpoint in \\[azure.batch\\] .* must be a string"),
    ],
)
def test_config_errors_are_one_line_naming_the_setting(
    tmp_path: Path, env: dict[str, str], toml_text: str | None, expected: str
) -> None:
    toml = None
    if toml_text is not None:
        toml = tmp_path / "batchpilot.toml"
        toml.write_text(toml_text)

    with pytest.raises(ConfigError, match=expected) as raised:
        load(env, toml)

    message = str(raised.value)
    assert "\n" not in message
    assert "not base64!" not in message  # a bad key is described, never quoted


def test_missing_explicit_config_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"config file .*nope\.toml not found"):
        load(ENV, tmp_path / "nope.toml")


# --- check ------------------------------------------------------------------------------------------------


async def test_check_reaches_both_services_and_creates_nothing(
    http: Http, settings: AzureSettings, retry_sleeps: list[float]
) -> None:
    http.batch("GET", "/pools", payload={"value": [{"id": "tutorial-pool"}]})
    http.add(
        BLOBS + "/?restype=account&comp=properties",
        "GET",
        headers={"x-ms-sku-name": "Standard_LRS", "x-ms-account-kind": "StorageV2"},
    )

    lines = await check(settings)

    assert lines == [
        f"Batch: {BATCH} answers (shared key as acct); at least one pool",
        f"Storage: {BLOBS} answers (shared key); StorageV2, Standard_LRS",
    ]
    pools = http.sent()[0]
    assert pools.query == {"api-version": "2025-06-01", "maxresults": "1", "$select": "id"}
    assert {s.method for s in http.sent()} == {"GET"}


async def test_check_with_a_wrong_key_is_one_line_and_logs_no_secret(
    http: Http, settings: AzureSettings, retry_sleeps: list[float], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    http.batch_error("GET", "/pools", 403, "AuthenticationFailed")

    with pytest.raises(
        AuthenticationError, match=r"^list pools at https://acct\.westeurope.* credentials refused"
    ):
        await check(settings)

    assert len(http.sent()) == 1  # one attempt: a check does not retry
    assert BATCH_KEY not in caplog.text
