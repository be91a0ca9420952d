from __future__ import annotations

import pytest

from batchpilot.redact import MASK, redact

KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "GET https://a.blob.core.windows.net/c?sv=2024-08-04&se=2030-01-01&sp=r&sig=abc%2Bdef%3D&x=1",
            f"GET https://a.blob.core.windows.net/c?sv=2024-08-04&se=2030-01-01&sp=r&sig={MASK}&x=1",
        ),
        ("url='https://h/c?sp=w&SIG=Zm9v' done", f"url='https://h/c?sp=w&SIG={MASK}' done"),
        (
            "DefaultEndpointsProtocol=https;AccountName=acct;AccountKey=c2VjcmV0;EndpointSuffix=core.windows.net",
            f"DefaultEndpointsProtocol=https;AccountName=acct;AccountKey={MASK};EndpointSuffix=core.windows.net",
        ),
        (
            "BlobEndpoint=https://a/;SharedAccessSignature=sv=2024&sig=abc",
            f"BlobEndpoint=https://a/;SharedAccessSignature={MASK}",
        ),
        ("Authorization: SharedKey acct:Pp66ESKDFFgIcq2=", f"Authorization: SharedKey acct:{MASK}"),
        ("Authorization: Bearer eyJ0eXAi.eyJhdWQi.c2ln", f"Authorization: Bearer {MASK}"),
        ("pool tutorial-pool created with 5 nodes", "pool tutorial-pool created with 5 nodes"),
        ("", ""),
    ],
)
def test_patterns_are_masked(text: str, expected: str) -> None:
    assert redact(text) == expected


def test_known_secret_is_masked_raw_and_url_encoded() -> None:
    encoded = KEY.replace("/", "%2F").replace("=", "%3D")
    text = f"key {KEY} in a url ?k={encoded} end"
    assert redact(text, [KEY]) == f"key {MASK} in a url ?k={MASK} end"


def test_longer_secret_wins_over_one_it_contains() -> None:
    assert redact("x abcdefgh12345678 y", ["abcdefgh", "abcdefgh12345678"]) == f"x {MASK} y"


def test_short_or_empty_secrets_are_ignored() -> None:
    # Masking "" or a tiny string would shred ordinary text.
    assert redact("a pool of nodes", ["", "a", "pool"]) == "a pool of nodes"


def test_redact_is_idempotent() -> None:
    once = redact(f"AccountKey={KEY};sig=abc", [KEY])
    assert redact(once, [KEY]) == once
    assert KEY not in once
