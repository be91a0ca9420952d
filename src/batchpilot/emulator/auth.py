"""SharedKey verification, as the Batch docs define it and as the SDK signs.

The client signs the method, eleven standard headers, every `ocp-` header, `/account/path` and the query
parameters. Per the docs (https://learn.microsoft.com/rest/api/batchservice/authenticate-requests-to-the-
azure-batch-service, "Constructing the canonicalized resource string"), parameter names are lower-cased,
sorted, decoded, and a name given more than once has its values sorted and joined by commas; the service
matches names without regard to case, so `maxResults` signs and reads as `maxresults`. The SDK's
`BatchSharedKeyAuthPolicy` signs the names as given (it only ever sends lower-case ones) and leaves blank
values out. The server rebuilds both strings from what it received and accepts either signature, comparing
HMACs in constant time.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from collections.abc import Mapping
from datetime import datetime, timedelta
from email.utils import parsedate_to_datetime
from urllib.parse import parse_qs, parse_qsl

# "The Batch service must receive a request within 15 minutes of when it is created. By doing this, the
# service is guarded against security attacks, such as replay attacks." (Authenticate requests to Azure Batch)
MAX_REQUEST_SKEW = timedelta(minutes=15)

_HEADERS_TO_SIGN = (
    "content-encoding",
    "content-language",
    "content-length",
    "content-md5",
    "content-type",
    "date",
    "if-modified-since",
    "if-match",
    "if-none-match",
    "if-unmodified-since",
    "range",
)


def string_to_sign(
    method: str,
    raw_path: str,
    raw_query: str,
    headers: Mapping[str, str],
    account: str,
    *,
    as_documented: bool = True,
) -> str:
    """The string a client signs for this request: per the Batch docs (`as_documented`, names lower-cased,
    repeated values sorted and joined), or as the SDK builds it (names as sent, first value, blanks out)."""
    lowered = {name.lower(): value for name, value in headers.items() if value}
    if method in ("GET", "HEAD"):
        # The client signs only headers it set itself; an HTTP library may add `Content-Length: 0` later.
        if lowered.get("content-length") == "0":
            del lowered["content-length"]
    else:
        lowered.setdefault("content-length", "0")
    text = method + "\n" + "\n".join(lowered.get(name, "") for name in _HEADERS_TO_SIGN) + "\n"
    ocp = sorted((name, value) for name, value in lowered.items() if "ocp-" in name)
    text += "".join(f"{name}:{value}\n" for name, value in ocp)
    text += f"/{account}{raw_path}"
    if as_documented:
        params: dict[str, list[str]] = {}
        for name, value in parse_qsl(raw_query, keep_blank_values=True):
            params.setdefault(name.lower(), []).append(value)
        return text + "".join(f"\n{name}:{','.join(sorted(params[name]))}" for name in sorted(params))
    query = parse_qs(raw_query)
    for name in sorted(query):
        value = query[name][0]
        if value:
            text += f"\n{name}:{value}"
    return text


def sign(key: str, text: str) -> str:
    digest = hmac.new(base64.b64decode(key), text.encode(), hashlib.sha256).digest()
    return base64.b64encode(digest).decode()


def verify(
    authorization: str | None,
    *,
    method: str,
    raw_path: str,
    raw_query: str,
    headers: Mapping[str, str],
    account: str,
    key: str,
) -> bool:
    """True when `authorization` is `SharedKey account:signature` with the signature this request needs."""
    if not authorization or not authorization.startswith("SharedKey "):
        return False
    name, _, signature = authorization.removeprefix("SharedKey ").partition(":")
    if name != account:
        return False
    matched = False
    for as_documented in (True, False):
        try:
            text = string_to_sign(method, raw_path, raw_query, headers, account, as_documented=as_documented)
            expected = sign(key, text)
        except binascii.Error:
            return False
        # Both are compared, whichever matches, so the time taken says nothing about the signature.
        matched |= hmac.compare_digest(expected, signature)
    return matched


def request_time(headers: Mapping[str, str]) -> datetime | None:
    """When the client created the request: its `ocp-date` header, else `Date` (RFC 1123); None when it
    gives neither or one that does not parse."""
    text = headers.get("ocp-date") or headers.get("Date")
    if not text or len(text) > 64:
        return None
    try:
        created = parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    return created if created.tzinfo is not None else None


def fresh(headers: Mapping[str, str], now: datetime) -> bool:
    """Whether the request was created within MAX_REQUEST_SKEW of `now`, either way: an older one could be
    a captured request replayed."""
    created = request_time(headers)
    return created is not None and abs(now - created) <= MAX_REQUEST_SKEW
