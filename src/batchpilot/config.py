"""Azure settings: where the Batch and Storage accounts are and how to sign in to them.

Each setting comes from the first source that has it:

1. explicit values (the CLI's flags), keyed like the TOML file: `batch.endpoint`, `storage.key`, ...;
2. the environment, under the az CLI's names (`AZURE_BATCH_ENDPOINT`, `AZURE_STORAGE_KEY`, ...);
3. `batchpilot.toml`: the `[azure.batch]` and `[azure.storage]` tables.

Loading validates everything once, so a mistake surfaces before any request as a `ConfigError` of one line
naming the setting (its environment variable and TOML key) and the fix. Secrets never appear in a repr or a
message: keys are `repr=False` fields and messages describe a bad key without quoting it.
"""

from __future__ import annotations

import base64
import binascii
import enum
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from .errors import ConfigError
from .files import read_small_file

DEFAULT_TOML = Path("batchpilot.toml")
# A settings file is a few lines: read no further (nor from a FIFO or a device: files.read_small_file).
MAX_CONFIG_FILE_BYTES = 1 << 20

# Azurite's documented development account; `UseDevelopmentStorage=true` means exactly this.
_DEV_ACCOUNT = "devstoreaccount1"
_DEV_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
_DEV_BLOB_ENDPOINT = "http://127.0.0.1:10000/devstoreaccount1"


@dataclass(frozen=True, slots=True)
class _Setting:
    """Where one setting can come from: its explicit/TOML key and its environment variable names."""

    key: str
    env: tuple[str, ...]

    @property
    def table(self) -> str:
        return "azure." + self.key.split(".")[0]

    @property
    def field(self) -> str:
        return self.key.split(".")[1]

    def describe(self) -> str:
        return f"{' or '.join(self.env)} (or {self.field} in [{self.table}] of {DEFAULT_TOML})"


BATCH_ENDPOINT = _Setting("batch.endpoint", ("AZURE_BATCH_ENDPOINT",))
BATCH_ACCOUNT = _Setting("batch.account", ("AZURE_BATCH_ACCOUNT",))
# The az CLI reads AZURE_BATCH_ACCESS_KEY; AZURE_BATCH_KEY is what our own issue tracker first asked for.
BATCH_ACCESS_KEY = _Setting("batch.access_key", ("AZURE_BATCH_ACCESS_KEY", "AZURE_BATCH_KEY"))
STORAGE_CONNECTION_STRING = _Setting("storage.connection_string", ("AZURE_STORAGE_CONNECTION_STRING",))
STORAGE_ACCOUNT = _Setting("storage.account", ("AZURE_STORAGE_ACCOUNT",))
STORAGE_KEY = _Setting("storage.key", ("AZURE_STORAGE_KEY",))
STORAGE_BLOB_ENDPOINT = _Setting("storage.blob_endpoint", ("AZURE_STORAGE_BLOB_ENDPOINT",))

SETTINGS: tuple[_Setting, ...] = (
    BATCH_ENDPOINT,
    BATCH_ACCOUNT,
    BATCH_ACCESS_KEY,
    STORAGE_CONNECTION_STRING,
    STORAGE_ACCOUNT,
    STORAGE_KEY,
    STORAGE_BLOB_ENDPOINT,
)


class AuthMode(enum.StrEnum):
    SHARED_KEY = "shared key"
    ENTRA_ID = "Entra ID"


@dataclass(frozen=True, slots=True)
class BatchSettings:
    endpoint: str
    account: str | None
    access_key: str | None = field(default=None, repr=False)

    @property
    def auth(self) -> AuthMode:
        return AuthMode.SHARED_KEY if self.access_key else AuthMode.ENTRA_ID


@dataclass(frozen=True, slots=True)
class StorageSettings:
    """A resolved Storage account: a connection string is parsed into these fields when loading."""

    account: str
    account_url: str
    account_key: str | None = field(default=None, repr=False)

    @property
    def auth(self) -> AuthMode:
        return AuthMode.SHARED_KEY if self.account_key else AuthMode.ENTRA_ID


