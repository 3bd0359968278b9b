"""Named starting configs: `pipeline/presets/<name>.yaml`, loaded under a config file and flags."""

from __future__ import annotations

from pathlib import Path

from pipeline.core.errors import ConfigError

PRESETS_DIR = Path(__file__).resolve().parent.parent / "presets"


def preset_names() -> list[str]:
    """Names of the shipped presets, 'default' first."""
    return ["default", *sorted(p.stem for p in PRESETS_DIR.glob("*.yaml"))]


def preset_path(name: str) -> Path | None:
    """The YAML file of preset `name` (None for 'default', PipelineConfig's own defaults).

    Raises:
        ConfigError: if there is no such preset.
    """
    if name == "default":
        return None
    path = PRESETS_DIR / f"{name}.yaml"
    if name not in preset_names():
        raise ConfigError(f"unknown preset {name!r}; choose one of: {', '.join(preset_names())}")
    return path
