"""The project as an installable package: wheel, console scripts, and DAGs parsed from the installed package."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tomllib
from pathlib import Path

from tests.support import REPO_ROOT


def _pins(lines) -> dict[str, str]:
    pins = {}
    for line in lines:
        match = re.match(r"^\s*([A-Za-z0-9_.\-]+)==([^\s#;]+)", line)
        if match:
            pins[match.group(1).lower().replace("_", "-")] = match.group(2)
    return pins


def test_the_package_pins_match_requirements_txt():
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
    required = _pins((REPO_ROOT / "requirements.txt").read_text().splitlines())
    declared = _pins(project["dependencies"] + project["optional-dependencies"]["airflow"])
    assert declared, "pyproject.toml declares no dependencies"
    assert {name: required.get(name) for name in declared} == declared


def test_the_wheel_installs_into_a_fresh_venv_and_the_dags_parse_there_without_pythonpath(tmp_path):
    source = tmp_path / "source"  # setuptools writes build/ and *.egg-info next to the sources: not in the checkout
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO_ROOT / name, source / name)
    for package in ("pipeline", "serving"):
        shutil.copytree(REPO_ROOT / package, source / package, ignore=shutil.ignore_patterns("__pycache__"))
    wheels = tmp_path / "wheels"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(wheels), "."],
        cwd=source,
        check=True,
        capture_output=True,
        timeout=600,
    )
    (wheel,) = wheels.glob("keras_mlops_pipeline-*.whl")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    site_packages = Path(
        subprocess.run(
            [str(venv / "bin" / "python"), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    )
    # The pinned dependencies (TensorFlow, Airflow: gigabytes) come from this environment, which
    # does not hold the project itself; the package comes only from the wheel.
    (site_packages / "project_dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run(
        [str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    dags = tmp_path / "airflow" / "dags"
    shutil.copytree(REPO_ROOT / "dags", dags, ignore=shutil.ignore_patterns("__pycache__"))
    # As the README installs it: the plugin in $AIRFLOW_HOME/plugins, Airflow's default plugins folder.
    shutil.copytree(REPO_ROOT / "plugins", dags.parent / "plugins", ignore=shutil.ignore_patterns("__pycache__"))
    env = {
        key: value for key, value in os.environ.items() if key not in ("PYTHONPATH", "AIRFLOW__CORE__PLUGINS_FOLDER")
    }
    env["AIRFLOW_HOME"] = str(tmp_path / "airflow")
    code = (
        "import pathlib, pipeline, serving\n"
        "from airflow.dag_processing.dagbag import BundleDagBag\n"
        f"dags = pathlib.Path({str(dags)!r})\n"
        "bag = BundleDagBag(dag_folder=str(dags), bundle_path=dags)\n"
        "assert bag.import_errors == {}, bag.import_errors\n"
        "print(sorted(bag.dag_ids))\n"
        "print(pipeline.__file__)\n"
        "print(serving.__file__)\n"
    )
    result = subprocess.run(
        [str(venv / "bin" / "python"), "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.splitlines()
    assert "['fashion_mnist_drift', 'fashion_mnist_rollback', 'fashion_mnist_training']" in lines
    assert all(line.startswith(str(site_packages)) for line in lines[-2:]), lines  # imported from the wheel
    for script, args, expected in (
        ("mlops-pipeline", ["--help"], "run"),
        ("mlops-serving", ["--version"], "TensorFlow ModelServer"),
        ("mlops-client", ["--help"], "predict"),
    ):
        run = subprocess.run(
            [str(venv / "bin" / script), *args], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
        )
        assert run.returncode == 0 and expected in run.stdout, (script, run.stdout[-500:], run.stderr[-1500:])


def test_the_top_level_dockerfile_agrees_with_the_pins_and_the_layout():
    """No Docker engine here: the Dockerfile is read as instructions and checked against the project."""
    instructions = []
    for line in (REPO_ROOT / "Dockerfile").read_text().replace("\\\n", " ").splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            keyword, _, rest = line.strip().partition(" ")
            instructions.append((keyword.upper(), rest.strip()))
    args = dict(rest.split("=", 1) for keyword, rest in instructions if keyword == "ARG" and "=" in rest)
    pins = _pins((REPO_ROOT / "requirements.txt").read_text().splitlines())
    assert args["AIRFLOW_VERSION"] == pins["apache-airflow"]
    assert args["TENSORFLOW_VERSION"] == pins["tensorflow"]
    assert args["PYTHON_VERSION"] == "3.11"
    froms = [rest for keyword, rest in instructions if keyword == "FROM"]
    assert froms[-1] == "apache/airflow:${AIRFLOW_VERSION}-python${PYTHON_VERSION}"  # the official image
    assert [rest for keyword, rest in instructions if keyword == "USER"][-1] == "airflow"  # not root
    copies = [rest.split()[-2:] for keyword, rest in instructions if keyword == "COPY" and "--from" not in rest]
    for source, _ in copies:
        assert (REPO_ROOT / source.rstrip("/")).exists(), source
    assert ["dags/", "/opt/airflow/dags/"] in copies
    assert ["plugins/", "/opt/airflow/plugins/"] in copies  # the timetable the DAG needs, notes, report views
    install = next(rest for keyword, rest in instructions if keyword == "RUN" and "apache-airflow==" in rest)
    assert '"keras-mlops-pipeline[airflow]"' in install and "tensorflow${TENSORFLOW_EXTRA:+" in install
