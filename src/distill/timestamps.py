"""Timestamps as every stage reads them: aware datetimes, naive ones taken as UTC.

    utc("2026-10-01T09:30:00Z")        # datetime(2026, 10, 1, 9, 30, tzinfo=timezone.utc)
    utc("2026-10-01")                  # midnight UTC
    utc(1790000000)                    # seconds since the epoch
    utc(None)                          # now

A query log, an imported trace, a rating and `--cutoff` all give times this way; a value that is
none of these is a ValueError, which each caller turns into its own one-line error.
"""

from __future__ import annotations

from datetime import datetime, timezone


def utc(value) -> datetime:
    if value is None:
        return datetime.now(timezone.utc)
    if isinstance(value, datetime):
        moment = value
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        return datetime.fromtimestamp(value, timezone.utc)
    else:
        moment = datetime.fromisoformat(str(value).strip().replace("Z", "+00:00"))
    return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)
