"""Command line: `python -m pipeline run | <step> | promote | rollback | config | lineage | history | drift`.

`run` runs the whole step sequence (`pipeline.runner.STEPS`), exactly as the Airflow DAG
does; each step is also a command of its own (`ingest`, `train`, `infra-validate`, ...),
reading its inputs from the manifest of `--run-id` or from `--snapshot`, `--model-path`,
`--evaluation` and `--version-dir`. Every config field is a flag (`--batch-size 64`), on
top of an optional YAML file (`--config my.yaml`).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import getpass
import json
import logging
import sys
from typing import Any

import yaml

from pipeline import runner
from pipeline.core import config as config_module
from pipeline.core import lineage
from pipeline.core.errors import PipelineError, ServingUnavailableError
from pipeline.core.presets import preset_names

log = logging.getLogger("pipeline")

PROMOTE_STEPS = ("promote_canary", "smoke_test", "watch_canary", "mark_stable")
COMMAND_HELP = {
    "run": "Run every step, as the DAG does: " + " -> ".join(runner.STEP_NAMES) + ".",
    **{step.name.replace("_", "-"): step.help for step in runner.STEPS},
    "promote": "Release an exported version: " + " -> ".join(PROMOTE_STEPS) + ".",
    "config": "Print the effective configuration as YAML.",
    "rollback": "Move the 'stable' serving label back to an earlier published version.",
    "lineage": "Print the lineage log (runs, gate decisions, versions, label moves) as JSON lines.",
    "history": "Say which version each serving label pointed at, now or --at a past time (from the lineage log).",
    "drift": "Judge the request logs written since the last check against the stable model's training data.",
}
STEP_COMMANDS = {step.name.replace("_", "-"): (step.name,) for step in runner.STEPS} | {"promote": PROMOTE_STEPS}


def _add_config_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("config options (override the YAML file)")
    defaults = config_module.PipelineConfig()
    for name in config_module.field_names():
        group.add_argument(
            "--" + name.replace("_", "-"),
            dest=f"cfg_{name}",
            metavar="VALUE",
            default=None,
            help=(config_module.field_help(name) + f" [default: {getattr(defaults, name)}]").replace("%", "%%"),
        )


def build_parser() -> argparse.ArgumentParser:
    """Returns the argument parser with one subcommand per step and the run-level commands."""
    parser = argparse.ArgumentParser(prog="python -m pipeline", description=__doc__.splitlines()[0], allow_abbrev=False)
    subcommands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command, help_text in COMMAND_HELP.items():
        sub = subcommands.add_parser(command, help=help_text, description=help_text, allow_abbrev=False)
        sub.add_argument("--config", help="YAML file of config options.")
        sub.add_argument(
            "--preset",
            default="default",
            choices=preset_names(),
            help="Named starting config under --config and the flags (pipeline/presets/; default: the defaults).",
        )
        sub.add_argument("--log-level", default="INFO", help="Python log level (default INFO).")
        if command == "history":
            sub.add_argument("--at", help="ISO 8601 time, e.g. 2026-11-24T02:00:00Z (default: now; no zone: UTC).")
        if command == "rollback":
            sub.add_argument("--version", type=int, required=True, help="Published version to label stable.")
            sub.add_argument("--reason", default="", help="Why (kept in the lineage log).")
        if command in STEP_COMMANDS:
            for option, (step, output) in runner.INPUT_OPTIONS.items():
                sub.add_argument(
                    "--" + option.replace("_", "-"),
                    dest=f"input_{option}",
                    help=f"Path of the {output} made by step '{step}' (default: from the run manifest).",
                )
        _add_config_flags(sub)
    return parser


def config_from_args(args: argparse.Namespace) -> config_module.PipelineConfig:
    """Builds the validated config from `--config` and the config flags."""
    overrides: dict[str, Any] = {}
    for name in config_module.field_names():
        text = getattr(args, f"cfg_{name}")
        if text is not None:
            overrides[name] = config_module.parse_value(name, text)
    return config_module.load_config(args.config, overrides, preset=args.preset)


def _setup_logging(level: str) -> None:
    logging.basicConfig(
        level=level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
        stream=sys.stderr,
    )
    for noisy in ("absl", "tensorflow", "h5py", "matplotlib"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def _run_steps(command: str, args: argparse.Namespace, config, by: str) -> dict[str, Any]:
    """Runs the steps of a step command on the run's state; returns the last step's outputs."""
    explicit = {option: getattr(args, f"input_{option}") for option in runner.INPUT_OPTIONS}
    state = runner.state_from_manifest(config, explicit)
    outputs: dict[str, Any] = {}
    for name in STEP_COMMANDS[command]:
        try:
            outcome = runner.run_step(name, config, state, by)
        except PipelineError as err:
            raise PipelineError(f"{name.replace('_', '-')}: {err}") from err
        state, outputs = outcome.state, outcome.outputs
        if outcome.stop_reason:
            outputs = {**outputs, "stop_reason": outcome.stop_reason}
            break
    return outputs


def run_command(args: argparse.Namespace) -> int:
    """Executes a parsed command; returns the process exit code."""
    config = config_from_args(args)
    if args.command == "config":
        print(yaml.safe_dump(config.to_dict(), sort_keys=False), end="")
        return 0
    if args.command == "lineage":
        for entry in lineage.read(config):
            print(json.dumps(entry, sort_keys=True))
        return 0
    if args.command == "history":
        when = lineage.parse_time(args.at) if args.at else dt.datetime.now(dt.UTC)
        labels = lineage.labels_at(lineage.read(config), when)
        print(json.dumps({"model_name": config.model_name, "at": when.isoformat(), "labels": labels}, indent=2))
        return 0
    if args.command == "drift":
        from pipeline.release.drift import check_drift

        with contextlib.redirect_stdout(sys.stderr):
            result = check_drift(config)
        print(json.dumps(result.to_dict(), indent=2))
        return 0
    config = runner.with_run_id(config)
    by = f"cli by {getpass.getuser()}"
    if args.command == "rollback":
        print(json.dumps(runner.rollback(config, args.version, by, args.reason), indent=2))
        return 0
    # Progress (TFDS, Keras) goes to stderr so stdout carries only the result.
    if args.command == "run":
        reports: list[runner.StageReport] = []
        try:
            with contextlib.redirect_stdout(sys.stderr):
                runner.run_pipeline(config, by, reports)
        finally:
            print(runner.format_summary(reports, config.run_id))
        return 0
    with contextlib.redirect_stdout(sys.stderr):
        outputs = _run_steps(args.command, args, config, by)
    print(json.dumps({"run_id": config.run_id, **outputs}, indent=2, default=str))
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of `python -m pipeline`."""
    args = build_parser().parse_args(argv)
    _setup_logging(args.log_level)
    try:
        return run_command(args)
    except PipelineError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except ServingUnavailableError as err:
        print(f"error: serving is unavailable, try again later: {err}", file=sys.stderr)
        return 3
