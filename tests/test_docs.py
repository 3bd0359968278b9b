"""The documentation: the site builds with --strict (broken links and anchors fail), its reference
pages are generated from the code, and the README stays a short entry point whose links resolve."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import REPO_ROOT


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("site")
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)],
        cwd=REPO_ROOT,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    return out


def test_the_configuration_reference_lists_every_option_with_its_flag(site):
    from pipeline.core.config import field_names

    page = (site / "reference" / "configuration" / "index.html").read_text()
    for name in field_names():
        assert f"<code>{name}</code>" in page and f"<code>--{name.replace('_', '-')}</code>" in page, name


def test_the_serving_reference_lists_every_server_flag(site):
    from serving.server.app import build_parser

    page = (site / "reference" / "serving" / "index.html").read_text()
    flags = [action.option_strings[0] for action in build_parser()._actions if action.dest != "help"]
    assert flags and all(f"<code>{flag}</code>" in page for flag in flags)


def test_the_benchmark_page_shows_the_latest_figures(site):
    page = (site / "benchmarks" / "index.html").read_text()
    suite = (REPO_ROOT / "bench" / "results" / "tf_serving_suite.md").read_text()
    headline = re.search(r"\*\*(\d+ of \d+ pass)\*\*", suite).group(1)
    assert headline in page and (site / "bench" / "results" / "training_speed.png").exists()


def test_the_readme_is_a_short_entry_point_whose_links_resolve():
    readme = (REPO_ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 200
    assert "make demo" in readme and "make test" in readme
    links = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", readme)
    assert links and [link for link in links if not (REPO_ROOT / link).exists()] == []
