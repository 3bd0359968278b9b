"""What a run decided, in one line and as a page: the run outcome, the run report, the model registry.

`run_outcome` reads a run's state (its manifest) and says what the run did: promoted a
version, not blessed by the gate (with the failing rules), or skipped (with the reason).
`write_run_report` writes `runs/<run_id>/report.html`, one self-contained page (images
inline) with the metrics, per-class table, the comparison with the served baseline, the
confusion matrix, the training curves and the model card. `render_registry` lists the
published versions with their labels and metrics. Orchestrators show these pages; the
pipeline only writes and renders them.
"""

from __future__ import annotations

import base64
import dataclasses
import html
import json
from pathlib import Path
from typing import Any

from pipeline.core import model_repo
from pipeline.core.artifacts import atomic_write_bytes, read_json, run_dir
from pipeline.core.config import PipelineConfig

PROMOTED, NOT_BLESSED, SKIPPED, INCOMPLETE = "promoted", "not_blessed", "skipped", "incomplete"
CANARY_ROLLED_BACK, REJECTED = "canary_rolled_back", "rejected"
REPORT_FILE = "report.html"


@dataclasses.dataclass(frozen=True)
class RunOutcome:
    """What a run did.

    Attributes:
        outcome: One of 'promoted', 'not_blessed', 'canary_rolled_back', 'rejected', 'skipped', 'incomplete'.
        summary: One line for people (the DAG run's note), e.g. 'promoted version 3 ...'.
        version: The version the run published, if any.
        metric: The gate metric the candidate was judged on (e.g. 'accuracy', 'rmse'), if it was evaluated.
        score: The candidate's value of it.
    """

    outcome: str
    summary: str
    version: int | None = None
    metric: str | None = None
    score: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def run_outcome(state: dict[str, dict[str, Any]]) -> RunOutcome:
    """Says what a run did from its state (step name -> outputs, as in the run manifest)."""
    evaluated = state.get("evaluate", {})
    metric, score = evaluated.get("metric"), evaluated.get("score")
    figures = {"metric": metric, "score": score}
    if "mark_stable" in state:
        stable = state["mark_stable"]
        was = stable.get("previous_stable")
        return RunOutcome(
            PROMOTED,
            f"promoted version {stable['stable']} to stable (test {metric} {score:.4f}; "
            f"was {'version ' + str(was) if was else 'nothing'})",
            stable["stable"],
            **figures,
        )
    version = state.get("export", {}).get("version")
    if state.get("watch_canary", {}).get("rolled_back"):
        from pipeline.release.canary import failed_checks

        failed = [reason.removeprefix("FAIL: ") for reason in failed_checks(state["watch_canary"]["reasons"])]
        return RunOutcome(
            CANARY_ROLLED_BACK, f"canary version {version} rolled back: " + "; ".join(failed), version, **figures
        )
    if state.get("approve", {}).get("approved") is False:
        decision = state["approve"]
        return RunOutcome(
            REJECTED, f"version {version} not approved ({decision['by']}): canary withdrawn", version, **figures
        )
    if state.get("gate") and not state["gate"]["blessed"]:
        return RunOutcome(NOT_BLESSED, "not blessed: " + "; ".join(state["gate"]["reasons"]), None, **figures)
    if state.get("check_changes", {}).get("skip_reason"):
        return RunOutcome(SKIPPED, "skipped: " + state["check_changes"]["skip_reason"])
    if state.get("train", {}).get("is_chief") is False:
        return RunOutcome(SKIPPED, "skipped: a multi-worker training worker; the chief evaluates and exports")
    done = [step for step in state if step != "report"]
    return RunOutcome(
        INCOMPLETE, f"incomplete: the run stopped after {done[-1] if done else 'nothing'}", None, **figures
    )


def _image(path: str | None) -> str:
    if not path or not Path(path).exists():
        return "<p class=muted>not produced</p>"
    data = base64.b64encode(Path(path).read_bytes()).decode()
    return f'<img alt="{html.escape(Path(path).stem)}" src="data:image/png;base64,{data}">'


def _table(header: list[str], rows: list[list[Any]]) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