@dataclass(frozen=True, slots=True)
class AzureSettings:
    batch: BatchSettings
    storage: StorageSettings

    @property
    def secrets(self) -> tuple[str, ...]:
        """The secret strings these settings hold, for `batchpilot.redact.redact`."""
        return tuple(s for s in (self.batch.access_key, self.storage.account_key) if s)

    @classmethod
    def load(
        cls,
        explicit: Mapping[str, str | None] | None = None,
        *,
        env: Mapping[str, str] | None = None,
        toml_path: Path | None = None,
    ) -> AzureSettings:
        """Merge the three sources and validate. `toml_path=None` reads ./batchpilot.toml if present."""
        sources = _Sources(
            explicit={k: v for k, v in (explicit or {}).items() if v},
            env=os.environ if env is None else env,
            toml=_read_toml(toml_path),
        )
        unknown = sorted(set(sources.explicit) - {s.key for s in SETTINGS})
        if unknown:
            raise ConfigError(
                f"unknown Azure setting {unknown[0]!r}; known: {', '.join(s.key for s in SETTINGS)}"
            )
        return cls(batch=_batch_settings(sources), storage=_storage_settings(sources))


@dataclass(frozen=True, slots=True)
class _Sources:
    explicit: Mapping[str, str]
    env: Mapping[str, str]
    toml: Mapping[str, str]

    def get(self, setting: _Setting) -> str | None:
        if setting.key in self.explicit:
            return self.explicit[setting.key].strip()
        for name in setting.env:
            if self.env.get(name, "").strip():
                return self.env[name].strip()
        value = self.toml.get(setting.key, "").strip()
        return value or None


