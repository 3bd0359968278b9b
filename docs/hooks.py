"""MkDocs hooks: reference tables generated from the code, benchmark figures from bench/results.

- `<!-- generated: configuration -->` becomes the table of every `PipelineConfig` option (name,
  flag, default, allowed values, meaning), read from the dataclass's fields and their metadata,
  so the reference cannot drift from the code.
- `<!-- generated: server-flags -->` becomes the table of the serving server's flags, read from
  its argument parser.
- The images under bench/results/ are published with the site (pages link them as
  `bench/results/<name>.png`).
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

from mkdocs.structure.files import File

ROOT = Path(__file__).resolve().parent.parent


def _importable() -> None:
    """The project's packages, importable however mkdocs was started."""
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))


CONFIGURATION = "<!-- generated: configuration -->"
SERVER_FLAGS = "<!-- generated: server-flags -->"


def _cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _default(value) -> str:
    if value is None:
        return "none"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, (list, tuple)):
        return f"`{','.join(str(v) for v in value)}`" if value else "none"
    if isinstance(value, dict):
        return ", ".join(f"`{k}={v}`" for k, v in value.items()) or "none"
    return f"`{value}`" if value != "" else "empty"


def _bounds(metadata) -> str:
    parts = []
    if metadata.get("choices"):
        parts.append(", ".join(f"`{choice}`" for choice in metadata["choices"]))
    for key, sign in (
        ("minimum", ">="),
        ("exclusive_minimum", ">"),
        ("maximum", "<="),
        ("exclusive_maximum", "<"),
    ):
        if metadata.get(key) is not None:
            parts.append(f"{sign} {metadata[key]}")
    return "; ".join(parts)


def configuration_table() -> str:
    """Every PipelineConfig option as a Markdown table, in the dataclass's order."""
    _importable()
    from pipeline.core.config import PipelineConfig

    rows = ["| option | flag | default | allowed | meaning |", "|---|---|---|---|---|"]
    for field in dataclasses.fields(PipelineConfig):
        default = field.default_factory() if field.default is dataclasses.MISSING else field.default
        flag = "--" + field.name.replace("_", "-")
        rows.append(
            f"| `{field.name}` | `{flag}` | {_cell(_default(default))} | {_cell(_bounds(field.metadata))} "
            f"| {_cell(field.metadata.get('help', ''))} |"
        )
    return "\n".join(rows)


def server_flags_table() -> str:
    """Every flag of `python -m serving.server`, with its default and help, as a Markdown table."""
    _importable()
    from serving.server.app import build_parser

    rows = ["| flag | default | meaning |", "|---|---|---|"]
    for action in build_parser()._actions:
        if not action.option_strings or action.dest == "help":
            continue
        default = "" if action.default in (None, "") else f"`{action.default}`"
        rows.append(f"| `{action.option_strings[0]}` | {_cell(default)} | {_cell(action.help or '')} |")
    return "\n".join(rows)


def on_page_markdown(markdown: str, page, config, files) -> str:
    if CONFIGURATION in markdown:
        markdown = markdown.replace(CONFIGURATION, configuration_table())
    if SERVER_FLAGS in markdown:
        markdown = markdown.replace(SERVER_FLAGS, server_flags_table())
    return markdown


def on_files(files, config):
    for image in sorted((ROOT / "bench" / "results").glob("*.png")):
        files.append(
            File(
                f"bench/results/{image.name}",
                src_dir=str(ROOT),
                dest_dir=config["site_dir"],
                use_directory_urls=config["use_directory_urls"],
            )
        )
    return files
