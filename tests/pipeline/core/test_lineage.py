"""The lineage log answers which version each serving label pointed at, at any moment."""

from __future__ import annotations

import datetime as dt

import pytest

from pipeline.core import lineage
from pipeline.core.errors import ConfigError


def _at(text: str) -> dt.datetime:
    return lineage.parse_time(text)


ENTRIES = [
    {"time": "2026-11-20T02:05:00+00:00", "event": "gate", "blessed": True},
    # Written before records carried every label: only the moved one.
    {"time": "2026-11-20T02:06:00+00:00", "event": "label_moved", "label": "canary", "version": 1, "by": "scheduled"},
    {"time": "2026-11-20T02:07:00+00:00", "event": "label_moved", "label": "stable", "version": 1, "by": "scheduled"},
    {
        "time": "2026-11-21T02:06:00+00:00",
        "event": "label_moved",
        "label": "canary",
        "version": 2,
        "labels": {"stable": 1, "canary": 2},
        "by": "scheduled",
    },
    {
        "time": "2026-11-21T02:07:00+00:00",
        "event": "labels_restored",  # the smoke test failed: canary back on stable
        "labels": {"stable": 1, "canary": 1},
        "by": "automatic: promotion failed",
    },
    {
        "time": "2026-11-22T10:00:00+00:00",
        "event": "rollback",
        "label": "stable",
        "version": 1,
        "labels": {"stable": 1, "canary": 1},
        "by": "manual by admin",
    },
]


def test_labels_at_replays_label_records_up_to_the_moment():
    assert lineage.labels_at(ENTRIES, _at("2026-11-20T02:00:00Z")) == {}
    early = lineage.labels_at(ENTRIES, _at("2026-11-20T02:06:30Z"))
    assert early == {
        "canary": {"version": 1, "since": "2026-11-20T02:06:00+00:00", "by": "scheduled", "event": "label_moved"}
    }
    during_canary = lineage.labels_at(ENTRIES, _at("2026-11-21T02:06:30Z"))
    assert {label: info["version"] for label, info in during_canary.items()} == {"stable": 1, "canary": 2}
    assert during_canary["stable"]["since"] == "2026-11-20T02:07:00+00:00"  # unchanged label keeps its time
    restored = lineage.labels_at(ENTRIES, _at("2026-11-21T03:06:30+01:00"))  # 02:06:30 UTC: before the restore
    assert restored["canary"]["version"] == 2
    later = lineage.labels_at(ENTRIES, _at("2026-11-23T00:00:00"))  # no zone: UTC
    assert later["canary"] == {
        "version": 1,
        "since": "2026-11-21T02:07:00+00:00",
        "by": "automatic: promotion failed",
        "event": "labels_restored",
    }
    assert later["stable"]["since"] == "2026-11-20T02:07:00+00:00"  # a rollback to the same version moves nothing


def test_a_time_that_is_not_iso_8601_is_refused_with_an_example():
    with pytest.raises(ConfigError, match=r"not an ISO 8601 time: 'yesterday' \(e.g. 2026-11-24T02:00:00Z\)"):
        lineage.parse_time("yesterday")
