"""SharedKey verification: the same string-to-sign as the SDK's `BatchSharedKeyAuthPolicy`.

The client signs the method, eleven standard headers, every `ocp-` header, `/account/path` and the sorted
query parameters (decoded, blank ones left out). The server rebuilds that string from what it received and
compares HMACs in constant time.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from collections.abc import Mapping
from urllib.parse import parse_qs

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
    method: str, raw_path: str, raw_query: str, headers: Mapping[str, str], account: str
) -> str:
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
    try:
        expected = sign(key, string_to_sign(method, raw_path, raw_query, headers, account))
    except binascii.Error:
        return False
    return hmac.compare_digest(expected, signature)
