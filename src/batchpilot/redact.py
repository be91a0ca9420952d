"""Mask secrets in text before it reaches a log line or an error message.

Pure: no configuration, no I/O. The log chain calls `redact(text, known)` on every string it renders, where
`known` holds the secrets this process was given (account keys, connection strings). The patterns cover the
secrets that arrive embedded in other text: SAS signatures in URLs, keys inside connection strings, and the
credential part of an Authorization header.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from urllib.parse import quote

MASK = "REDACTED"

# Shorter "secrets" would mask ordinary words; real keys and tokens are far longer.
_MIN_SECRET_LENGTH = 8

_PATTERNS: tuple[tuple[re.Pattern[str], str], ...] = (
    # A SAS signature as a query value: `?sv=...&sig=abc%2F...&se=...`.
    (re.compile(r"(?i)\b(sig=)[^&\s'\"<>]+"), rf"\g<1>{MASK}"),
    # The same URL-encoded, as a SAS URL carried inside another URL: `...%3Fsv%3D...%26sig%3Dabc%252F...%26`.
    (re.compile(r"(?i)((?:%26|%3F|\b)sig%3D)(?:(?!%26)[^&\s'\"<>])+"), rf"\g<1>{MASK}"),
    # Connection string fields: `AccountKey=...;` and `SharedAccessSignature=...;`.
    (re.compile(r"(?i)\b(AccountKey=)[^;\s'\"]+"), rf"\g<1>{MASK}"),
    (re.compile(r"(?i)\b(SharedAccessSignature=)[^;\s'\"]+"), rf"\g<1>{MASK}"),
    # Authorization header values: `SharedKey account:signature` and `Bearer token`.
    (re.compile(r"\b(SharedKey(?:Lite)? [^:\s]+:)[^\s'\"]+"), rf"\g<1>{MASK}"),
    (re.compile(r"\b(Bearer )[^\s'\"]+"), rf"\g<1>{MASK}"),
)


# Every pattern above needs one of these in an ASCII text (compared in lower case, so a superset of what the
# case-sensitive patterns match): a log line without any is not searched six times over. Other texts are
# always searched: ignoring case, the patterns also match the long s (U+017F) for `s`
# and the dotless i (U+0131) for `i`.
_MARKERS = ("sig=", "sig%3d", "accountkey=", "sharedaccesssignature=", "sharedkey", "bearer ")


def redact(text: str, secrets: Iterable[str] = ()) -> str:
    """`text` with every known secret (raw or URL-encoded) and every recognised secret pattern masked."""
    # Longest first, so a secret that contains another is masked whole.
    for secret in sorted({s for s in secrets if len(s) >= _MIN_SECRET_LENGTH}, key=len, reverse=True):
        text = text.replace(secret, MASK)
        encoded = quote(secret, safe="")
        if encoded != secret:
            text = text.replace(encoded, MASK)
    lowered = text.lower()
    if not text.isascii() or any(marker in lowered for marker in _MARKERS):
        for pattern, replacement in _PATTERNS:
            text = pattern.sub(replacement, text)
    return text
