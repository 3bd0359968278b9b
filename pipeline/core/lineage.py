"""An append-only lineage log (JSON lines) of every run and every label move."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from pipeline.core.artifacts import file_lock, utc_now
from pipeline.core.config import PipelineConfig


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
