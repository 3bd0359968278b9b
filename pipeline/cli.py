"""Command line: `python -m pipeline run|ingest|validate|train|evaluate|export|config`.

Every config field is a flag (`--batch-size 64`), on top of an optional YAML file
(`--config my.yaml`). Stage commands read their inputs from the run manifest of
`--run-id`, or from explicit `--snapshot/--model-path/--evaluation` paths.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import sys
from typing import Any

import yaml

from pipeline import config as config_module
from pipeline.errors import PipelineError

log = logging.getLogger("pipeline")

STAGE_INPUTS = {
    "ingest": (),
    "validate": ("snapshot",),
    "train": ("snapshot",),
    "evaluate": ("snapshot", "model_path"),
    "export": ("snapshot", "model_path", "evaluation"),
}
COMMAND_HELP = {
    "run": "Run every stage: ingest, validate, train, evaluate and (if blessed) export.",
    "ingest": "Snapshot the data source into TFDS format (reuses an identical snapshot).",
    "validate": "Compute statistics and check the snapshot against the schema and the previous one.",
    "train": "Train a model on the snapshot.",
    "evaluate": "Evaluate the trained model on the test split and apply the gate.",
    "export": "Export a blessed model as a SavedModel and publish it as the next version.",
    "config": "Print the effective configuration as YAML.",
    "rollback": "Move the 'stable' serving label back to an earlier published version.",
    "lineage": "Print the lineage log (runs, gate decisions, versions, label moves) as JSON lines.",
}


def _add_config_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("config options (override the YAML file)")
    for name in config_module.field_names():
        group.add_argument(
            "--" + name.replace("_", "-"),
            dest=f"cfg_{name}",
            metavar="VALUE",
            default=None,
            help=(
                config_module.field_help(name)
                + f" [default: {config_module.PipelineConfig.__dataclass_fields__[name].default}]"
            ).replace("%", "%%"),
        )


def build_parser() -> argparse.ArgumentParser:
    """Returns the argument parser with one subcommand per stage."""
    parser = argparse.ArgumentParser(prog="python -m pipeline", description=__doc__.splitlines()[0])
    subcommands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command, help_text in COMMAND_HELP.items():
        sub = subcommands.add_parser(command, help=help_text, description=help_text)
        sub.add_argument("--config", help="YAML file of config options.")
        sub.add_argument("--log-level", default="INFO", help="Python log level (default INFO).")
        if command == "rollback":
            sub.add_argument("--version", type=int, required=True, help="Published version to label stable.")
            sub.add_argument("--reason", default="", help="Why (kept in the lineage log).")
        for name in STAGE_INPUTS.get(command, ()):
            flag = "--" + name.replace("_", "-")
            sub.add_argument(flag, help=f"Path of the {name} (default: from the run manifest).")
        _add_config_flags(sub)
    return parser


def config_from_args(args: argparse.Namespace) -> config_module.PipelineConfig:
    """Builds the validated config from `--config` and the config flags."""
    overrides: dict[str, Any] = {}
    for name in config_module.field_names():
        text = getattr(args, f"cfg_{name}")
        if text is not None:
            overrides[name] = config_module.parse_value(name, text)
    return config_module.load_config(args.config, overrides)


def _setup_logging(level: str) -> None:
    logging.basicConfig(
        level=level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
        stream=sys.stderr,
    )
    for noisy in ("absl", "tensorflow", "h5py", "matplotlib"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def _stage_inputs(command: str, args, config) -> dict[str, str]:
    from pipeline.runner import manifest_inputs

    known = manifest_inputs(config)
    inputs = {}
    for name in STAGE_INPUTS[command]:
        value = getattr(args, name) or known.get(name)
        if value is None:
            raise PipelineError(
                f"'{command}' needs --{name.replace('_', '-')} or a --run-id whose earlier stages produced one"
            )
        inputs[name] = value
    return inputs


def run_command(args: argparse.Namespace) -> int:
    """Executes a parsed command; returns the process exit code."""
    from pipeline import runner

    config = config_from_args(args)
    if args.command == "config":
        print(yaml.safe_dump(config.to_dict(), sort_keys=False), end="")
        return 0
    if args.command == "lineage":
        from pipeline import lineage

        for entry in lineage.read(config):
            print(json.dumps(entry, sort_keys=True))
        return 0
    config = runner.with_run_id(config)
    if args.command == "rollback":
        import getpass

        outputs = runner.rollback_step(config, args.version, f"cli by {getpass.getuser()}", args.reason)
        print(json.dumps(outputs, indent=2))
        return 0
    # Progress (TFDS, Keras) goes to stderr so stdout carries only the result.
    if args.command == "run":
        reports: list[runner.StageReport] = []
        try:
            with contextlib.redirect_stdout(sys.stderr):
                runner.run_pipeline(config, reports)
        finally:
            print(runner.format_summary(reports, config.run_id))
        return 0
    inputs = _stage_inputs(args.command, args, config)
    steps = {
        "ingest": lambda: runner.ingest_step(config),
        "validate": lambda: runner.validate_step(config, inputs["snapshot"]),
        "train": lambda: runner.train_step(config, inputs["snapshot"]),
        "evaluate": lambda: runner.evaluate_step(config, inputs["snapshot"], inputs["model_path"]),
        "export": lambda: runner.export_step(config, inputs["snapshot"], inputs["model_path"], inputs["evaluation"]),
    }
    with contextlib.redirect_stdout(sys.stderr):
        outputs = steps[args.command]()
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
