"""An append-only lineage log (JSON lines) of every run and every label move."""

from __future__ import annotations

import datetime as dt
import json
import os
from pathlib import Path
from typing import Any

from pipeline.core.artifacts import file_lock, utc_now
from pipeline.core.config import PipelineConfig
from pipeline.core.errors import ConfigError


def lineage_path(config: PipelineConfig) -> Path:
    """Returns `<workdir>/lineage.jsonl`."""
    return config.workdir_path / "lineage.jsonl"


def record(config: PipelineConfig, event: str, /, **fields: Any) -> dict[str, Any]:
    """Appends one record (with time, event, run id and model) and flushes it to disk.

    Appends are serialised with a lock so concurrent writers never interleave lines.

    Returns:
        The record written.
    """
    entry = {
        "time": utc_now(),
        "event": event,
        "run_id": config.run_id,
        "model_name": config.model_name,
        **fields,
    }
    path = lineage_path(config)
    path.parent.mkdir(parents=True, exist_ok=True)
    line = json.dumps(entry, sort_keys=True, default=str) + "\n"
    with file_lock(path), open(path, "a") as handle:
        handle.write(line)
        handle.flush()
        os.fsync(handle.fileno())
    return entry


def read(config: PipelineConfig) -> list[dict[str, Any]]:
    """Returns every lineage record, oldest first."""
    path = lineage_path(config)
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


# Records that change what serves (each carries every label after the change in `labels`).
LABEL_EVENTS = ("label_moved", "rollback", "labels_restored", "canary_traffic", "canary_rolled_back", "canary_rejected")


def parse_time(text: str) -> dt.datetime:
    """Reads an ISO 8601 time ('2026-11-24T02:00:00Z', '...+01:00'); one without a zone is UTC.

    Raises:
        ConfigError: naming the expected format.
    """
    try:
        when = dt.datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise ConfigError(f"not an ISO 8601 time: {text!r} (e.g. 2026-11-24T02:00:00Z)") from None
    return when if when.tzinfo else when.replace(tzinfo=dt.UTC)


def labels_at(entries: list[dict[str, Any]], when: dt.datetime) -> dict[str, dict[str, Any]]:
    """Which version each serving label pointed at, at time `when`, from lineage records.

    Args:
        entries: Lineage records, oldest first (`read`).
        when: The moment asked about (time-zone aware).

    Returns:
        {label: {"version", "since", "by", "event"}} for each label set at that moment, from
        the last label record up to `when` (records carry every label's version in `labels`;
        older records only the label they moved).
    """
    labels: dict[str, dict[str, Any]] = {}
    for entry in entries:
        if entry["event"] not in LABEL_EVENTS or parse_time(entry["time"]) > when:
            continue
        moved = entry.get("labels")
        if moved is None:  # a record written before records carried every label
            moved = {**{label: info["version"] for label, info in labels.items()}, entry["label"]: entry["version"]}
        now = {}
        for label, version in moved.items():
            unchanged = label in labels and labels[label]["version"] == version
            now[label] = (
                labels[label]
                if unchanged
                else {
                    "version": version,
                    "since": entry["time"],
                    "by": entry.get("by"),
                    "event": entry["event"],
                }
            )
        labels = now
    return labels
