import subprocess
import sys

import pytest
import yaml

from pipeline.core.config import PipelineConfig, load_config
from pipeline.core.errors import ConfigError
from pipeline.core.presets import preset_names, preset_path
from tests.support import REPO_ROOT


def preset_values(name: str) -> dict:
    return yaml.safe_load(preset_path(name).read_text())


def test_the_shipped_presets_are_valid_configs():
    assert preset_names()[0] == "default" and "quality" in preset_names()
    assert load_config(preset="default") == PipelineConfig().validate()
    for name in preset_names()[1:]:
        values = preset_values(name)
        assert values, f"preset {name} sets nothing"
        config = load_config(preset=name)
        assert {key: getattr(config, key) for key in values} == values


def test_a_config_file_and_flags_win_over_the_preset(tmp_path):
    quality = preset_values("quality")
    changed = next(key for key in ("epochs", "batch_size") if key in quality)
    config_file = tmp_path / "mine.yaml"
    config_file.write_text(yaml.safe_dump({changed: 3}))
    assert getattr(load_config(config_file, preset="quality"), changed) == 3
    assert getattr(load_config(config_file, {changed: 4}, preset="quality"), changed) == 4


def test_an_unknown_preset_names_the_choices():
    with pytest.raises(ConfigError, match="unknown preset 'turbo'; choose one of: default, quality"):
        load_config(preset="turbo")


def test_the_cli_takes_a_preset():
    result = subprocess.run(
        [sys.executable, "-m", "pipeline", "config", "--preset", "quality", "--seed", "7"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    printed = yaml.safe_load(result.stdout)
    assert printed["seed"] == 7
    assert {key: printed[key] for key in preset_values("quality")} == preset_values("quality")