def _read_toml(path: Path | None) -> dict[str, str]:
    """The `[azure.*]` settings of the TOML file as `table.key` strings; other tables belong to others."""
    if path is None:
        if not DEFAULT_TOML.is_file():
            return {}
        path = DEFAULT_TOML
    try:
        document = tomllib.loads(read_small_file(path, MAX_CONFIG_FILE_BYTES).decode("utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"config file {path} not found; create it or drop --config") from None
    except RecursionError:  # tomllib reads nested arrays and inline tables recursively
        raise ConfigError(f"config file {path}: arrays or tables nested too deeply") from None
    except UnicodeDecodeError:
        raise ConfigError(f"config file {path} is not UTF-8 text; settings files are TOML") from None
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path} ({exc.strerror}); give a TOML file") from None
    except ValueError as exc:
        # tomllib's TOMLDecodeError, or an integer too long for Python to read.
        raise ConfigError(f"cannot read config file {path}: {exc}") from None
    azure = document.get("azure", {})
    values: dict[str, str] = {}
    known = {s.key for s in SETTINGS}
    for table_name in ("batch", "storage"):
        table: Any = azure.get(table_name, {}) if isinstance(azure, dict) else None
        if not isinstance(table, dict):
            raise ConfigError(f"[azure.{table_name}] in {path} must be a table of settings")
        for name, value in table.items():
            key = f"{table_name}.{name}"
            if key not in known:
                expected = ", ".join(s.field for s in SETTINGS if s.key.startswith(table_name + "."))
                raise ConfigError(
                    f"unknown setting {name!r} in [azure.{table_name}] of {path}; expected {expected}"
                )
            if not isinstance(value, str):
                raise ConfigError(f"{name} in [azure.{table_name}] of {path} must be a string")
            values[key] = value
    return values


def _batch_settings(sources: _Sources) -> BatchSettings:
    endpoint = sources.get(BATCH_ENDPOINT)
    if endpoint is None:
        raise ConfigError(
            f"missing Batch endpoint: set {BATCH_ENDPOINT.describe()}, "
            "e.g. https://myaccount.westeurope.batch.azure.com"
        )
    endpoint = _check_url(endpoint, BATCH_ENDPOINT, "Batch endpoint")
    key = sources.get(BATCH_ACCESS_KEY)
    account = sources.get(BATCH_ACCOUNT)
    if key is None:
        _require_https_for_entra(endpoint, BATCH_ACCESS_KEY, "Batch endpoint")
        return BatchSettings(endpoint=endpoint, account=account)
    _check_key(key, BATCH_ACCESS_KEY, "Batch access key")
    # A Batch endpoint's first DNS label is the account name; an emulator on an IP address has none.
    host = urlsplit(endpoint).hostname or ""
    if account is None and ".batch." in host:
        account = host.split(".")[0]
    if account is None:
        raise ConfigError(
            f"missing Batch account name (needed with an access key): set {BATCH_ACCOUNT.describe()}"
        )
    return BatchSettings(endpoint=endpoint, account=account, access_key=key)


def _storage_settings(sources: _Sources) -> StorageSettings:
    connection_string = sources.get(STORAGE_CONNECTION_STRING)
    if connection_string is not None:
        return _from_connection_string(connection_string)
    account = sources.get(STORAGE_ACCOUNT)
    blob_endpoint = sources.get(STORAGE_BLOB_ENDPOINT)
    if account is None:
        raise ConfigError(
            f"missing Storage account: set {STORAGE_ACCOUNT.describe()}, "
            f"or a connection string in {STORAGE_CONNECTION_STRING.describe()}"
        )
    if blob_endpoint is None:
        account_url = f"https://{account}.blob.core.windows.net"
    else:
        account_url = _check_url(blob_endpoint, STORAGE_BLOB_ENDPOINT, "Storage blob endpoint")
    key = sources.get(STORAGE_KEY)
    if key is None:
        _require_https_for_entra(account_url, STORAGE_KEY, "Storage blob endpoint")
    else:
        _check_key(key, STORAGE_KEY, "Storage account key")
    return StorageSettings(account=account, account_url=account_url, account_key=key)


def _from_connection_string(text: str) -> StorageSettings:
    where = STORAGE_CONNECTION_STRING.describe()
    fields: dict[str, str] = {}
    for part in filter(None, (p.strip() for p in text.split(";"))):
        name, sep, value = part.partition("=")
        if not sep:
            # Never quote the part: it may be a piece of the key.
            raise ConfigError(f"malformed Storage connection string in {where}: expected Name=Value pairs")
        fields[name.strip().lower()] = value.strip()
    if fields.get("usedevelopmentstorage", "").lower() == "true":
        return StorageSettings(account=_DEV_ACCOUNT, account_url=_DEV_BLOB_ENDPOINT, account_key=_DEV_KEY)
    if "sharedaccesssignature" in fields and "accountkey" not in fields:
        raise ConfigError(
            f"a SAS connection string in {where} cannot sign task URLs: use one with AccountKey, "
            "or set AZURE_STORAGE_ACCOUNT alone to sign in with Entra ID"
        )
    account, key = fields.get("accountname"), fields.get("accountkey")
    if not account or not key:
        missing = "AccountName" if not account else "AccountKey"
        raise ConfigError(
            f"the Storage connection string in {where} has no {missing}; copy it again from the portal"
        )
    _check_key(key, STORAGE_CONNECTION_STRING, "AccountKey of the Storage connection string")
    if "blobendpoint" in fields:
        account_url = _check_url(fields["blobendpoint"], STORAGE_CONNECTION_STRING, "BlobEndpoint")
    else:
        protocol = fields.get("defaultendpointsprotocol", "https")
        suffix = fields.get("endpointsuffix", "core.windows.net")
        account_url = _check_url(
            f"{protocol}://{account}.blob.{suffix}",
            STORAGE_CONNECTION_STRING,
            "blob endpoint (from DefaultEndpointsProtocol, AccountName and EndpointSuffix)",
        )
    return StorageSettings(account=account, account_url=account_url, account_key=key)


def _check_url(value: str, setting: _Setting, what: str) -> str:
    if not _is_http_url(value):
        raise ConfigError(
            f"malformed {what} {value!r} in {setting.describe()}: expected an URL like https://host[/path]"
        )
    return value.rstrip("/")


def _is_http_url(value: str) -> bool:
    # urlsplit drops tabs and newlines silently: an URL holding them, or spaces, was pasted wrong.
    if not value.isprintable() or " " in value:
        return False
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 - raises on a port that is no number or out of range
    except ValueError:  # that, or an unclosed "[" of an IPv6 address
        return False
    # A colon with no port after it ("http://127.0.0.1:/x") would fall back to port 80 and fail far later.
    empty_port = parts.netloc.endswith(":") or ":/" in parts.netloc
    return (
        parts.scheme in ("http", "https")
        and bool(parts.hostname)
        and not empty_port
        and not parts.query
        and not parts.fragment
    )


def _check_key(value: str, setting: _Setting, what: str) -> None:
    try:
        decoded = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        decoded = b""
    if not decoded:
        raise ConfigError(
            f"malformed {what} in {setting.describe()}: not base64; "
            "copy the key again from the portal's Keys page"
        )


def _require_https_for_entra(url: str, key: _Setting, what: str) -> None:
    # azure-identity refuses bearer tokens over plain http before sending anything; say so up front.
    if urlsplit(url).scheme != "https":
        raise ConfigError(
            f"Entra ID sign-in needs an https {what}, got {url}: use https, or set a key in {key.describe()}"
        )
