"""Bounded decompression of request bodies (gzip and zlib/deflate streams).

A small compressed body can inflate to gigabytes; :func:`inflate` stops as soon as the output
would pass the caller's limit, before inflating more. Used by REST (``Content-Encoding:
gzip``) and gRPC (``grpc-encoding: gzip`` or ``deflate``).
"""

from __future__ import annotations

import zlib

#: ``wbits`` for :func:`inflate`: gzip members, or a zlib stream (gRPC's ``deflate``).
GZIP = 16 + zlib.MAX_WBITS
ZLIB = zlib.MAX_WBITS


class InflatedTooLarge(Exception):
    """The decompressed data would be larger than ``limit`` bytes."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"decompressed data exceeds {limit} bytes")
        self.limit = limit


def inflate(data: bytes, wbits: int = GZIP, limit: int | None = None) -> bytes:
    """Decompress ``data`` (for gzip one or more members, as ``gzip.decompress``), producing
    at most ``limit`` bytes (None: no limit).

    Raises :class:`InflatedTooLarge` as soon as the output would exceed ``limit``, and
    ``zlib.error`` / ``EOFError`` for data that is not in the format or is cut short.
    """
    out: list[bytes] = []
    total = 0
    while data:
        inflater = zlib.decompressobj(wbits)
        pending = data
        while not inflater.eof:
            room = 0 if limit is None else limit + 1 - total  # 0: unbounded
            piece = inflater.decompress(pending, room)
            pending = inflater.unconsumed_tail
            if not piece and not pending and not inflater.eof:
                raise EOFError("Compressed data ended before the end-of-stream marker")
            total += len(piece)
            if limit is not None and total > limit:
                raise InflatedTooLarge(limit)
            out.append(piece)
        data = inflater.unused_data
        if wbits != GZIP:
            if data:
                raise zlib.error("data after the end of the zlib stream")
            break
    return b"".join(out)


__all__ = ["GZIP", "ZLIB", "InflatedTooLarge", "inflate"]