_STYLE = """
body{font-family:system-ui,sans-serif;margin:1.5rem;color:#1a202c;max-width:1100px}
h1{font-size:1.4rem}h2{font-size:1.1rem;margin-top:1.6rem}
.outcome{padding:.6rem 1rem;border-radius:6px;font-weight:600}
.promoted{background:#c6f6d5}.not_blessed,.canary_rolled_back,.rejected{background:#fed7d7}.skipped,.incomplete{background:#e2e8f0}
table{border-collapse:collapse}td,th{border:1px solid #cbd5e0;padding:.25rem .6rem;text-align:right}
th{background:#edf2f7}td:first-child{text-align:left}img{max-width:100%;border:1px solid #e2e8f0}
.muted{color:#718096}pre{background:#f7fafc;padding:.8rem;overflow:auto;font-size:.8rem}
.row{display:flex;gap:1rem;flex-wrap:wrap}.row>div{flex:1;min-width:380px}
"""


def _page(title: str, body: str) -> str:
    return (
        f"<!doctype html><html><head><meta charset=utf-8><title>{html.escape(title)}</title>"
        f"<style>{_STYLE}</style></head><body>{body}</body></html>"
    )


def _number(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, (int, float)) and not isinstance(value, bool) else "-"


def _evaluation_section(evaluation: dict[str, Any]) -> str:
    metrics = evaluation["metrics"]
    baseline = evaluation.get("baseline") or {}
    served = baseline.get("metrics") or {}
    rows = [[f"test {name}", _number(value), _number(served.get(name))] for name, value in metrics["headline"].items()]
    rows.append(["examples", metrics["examples"], metrics["examples"] if served else "-"])
    baseline_name = f"baseline: version {baseline['version']}" if baseline.get("version") else "baseline: none"
    rules = [[r["rule"], "pass" if r["passed"] else "FAIL", r["reason"]] for r in evaluation.get("rules", [])]
    section = (
        f"<h2>Metrics ({html.escape(evaluation.get('task', ''))}, test split) against the baseline</h2>"
        + _table(["metric", "candidate", baseline_name], rows)
        + f"<h2>Gate on {html.escape(evaluation.get('gate_metric', ''))}: "
        + f"{'blessed' if evaluation['blessed'] else 'NOT blessed'}</h2>"
        + _table(["rule", "result", "why"], rules)
        + "<p class=muted>"
        + html.escape("; ".join(r for r in evaluation.get("reasons", []) if r not in {x[2] for x in rules}))
        + "</p>"
    )
    if evaluation.get("slices"):
        rows = [
            [
                item["name"],
                item["rows"],
                _number(item["score"]),
                _number(item["baseline_score"]),
                "gated" if item["gated"] else item["note"],
            ]
            for item in evaluation["slices"]
        ]
        metric = evaluation.get("gate_metric", "")
        section += f"<h2>Slices (worst {html.escape(metric)} first)</h2>" + _table(
            ["slice", "rows", metric, "baseline", "gate"], rows
        )
    if "per_class" in metrics:
        baseline_recall = baseline.get("class_recall") or {}
        per_class = [
            [
                name,
                _number(m["precision"]),
                _number(m["recall"]),
                _number(baseline_recall.get(name)),
                _number(m["f1"]),
                m["support"],
            ]
            for name, m in metrics["per_class"].items()
        ]
        section += "<h2>Per class</h2>" + _table(
            ["class", "precision", "recall", "baseline recall", "F1", "support"], per_class
        )
    return section


def _training_section(train: dict[str, Any]) -> str:
    hardware = train.get("hardware", {})
    rows = [
        ["model", train.get("model_builder", "-")],
        ["epochs run", train.get("epochs_run")],
        [f"best {train.get('monitor', 'validation score')}", _number(train.get("best_val_score"))],
        ["train stage seconds", train.get("seconds")],
        ["strategy / dtype policy", f"{hardware.get('strategy')} / {hardware.get('dtype_policy')}"],
        ["TensorBoard logs", train.get("tensorboard_dir") or "-"],
    ]
    return "<h2>Training</h2>" + _table(["", ""], rows)


