"""Bounded decompression shared by REST and gRPC request bodies."""

from __future__ import annotations

import gzip
import zlib

import pytest

from pyserving.compression import GZIP, ZLIB, InflatedTooLarge, inflate


def test_gzip_members_are_joined_as_gzip_decompress_does() -> None:
    data = gzip.compress(b"hello ") + gzip.compress(b"world")
    assert inflate(data, GZIP) == b"hello world" == gzip.decompress(data)
    assert inflate(b"", GZIP) == b""


def test_compressed_empty_data() -> None:
    assert inflate(gzip.compress(b""), GZIP) == b""
    assert inflate(zlib.compress(b""), ZLIB) == b""


def test_zlib_streams_as_grpc_deflate() -> None:
    assert inflate(zlib.compress(b"x" * 1000), ZLIB) == b"x" * 1000
    with pytest.raises(zlib.error):
        inflate(zlib.compress(b"a") + b"trailing", ZLIB)


@pytest.mark.parametrize(("wbits", "compress"), [(GZIP, gzip.compress), (ZLIB, zlib.compress)])
def test_output_stops_at_the_limit(wbits: int, compress: object) -> None:
    bomb = compress(b"\x00" * 50_000_000)  # type: ignore[operator]
    assert len(bomb) < 100_000
    with pytest.raises(InflatedTooLarge) as info:
        inflate(bomb, wbits, limit=1_000_000)
    assert info.value.limit == 1_000_000
    assert inflate(compress(b"abc"), wbits, limit=3) == b"abc"  # type: ignore[operator]


def test_cut_or_foreign_data_is_an_error() -> None:
    with pytest.raises((EOFError, zlib.error)):
        inflate(gzip.compress(b"x" * 1000)[:-12], GZIP)
    with pytest.raises(zlib.error):
        inflate(b"not compressed at all", GZIP)
    with pytest.raises((EOFError, zlib.error)):
        inflate(zlib.compress(b"y" * 1000)[:-6], ZLIB)
