"""The canary on live traffic: open its share, watch it against `stable`, roll it back when it fails.

After the smoke test, `start_watch` gives the canary `canary_traffic_percent` % of the requests
that name no version or label (the local server's traffic split; `canary_shadow` also mirrors
the sampled ones to it) and notes the serving server's per-version counters. `judge` then
compares the canary with `stable` over the window so far:

- error rate: the canary's may exceed stable's by at most `canary_max_error_rate`;
- latency: the canary's mean may be at most `canary_max_latency_ratio` times stable's;
- agreement: on the canary's logged answers (request logs), `stable` is asked about the same
  inputs; a classifier's answer agrees when it names the same class, a regression model's when
  it is within `canary_regression_tolerance` (relative) of stable's; at least
  `canary_min_agreement` of them must agree.

A failed check with at least `canary_min_requests` canary answers ends the watch at once; at
the end of `canary_watch_seconds` the canary passes only if every check passed on enough
answers. `conclude` records the verdict and, for a failed one, puts `canary` back on `stable`
and ends its traffic (`canary_rolled_back` in the lineage log, with the reasons). The CLI runs
`watch` (a blocking loop); the Airflow DAG runs the same `start_watch` / `judge` / `conclude`
from a deferrable task whose waiting happens in the triggerer.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from pipeline.core import lineage, model_repo
from pipeline.core.config import PipelineConfig
from pipeline.release import promotion

log = logging.getLogger(__name__)

WATCHED_BY = "automatic: canary watch"
OK, FAIL, WAIT = "ok", "FAIL", "waiting"
AGREEMENT_SAMPLE = 2048  # logged canary answers re-asked of stable per judgement, at most


@dataclasses.dataclass(frozen=True)
class VersionTraffic:
    """One version's answered and failed calls and summed latency, from the server's counters."""

    requests: float = 0.0
    errors: float = 0.0
    latency_us_sum: float = 0.0
    latency_count: float = 0.0

    def minus(self, earlier: VersionTraffic) -> VersionTraffic:
        return VersionTraffic(*(now - then for now, then in zip(self.astuple(), earlier.astuple(), strict=True)))

    def astuple(self) -> tuple[float, ...]:
        return dataclasses.astuple(self)

    @property
    def error_rate(self) -> float:
        return self.errors / self.requests if self.requests else 0.0

    @property
    def mean_latency_ms(self) -> float | None:
        return self.latency_us_sum / self.latency_count / 1000 if self.latency_count else None


@dataclasses.dataclass(frozen=True)
class Verdict:
    """Where a canary watch stands.

    Attributes:
        decided: True when the watch is over (a failed check on enough answers, or the window ended).
        passed: True when the canary may become stable (only once decided).
        reasons: One line per check, with its numbers; failed ones first.
        figures: The numbers: requests, error rates, mean latencies, agreement.
    """

    decided: bool
    passed: bool
    reasons: list[str]
    figures: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @property
    def summary(self) -> str:
        return "; ".join(failed_checks(self.reasons) or self.reasons)


def failed_checks(reasons: list[str]) -> list[str]:
    """The reasons of the checks that failed (`FAIL: ...`), in order."""
    return [reason for reason in reasons if reason.startswith(f"{FAIL}: ")]


def parse_version_traffic(text: str, model_name: str) -> dict[int, VersionTraffic]:
    """Reads the per-version counters of `model_name` from a Prometheus metrics page."""
    from prometheus_client.parser import text_string_to_metric_families

    from serving.protocol import VERSION_REQUEST_COUNT, VERSION_REQUEST_LATENCY

    totals: dict[int, dict[str, float]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.labels.get("model_name") != model_name or "version" not in sample.labels:
                continue
            entry = totals.setdefault(int(sample.labels["version"]), dict.fromkeys(("req", "err", "sum", "n"), 0.0))
            if family.name == VERSION_REQUEST_COUNT:  # the parser names a counter's samples <name>_total
                entry["req"] += sample.value
                entry["err"] += sample.value if sample.labels.get("status") != "OK" else 0.0
            elif sample.name == VERSION_REQUEST_LATENCY + "_sum":
                entry["sum"] += sample.value
            elif sample.name == VERSION_REQUEST_LATENCY + "_count":
                entry["n"] += sample.value
    return {version: VersionTraffic(e["req"], e["err"], e["sum"], e["n"]) for version, e in totals.items()}


def scrape(config: PipelineConfig) -> dict[int, VersionTraffic]:
    """The serving server's per-version counters for the model, now."""
    with promotion.serving_client(config) as client:
        return parse_version_traffic(client.metrics_text(), config.model_name)