def render_run_report(config: PipelineConfig, state: dict[str, dict[str, Any]]) -> str:
    """Returns the run report page (HTML, images inline) for a run's state."""
    outcome = run_outcome(state)
    parts = [
        f"<h1>{html.escape(config.model_name)}: run {html.escape(str(config.run_id))}</h1>",
        f'<p class="outcome {outcome.outcome}">{html.escape(outcome.summary)}</p>',
    ]
    evaluate, train = state.get("evaluate"), state.get("train")
    if evaluate and Path(evaluate["evaluation_path"]).exists():
        parts.append(_evaluation_section(read_json(evaluate["evaluation_path"])))
    if train and train.get("model_path"):
        parts.append(_training_section(train))
    parts.append(_release_section(state))
    images = []
    if evaluate:
        title = "Confusion matrix" if evaluate.get("confusion_matrix_path") else "Predictions against the truth"
        images.append(f"<div><h2>{title}</h2>" + _image(evaluate.get("plot_path")) + "</div>")
    if train and train.get("model_path"):
        images.append("<div><h2>Training curves</h2>" + _image(train.get("curves_path")) + "</div>")
    parts.append('<div class="row">' + "".join(images) + "</div>")
    if "export" in state:
        card = model_repo.read_model_card(state["export"]["version_dir"])
        parts.append("<h2>Model card</h2><pre>" + html.escape(json.dumps(card, indent=2), quote=False) + "</pre>")
    if "ingest" in state:
        ingest = state["ingest"]
        dropped = sum((ingest.get("dropped_rows") or {}).values())
        parts.append(
            f"<h2>Data</h2><p>snapshot {html.escape(Path(ingest['snapshot']).name)}, fingerprint "
            f"{html.escape(ingest['fingerprint'][:16])}, splits {html.escape(json.dumps(ingest['splits']))}"
            + (f", {dropped} rows without a label left out" if dropped else "")
            + "</p>"
            + (
                f"<p>{html.escape(str(ingest.get('task')))} of {html.escape(repr(ingest.get('label')))} from "
                + html.escape(", ".join(f"{k} ({v})" for k, v in (ingest.get("features") or {}).items()))
                + "</p>"
                if ingest.get("task")
                else ""
            )
        )
    return _page(f"{config.model_name} run {config.run_id}", "".join(parts))


def _release_section(state: dict[str, dict[str, Any]]) -> str:
    """The canary watch's checks and the approval, when the run got that far."""
    watch, approval = state.get("watch_canary"), state.get("approve")
    if not watch and not approval:
        return ""
    parts = ["<h2>Canary on live traffic</h2>"]
    if watch and watch.get("skipped"):
        parts.append(f"<p class=muted>{html.escape(watch['skipped'])}</p>")
    elif watch:
        verdict = "passed" if watch["passed"] else "ROLLED BACK"
        rows = [[reason.split(": ", 1)[0], reason.split(": ", 1)[-1]] for reason in watch["reasons"]]
        figures = ", ".join(f"{key} {value}" for key, value in watch["figures"].items() if value is not None)
        parts.append(f"<p>{verdict}: {html.escape(figures)}</p>" + _table(["result", "check"], rows))
    if approval:
        decision = "approved" if approval["approved"] else "not approved (canary withdrawn)"
        parts.append(f"<p>Approval: {decision} by {html.escape(str(approval['by']))}</p>")
    return "".join(parts)


def report_path(config: PipelineConfig) -> Path:
    """`<workdir>/runs/<run_id>/report.html`."""
    return run_dir(config) / REPORT_FILE


def write_run_report(config: PipelineConfig, state: dict[str, dict[str, Any]]) -> Path:
    """Writes the run report page (atomically); returns its path."""
    return atomic_write_bytes(report_path(config), render_run_report(config, state).encode())


def _card_metrics(card: dict[str, Any]) -> dict[str, float]:
    return dict(card.get("metrics") or {})


def registry_metric_names(config: PipelineConfig) -> tuple[str, ...]:
    """The metric columns of the registry page: the newest version's task's headline metrics."""
    from pipeline.core.problem import HEADLINE_METRICS, MULTICLASS

    for version in reversed(model_repo.published_versions(config.model_dir)):
        card = model_repo.read_model_card(config.model_dir / str(version)) or {}
        task = (card.get("problem") or {}).get("task")
        if task:
            return HEADLINE_METRICS[task]
    return HEADLINE_METRICS[MULTICLASS][:2]


