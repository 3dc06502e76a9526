"""router.http.bodies.inflate: compressed bodies inflate under the body limit, or say why not."""

from __future__ import annotations

import gzip
import zlib

import pytest

from common.errors import BadRequest, PayloadTooLarge
from router.http.bodies import inflate

pytestmark = pytest.mark.timeout(30)

PLAIN = b'{"inputs": []}' * 10


@pytest.mark.parametrize(
    ("encoding", "body"),
    [(None, PLAIN), ("identity", PLAIN), ("gzip", gzip.compress(PLAIN)),
     ("deflate", zlib.compress(PLAIN)), ("GZip ", gzip.compress(PLAIN))],
)  # fmt: skip
def test_each_encoding_inflates_to_the_plain_body(encoding: str | None, body: bytes) -> None:
    assert inflate(body, encoding, limit=len(PLAIN)) == PLAIN


def test_a_body_inflating_past_the_limit_is_413_without_inflating_it_all() -> None:
    bomb = gzip.compress(bytes(50_000_000))  # 50 MB of zeros in about 50 KB
    with pytest.raises(PayloadTooLarge) as caught:
        inflate(bomb, "gzip", limit=1000)
    assert caught.value.details["limit_bytes"] == 1000


@pytest.mark.parametrize(
    ("encoding", "body", "words"),
    [
        ("br", PLAIN, ["'br' is not supported", "gzip"]),
        ("gzip", PLAIN, ["not valid gzip"]),
        ("deflate", zlib.compress(PLAIN)[:-6], ["truncated deflate"]),
    ],
)
def test_unusable_encodings_are_400(encoding: str, body: bytes, words: list[str]) -> None:
    with pytest.raises(BadRequest) as caught:
        inflate(body, encoding, limit=10_000)
    for word in words:
        assert word in caught.value.message