def start_watch(config: PipelineConfig, version: int, by: str) -> dict[str, Any]:
    """Opens the canary's live traffic and returns the watch plan (JSON-safe), or why there is no watch.

    Returns:
        {"skipped": reason} when the deployment does not watch canaries or nothing is stable yet;
        else {"version", "stable", "started_at", "deadline", "baseline"}.
    """
    if not promotion.watches_canary(config):
        return {"skipped": "no canary watch configured (canary_watch_seconds 0, or no traffic share and no shadow)"}
    state = promotion.read_state(config)
    if state.stable is None or state.stable == version:
        return {"skipped": f"nothing stable to compare canary version {version} with"}
    baseline = scrape(config)
    promotion.open_canary_traffic(config, by)
    started = time.time()
    log.info(
        "canary %d gets %d%% of unaddressed requests%s for %gs (stable %d)",
        version,
        config.canary_traffic_percent,
        " and a shadow copy" if config.canary_shadow else "",
        config.canary_watch_seconds,
        state.stable,
    )
    return {
        "version": version,
        "stable": state.stable,
        "started_at": started,
        "deadline": started + config.canary_watch_seconds,
        "baseline": {str(v): traffic.astuple() for v, traffic in baseline.items()},
    }


def _window(now: dict[int, VersionTraffic], plan: dict[str, Any], version: int) -> VersionTraffic:
    """One version's traffic since the watch began, from counters scraped now."""
    start = VersionTraffic(*plan["baseline"].get(str(version), (0.0, 0.0, 0.0, 0.0)))
    return now.get(version, VersionTraffic()).minus(start)


def agreement(config: PipelineConfig, plan: dict[str, Any]) -> tuple[int, int, str]:
    """Compares the canary's logged answers since the watch began with `stable`'s on the same inputs.

    Classification answers agree when they name the same class; regression answers when the
    canary's is within `canary_regression_tolerance` (relative) of stable's.

    Returns:
        (answers compared, answers that agree with stable's, what was compared: 'predicted class'
        or 'prediction'); at most AGREEMENT_SAMPLE answers, drawn uniformly from all logged since
        the start, are compared.
    """
    from pipeline.release.drift import read_request_logs, request_log_files
    from pipeline.release.smoke_test import differing_answers

    files = [path for path in request_log_files(config) if path.stat().st_mtime >= plan["started_at"]]
    logged = read_request_logs(files)
    canary = logged.where((logged.versions == plan["version"]) & (logged.timestamps >= math.floor(plan["started_at"])))
    what = "prediction" if "predictions" in canary.outputs else "predicted class"
    if not len(canary):
        return 0, 0, what
    if len(canary) > AGREEMENT_SAMPLE:  # a uniform sample keeps each judgement's cost flat as logs grow
        chosen = np.zeros(len(canary), bool)
        chosen[np.random.default_rng(0).choice(len(canary), AGREEMENT_SAMPLE, replace=False)] = True
        canary = canary.where(chosen)
    stable_answers = []
    with promotion.serving_client(config) as client:
        for start in range(0, len(canary), 256):
            batch = {name: values[start : start + 256] for name, values in canary.inputs.items()}
            answer = client.predict(config.model_name, batch, label=promotion.STABLE)
            stable_answers.append(model_repo.answers(answer.outputs))
    canary_answers = model_repo.answers(canary.outputs)
    if "probabilities" in canary.outputs and "class_ids" not in canary.outputs:  # logs of older versions
        canary_answers = canary.outputs["probabilities"].argmax(axis=1)
    disagreeing = differing_answers(
        canary_answers, np.concatenate(stable_answers), rtol=config.canary_regression_tolerance
    )
    return len(canary), len(canary) - disagreeing, what