def registry_rows(config: PipelineConfig) -> list[dict[str, Any]]:
    """The published versions, newest first, with their labels and headline metrics from their model cards."""
    from pipeline.release.promotion import read_state

    serving = read_state(config)
    labels = {version: [] for version in model_repo.published_versions(config.model_dir)}
    for label, version in (("stable", serving.stable), ("canary", serving.canary)):
        if version in labels:
            labels[version].append(label)
    rows = []
    for version in sorted(labels, reverse=True):
        card = model_repo.read_model_card(config.model_dir / str(version)) or {}
        rows.append(
            {
                "version": version,
                "labels": labels[version],
                "task": (card.get("problem") or {}).get("task"),
                "metrics": _card_metrics(card),
                "gate_metric": card.get("gate_metric"),
                "created_at": card.get("created_at"),
                "run_id": card.get("config", {}).get("run_id"),
                "data_fingerprint": card.get("data", {}).get("fingerprint"),
            }
        )
    return rows


def render_registry(config: PipelineConfig, report_url: str = "") -> str:
    """Returns the registry page: every published version with its labels and its task's metrics.

    Args:
        config: Names the model and where its versions and serving config are.
        report_url: Prefix of links to run reports ('' for no links); the run id is appended.
    """
    names = registry_metric_names(config)
    rows = []
    for row in registry_rows(config):
        run = html.escape(str(row["run_id"] or "-"))
        if report_url and row["run_id"]:
            run = f'<a href="{html.escape(report_url + str(row["run_id"]))}">{run}</a>'
        cells = [
            str(row["version"]),
            html.escape(", ".join(row["labels"]) or "-"),
            *(_number(row["metrics"].get(name)) for name in names),
            html.escape(str(row["created_at"] or "-")),
            run,
            html.escape(str(row["data_fingerprint"] or "-")[:12]),
        ]
        rows.append("<tr>" + "".join(f"<td>{cell}</td>" for cell in cells) + "</tr>")
    header = ("version", "labels", *(f"test {name}" for name in names), "published", "run", "data")
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join(rows) or f'<tr><td colspan="{len(header)}">no published versions yet</td></tr>'
    return _page(
        f"{config.model_name} registry",
        f"<h1>{html.escape(config.model_name)}: published versions</h1>"
        f"<p class=muted>{html.escape(str(config.model_dir))}</p>"
        f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>",
    )


def approval_markdown(state: dict[str, dict[str, Any]]) -> str:
    """What a person approving the candidate reads: metrics against stable, per-class recall, the canary watch.

    Args:
        state: The run's state up to the approval (evaluation and, when it ran, the canary watch).

    Returns:
        Markdown for the approval form.
    """
    evaluation = read_json(state["evaluate"]["evaluation_path"])
    metrics, baseline = evaluation["metrics"], evaluation.get("baseline") or {}
    served = baseline.get("metrics") or {}
    version = state.get("export", {}).get("version")
    stable = f"stable (version {baseline['version']})" if baseline.get("version") else "stable (none)"
    lines = [
        f"**Candidate version {version}** against {stable}.",
        "",
        f"| metric | candidate | {stable} |",
        "|---|---:|---:|",
        *(
            f"| test {name} | {_number(value)} | {_number(served.get(name))} |"
            for name, value in metrics["headline"].items()
        ),
    ]
    if evaluation.get("slices"):
        metric = evaluation.get("gate_metric", "")
        lines += ["", f"| slice (worst {metric} first) | rows | candidate | {stable} |", "|---|---:|---:|---:|"]
        lines += [
            f"| {item['name']} | {item['rows']} | {_number(item['score'])} | {_number(item['baseline_score'])} |"
            for item in evaluation["slices"][:10]
        ]
    if "per_class" in metrics:
        baseline_recall = baseline.get("class_recall") or {}
        lines += ["", "| class | candidate recall | stable recall |", "|---|---:|---:|"]
        lines += [
            f"| {name} | {m['recall']:.4f} | {_number(baseline_recall.get(name))} |"
            for name, m in metrics["per_class"].items()
        ]
    lines += [
        "",
        "**Gate rules**: "
        + "; ".join(("pass" if r["passed"] else "FAIL") + f": {r['reason']}" for r in evaluation.get("rules", [])),
    ]
    watch = state.get("watch_canary") or {}
    if watch.get("skipped"):
        lines += ["", f"**Canary watch**: {watch['skipped']}."]
    elif watch:
        lines += ["", "**Canary watch on live traffic**: " + "; ".join(watch["reasons"])]
    lines += [
        "",
        "Approve moves `stable` to the candidate; Reject (or no answer in time) puts `canary` back on stable.",
    ]
    return "\n".join(lines)
