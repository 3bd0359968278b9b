"""Writing a benchmark's report: JSON of the figures, a Markdown table and, where drawn, a PNG plot."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path


def write_report(
    out_dir: str | Path, name: str, results: dict, markdown: str, plot: Callable[[dict, Path], None] | None = None
) -> None:
    """Writes `<name>.json`, `<name>.md` and (with `plot`) `<name>.png` under `out_dir`."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.json").write_text(json.dumps(results, indent=2) + "\n")
    (out / f"{name}.md").write_text(markdown)
    if plot is not None:
        plot(results, out / f"{name}.png")
    print(f"written {out}/{name}.{{json,md{',png' if plot else ''}}}")