def judge(config: PipelineConfig, plan: dict[str, Any], final: bool) -> Verdict:
    """Compares the canary with `stable` over the window so far.

    Args:
        config: The thresholds, the serving endpoint and the request log folder.
        plan: From `start_watch`.
        final: The window has ended: decide now, whatever the traffic.

    Returns:
        The verdict; `decided` is false while the canary passes (or has too few answers) before the end.
    """
    now = scrape(config)
    canary, stable = _window(now, plan, plan["version"]), _window(now, plan, plan["stable"])
    figures: dict[str, Any] = {
        "canary_requests": int(canary.requests),
        "stable_requests": int(stable.requests),
        "canary_error_rate": round(canary.error_rate, 4),
        "stable_error_rate": round(stable.error_rate, 4),
        "canary_mean_latency_ms": canary.mean_latency_ms,
        "stable_mean_latency_ms": stable.mean_latency_ms,
        "seconds": round(time.time() - plan["started_at"], 1),
    }
    # Each check is OK, FAIL, or WAIT (too little evidence yet: a failure only once the window has ended).
    checks: list[tuple[str, str]] = []
    enough = canary.requests >= config.canary_min_requests
    checks.append(
        (
            OK if enough else FAIL if final else WAIT,
            f"{int(canary.requests)} canary answers (canary_min_requests {config.canary_min_requests})",
        )
    )
    excess = canary.error_rate - stable.error_rate
    checks.append(
        (
            OK if excess <= config.canary_max_error_rate else FAIL,
            f"error rate {canary.error_rate:.2%} vs stable {stable.error_rate:.2%} "
            f"(canary_max_error_rate {config.canary_max_error_rate:.2%} above stable)",
        )
    )
    if canary.mean_latency_ms is not None and stable.mean_latency_ms is not None:
        ratio = canary.mean_latency_ms / max(stable.mean_latency_ms, 1e-3)
        figures["latency_ratio"] = round(ratio, 3)
        checks.append(
            (
                OK if ratio <= config.canary_max_latency_ratio else FAIL,
                f"mean latency {canary.mean_latency_ms:.2f} ms vs stable {stable.mean_latency_ms:.2f} ms: ratio "
                f"{ratio:.2f} (canary_max_latency_ratio {config.canary_max_latency_ratio:g})",
            )
        )
    if config.canary_min_agreement is not None and enough:
        # The request logs are published on rotation: the answers logged so far may trail the counters.
        compared, agreed, what = agreement(config, plan)
        share = agreed / compared if compared else 0.0
        figures.update(compared=compared, agreement=round(share, 4))
        measured = compared >= config.canary_min_requests
        checks.append(
            (
                (OK if share >= config.canary_min_agreement else FAIL) if measured else FAIL if final else WAIT,
                f"{what} equal to stable's on {agreed} of {compared} logged canary answers ({share:.1%}; "
                f"canary_min_agreement {config.canary_min_agreement:.0%}, on at least {config.canary_min_requests})",
            )
        )
    reasons = [f"{state}: {text}" for state, text in sorted(checks, key=lambda check: check[0] != FAIL)]
    failed = any(state == FAIL for state, _ in checks)
    if final or (enough and failed):  # a failure on too few answers may be chance: it waits for more
        return Verdict(True, not failed, reasons, figures)
    return Verdict(False, False, reasons, figures)


def conclude(config: PipelineConfig, plan: dict[str, Any], verdict: dict[str, Any], by: str) -> dict[str, Any]:
    """Records the watch's verdict; a failed canary goes back to stable with its traffic ended.

    Args:
        config: The run's config.
        plan: From `start_watch`.
        verdict: `Verdict.to_dict()` of the decided verdict, or {"error": message} when the watch
            could not judge (counted as failed).
        by: Who started the run.

    Returns:
        The step's outputs: `passed`, `rolled_back`, `reasons`, `figures`, `version`.
    """
    if "error" in verdict:  # the watch could not judge (serving unreachable): no evidence, no promotion
        verdict = {"passed": False, "reasons": [f"FAIL: could not watch the canary: {verdict['error']}"], "figures": {}}
    outputs = {
        "version": plan["version"],
        "passed": verdict["passed"],
        "rolled_back": not verdict["passed"],
        "reasons": verdict["reasons"],
        "figures": verdict["figures"],
    }
    if verdict["passed"]:
        lineage.record(
            config,
            "canary_passed",
            version=plan["version"],
            reasons=verdict["reasons"],
            figures=verdict["figures"],
            by=by,
        )
        return outputs
    failed = failed_checks(verdict["reasons"])
    log.warning("canary %d rolled back: %s", plan["version"], "; ".join(failed))
    promotion.withdraw_canary(
        config,
        "canary_rolled_back",
        failed,
        by=WATCHED_BY,
        rolled_back_version=plan["version"],
        figures=verdict["figures"],
    )
    return outputs


def watch(config: PipelineConfig, version: int, by: str, sleep: Callable[[float], None] = time.sleep) -> dict[str, Any]:
    """The whole watch in this process (the CLI's step): open traffic, judge until decided, conclude."""
    plan = start_watch(config, version, by)
    if "skipped" in plan:
        return plan
    while True:
        final = time.time() >= plan["deadline"]
        verdict = judge(config, plan, final)
        if verdict.decided:
            return conclude(config, plan, verdict.to_dict(), by)
        sleep(poll_seconds(config, plan))


def poll_seconds(config: PipelineConfig, plan: dict[str, Any]) -> float:
    """How long to wait before judging again: a twelfth of the window (2 s to 60 s), never past its end."""
    step = min(max(config.canary_watch_seconds / 12, 2.0), 60.0)
    return max(min(step, plan["deadline"] - time.time()), 0.0)
