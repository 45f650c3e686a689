"""Row chunks for multi-row statements, shared by the sighting writer and the rollups."""

from __future__ import annotations

from collections.abc import Iterator

#: Rows per multi-row statement: up to 31 parameters a row stays under SQLite's 32,766
#: bound parameters (and PostgreSQL's 65,535). A power of 4.
CHUNK_ROWS = 1_024


def row_chunks(n: int, most: int = CHUNK_ROWS) -> Iterator[tuple[int, int]]:
    """(start, stop) of row chunks for multi-row statements: `most` rows at a time,
    the rest in quarters (256, 64, 16, 4, 1 rows), so that only a handful of
    distinct statements is ever compiled and cached by the driver (a cache full
    of one-off 2,000-row statements held hundreds of MiB)."""
    start = 0
    size = most
    while start < n:
        while size > n - start:
            size //= 4
        yield start, start + size
        start += size


__all__ = ["CHUNK_ROWS", "row_chunks"]
