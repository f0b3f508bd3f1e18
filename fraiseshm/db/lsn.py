"""WAL positions (pg_lsn) as integers, and the position a commit is known to be at or before."""

from __future__ import annotations

from typing import Any

UNKNOWN = (1 << 63) - 1  # a commit whose position could not be read: its tags read the primary until restart
PAGE = 8192  # XLOG_BLCKSZ
SHORT_HEADER, LONG_HEADER = 24, 40  # SizeOfXLogShortPHD, SizeOfXLogLongPHD


def parse_lsn(text: str | None) -> int | None:
    """'16/B374D848' -> int; None stays None (not in recovery, or no WAL replayed yet)."""
    if text is None:
        return None
    high, _, low = text.partition("/")
    return (int(high, 16) << 32) | int(low, 16)


def format_lsn(lsn: int | None) -> str:
    return "" if lsn is None else f"{lsn >> 32:X}/{lsn & 0xFFFFFFFF:X}"


def commit_bound(insert_lsn: int, segment_size: int) -> int:
    """pg_current_wal_insert_lsn() read after a commit, as a position replay can reach.

    The insert position is >= the end of every record already inserted, our commit
    included. At the start of a page it points past the page header, while a replica
    that replayed everything reports the page boundary: that header is subtracted, or
    an idle system would leave the position unreachable until the next WAL record."""
    offset = insert_lsn % PAGE
    if offset == SHORT_HEADER or (offset == LONG_HEADER and insert_lsn % segment_size == LONG_HEADER):
        return insert_lsn - offset
    return insert_lsn


# SQL read on the primary after a commit (or when a notification arrives).
PRIMARY_POSITION_SQL = (
    "SELECT pg_current_wal_insert_lsn()::text, pg_size_bytes(current_setting('wal_segment_size'))"
)


async def primary_position(fetchrow: Any) -> int:
    row = await fetchrow(PRIMARY_POSITION_SQL)
    return commit_bound(parse_lsn(row[0]) or 0, int(row[1]))
