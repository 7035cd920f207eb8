"""Timestamps: aware datetimes, naive ones taken as UTC, from every form the inputs use."""

from datetime import datetime, timedelta, timezone

import pytest

from distill.timestamps import utc


def test_every_form_becomes_an_aware_utc_time():
    expected = datetime(2026, 10, 1, 9, 30, tzinfo=timezone.utc)
    assert utc("2026-10-01T09:30:00Z") == utc("2026-10-01T09:30:00") == utc("2026-10-01T11:30:00+02:00") == expected
    assert utc("2026-10-01") == datetime(2026, 10, 1, tzinfo=timezone.utc)
    assert utc(expected.timestamp()) == expected and utc(datetime(2026, 10, 1, 9, 30)) == expected
    assert abs(utc(None) - datetime.now(timezone.utc)) < timedelta(seconds=5)


def test_anything_else_is_a_value_error_for_the_caller_to_explain():
    with pytest.raises(ValueError):
        utc("last tuesday")
