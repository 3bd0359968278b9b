"""Promotion: which published versions serve, under the `canary` and `stable` labels.

The serving server's ModelServerConfig file (`config.serving_config_file`) is the record
of what is served: the model with a `specific` version policy listing the stable and
canary versions, and the two labels. Every change rewrites that file atomically and, when
a serving endpoint is configured, pushes it with HandleReloadConfigRequest (which TF
Serving and the local server both implement) and waits until the versions are available.
Labels may point only at loaded versions, so a new version is loaded before a label moves.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

from pipeline.core import lineage, model_repo
from pipeline.core.artifacts import atomic_write_bytes, code_revision, file_lock
from pipeline.core.config import PipelineConfig, run_signature
from pipeline.core.errors import PromotionError, ServingUnavailableError
from pipeline.core.user_code import model_code_digest
from serving.protocol import SHADOW_LABEL, traffic_split_label, traffic_split_percent

log = logging.getLogger(__name__)

STABLE, CANARY = "stable", "canary"


@dataclasses.dataclass(frozen=True)
class ServingState:
    """The served versions: what `stable` and `canary` point at (None when unset), and live canary traffic.

    Attributes:
        stable: The `stable` version.
        canary: The `canary` version.
        traffic_percent: Share (0-100) of unaddressed requests the canary answers (the local server's
            `traffic_split_<P>` label on the canary); None: no split, unaddressed requests get the
            latest version as in TF Serving.
        shadow: The canary mirrors sampled unaddressed requests (the `shadow` label on the canary).
    """

    stable: int | None = None
    canary: int | None = None
    traffic_percent: int | None = None
    shadow: bool = False

    @property
    def versions(self) -> list[int]:
        return sorted({v for v in (self.stable, self.canary) if v is not None})


def _server_model_path(config: PipelineConfig) -> str:
    base = config.serving_model_base_path or str(Path(config.model_base_path).resolve())
    return f"{base.rstrip('/')}/{config.model_name}"


def _labels(state: ServingState) -> dict[str, int]:
    labels = {key: value for key, value in ((STABLE, state.stable), (CANARY, state.canary)) if value is not None}
    if state.canary is not None and state.stable is not None and state.canary != state.stable:
        if state.traffic_percent is not None:
            labels[traffic_split_label(state.traffic_percent)] = state.canary
        if state.shadow:
            labels[SHADOW_LABEL] = state.canary
    return labels


def render_config(
    config: PipelineConfig, versions: list[int], labels: dict[str, int], served_name: str | None = None
) -> str:
    """Returns ModelServerConfig text serving `versions` with `labels` (an empty list when none).

    Args:
        config: Gives the model name and where the serving server finds its versions.
        versions: Versions to load (a `specific` policy).
        labels: Version labels.
        served_name: Serve under another name (infra-validation), same base path.
    """
    if not versions:
        return "model_config_list {\n}\n"
    listed = "".join(f"        versions: {v}\n" for v in sorted(versions))
    label_text = "".join(
        f'    version_labels {{\n      key: "{key}"\n      value: {value}\n    }}\n' for key, value in labels.items()
    )
    logging_text = ""
    if config.request_log_sampling_rate > 0 and served_name is None:  # not for an infra-validation sandbox
        prefix = Path(config.request_log_dir).resolve() / config.model_name
        logging_text = (
            "    logging_config {\n"
            f'      log_collector_config {{\n        filename_prefix: "{prefix}"\n      }}\n'
            f"      sampling_config {{\n        sampling_rate: {config.request_log_sampling_rate}\n      }}\n"
            "    }\n"
        )
    return (
        "# Written by the pipeline's promotion step; labels move only through it.\n"
        "model_config_list {\n  config {\n"
        f'    name: "{served_name or config.model_name}"\n'
        f'    base_path: "{_server_model_path(config)}"\n'
        '    model_platform: "tensorflow"\n'
        f"    model_version_policy {{\n      specific {{\n{listed}      }}\n    }}\n"
        f"{label_text}{logging_text}  }}\n}}\n"
    )


def _with_other_models(config: PipelineConfig, text: str) -> str:
    """Adds the serving config file's other models to `text`, so a shared config keeps them."""
    from google.protobuf import text_format
    from tensorflow_serving.config import model_server_config_pb2

    path = Path(config.serving_config_file)
    if not path.exists():
        return text
    current = text_format.Parse(path.read_text(), model_server_config_pb2.ModelServerConfig())
    others = [m for m in current.model_config_list.config if m.name != config.model_name]
    if not others:
        return text
    merged = text_format.Parse(text, model_server_config_pb2.ModelServerConfig())
    for model in others:
        merged.model_config_list.config.add().CopyFrom(model)
    return "# Written by the pipeline's promotion step.\n" + text_format.MessageToString(merged)


def read_state(config: PipelineConfig) -> ServingState:
    """Reads the labels of `config.model_name` from the serving config file."""
    from google.protobuf import text_format
    from tensorflow_serving.config import model_server_config_pb2

    path = Path(config.serving_config_file)
    if not path.exists():
        return ServingState()
    parsed = text_format.Parse(path.read_text(), model_server_config_pb2.ModelServerConfig())
    for model in parsed.model_config_list.config:
        if model.name == config.model_name:
            labels = dict(model.version_labels)
            percents = [p for p in map(traffic_split_percent, labels) if p is not None]
            return ServingState(
                labels.get(STABLE), labels.get(CANARY), percents[0] if percents else None, SHADOW_LABEL in labels
            )
    return ServingState()


def serving_client(config: PipelineConfig, target: str | None = None, rest_url: str | None = None):
    """A client of the configured serving endpoint (or of `target` / `rest_url`)."""
    from serving.client import TFServingClient

    return TFServingClient(
        target or config.serving_grpc_target,
        rest_url or config.serving_rest_url or "",
        timeout=30,
        retries=3,
        management_target=None if target else config.serving_management_target,
    )


def wait_available(client, model_name: str, versions: list[int], timeout_s: float) -> None:
    """Waits until every version in `versions` is AVAILABLE.

    Raises:
        PromotionError: if one of them failed to load, or on timeout (with the last status seen).
    """
    from serving.polling import poll_until
    from serving.protocol import ServingError

    last: list[Any] = [None]

    def all_available() -> bool:
        try:
            states = {entry["version"]: entry for entry in client.status(model_name)}
        except ServingError as err:
            last[0] = err
            return False
        last[0] = states
        failed = [states[v] for v in versions if states.get(v, {}).get("state") == "END" and states[v]["error_message"]]
        if failed:
            raise PromotionError(f"version {failed[0]['version']} failed to load: {failed[0]['error_message']}")
        return all(states.get(v, {}).get("state") == "AVAILABLE" for v in versions)

    try:
        poll_until(all_available, timeout_s, interval_s=0.5)
    except TimeoutError:
        raise PromotionError(
            f"versions {versions} of {model_name} not available after {timeout_s:g}s (last: {last[0]})"
        ) from None


def apply_state(config: PipelineConfig, state: ServingState) -> None:
    """Writes the serving config for `state` and, with an endpoint configured, reloads and waits.

    New versions are first loaded under the old labels, then the labels move, because a
    label may only point at a loaded version. Other models in the config file are kept, and
    promotions of several models sharing the file take turns (a lock beside it).

    Raises:
        PromotionError: if a version is not published or serving refuses the change.
        ServingUnavailableError: when the endpoint is down (retry later).
    """
    missing = [v for v in state.versions if v not in model_repo.published_versions(config.model_dir)]
    if missing:
        raise PromotionError(f"version(s) {missing} of {config.model_name} are not published in {config.model_dir}")
    # One model's promotion at a time per serving config: each reads the file, changes its own model's
    # entry and pushes the whole file, so two at once would each push a file without the other's change.
    config_file = Path(config.serving_config_file)
    config_file.parent.mkdir(parents=True, exist_ok=True)
    with file_lock(config_file.with_name(config_file.name + ".lock")):
        _apply_state(config, state)


def _apply_state(config: PipelineConfig, state: ServingState) -> None:
    previous = read_state(config)
    config_file = Path(config.serving_config_file)
    previous_text = config_file.read_bytes() if config_file.exists() else None
    steps = []
    if config.serving_grpc_target and set(state.versions) - set(previous.versions):
        both = sorted(set(previous.versions) | set(state.versions))
        steps.append((_with_other_models(config, render_config(config, both, _labels(previous))), both))
    steps.append((_with_other_models(config, render_config(config, state.versions, _labels(state))), state.versions))
    # The file first, then the server: a server restarted at any moment comes back with a
    # state at least as new as the one it was serving. If serving refuses, the file goes back.
    try:
        for text, versions in steps:
            atomic_write_bytes(config_file, text.encode())
            if config.serving_grpc_target:
                _push(config, text, versions)
    except BaseException as err:
        if previous_text is not None:
            atomic_write_bytes(config_file, previous_text)
        else:
            config_file.unlink(missing_ok=True)
        if isinstance(err, PromotionError | ServingUnavailableError) and previous_text is not None:
            # A server refused a step or is down: put every server that answers back on the old config.
            # A server that already moved its labels needs the same two steps backwards (load the old
            # versions under the new labels, then move the labels back).
            union = sorted(set(previous.versions) | set(state.versions))
            bridge = _with_other_models(config, render_config(config, union, _labels(state)))
            _push_everywhere_possible(config, [(bridge, union), (previous_text.decode(), previous.versions)])
        raise


def _push_everywhere_possible(config: PipelineConfig, undo: list[tuple[str, list[int]]]) -> None:
    """Best effort: puts each serving server that answers on the last config of `undo`.

    The last config is pushed alone first (enough for a server that never moved its labels);
    where the server refuses it, every step of `undo` is pushed in order.
    """
    for target in serving_targets(config):
        try:
            try:
                _push_one(config, target, *undo[-1])
            except PromotionError:
                for text, versions in undo:
                    _push_one(config, target, text, versions)
        except (PromotionError, ServingUnavailableError) as err:
            log.warning("could not put %s back on the previous serving config: %s", target, err)


def serving_targets(config: PipelineConfig) -> list[str]:
    """The serving servers promotion keeps in step: `serving_grpc_target`, then `serving_replicas`."""
    replicas = [target.strip() for target in config.serving_replicas or [] if target.strip()]
    return [config.serving_grpc_target, *replicas] if config.serving_grpc_target else []


def _push(config: PipelineConfig, text: str, versions: list[int]) -> None:
    """Applies `text` to every serving server in turn and waits until `versions` are available on each.

    Raises:
        ServingUnavailableError: a server is down (the caller undoes the change on the others).
        PromotionError: a server refused the config or a version failed to load there.
    """
    for target in serving_targets(config):
        _push_one(config, target, text, versions)


def _push_one(config: PipelineConfig, target: str, text: str, versions: list[int]) -> None:
    """Applies `text` to one serving server (the primary through its management target, if set)."""
    from serving.protocol import ServingError

    with serving_client(config) if target == config.serving_grpc_target else serving_client(config, target) as client:
        try:
            client.reload_config(text)
        except ServingError as err:
            if err.code.name == "UNAVAILABLE":
                raise ServingUnavailableError(f"serving endpoint {target}: {err.message}") from err
            raise PromotionError(f"serving at {target} refused the config: {err.code.name}: {err.message}") from err
        wait_available(client, config.model_name, versions, config.infra_validation_timeout_s)


def stable_model_card(config: PipelineConfig) -> dict[str, Any] | None:
    """Returns the model card of the version labelled stable, if any."""
    stable = read_state(config).stable
    if stable is None:
        return None
    return model_repo.read_model_card(config.model_dir / str(stable))


def unchanged_reason(config: PipelineConfig, fingerprint: str) -> str | None:
    """Says why training can be skipped: data, training config and code equal the stable model's.

    Returns:
        The reason, or None if anything differs, nothing is stable, or `config.force` is set.
    """
    if config.force:
        return None
    card = stable_model_card(config)
    if card is None:
        return None
    same_data = card["data"]["fingerprint"] == fingerprint
    same_config = run_signature(card["config"]) == run_signature(config)
    revision = code_revision()
    same_code = card.get("code_revision") == revision and revision != "unknown"
    same_model_code = card.get("model_code") == model_code_digest(config.model)  # the user's model module
    if same_data and same_config and same_code and same_model_code:
        return (
            f"data fingerprint {fingerprint[:12]}, training config and code revision {revision[:12]} equal those "
            f"of stable version {card['version']}: nothing to do (set force to retrain)"
        )
    return None


def watches_canary(config: PipelineConfig) -> bool:
    """True when the deployment watches each canary on live traffic before `stable` moves."""
    return config.canary_watch_seconds > 0 and (config.canary_traffic_percent > 0 or config.canary_shadow)


def promote_canary(config: PipelineConfig, version: int, by: str) -> dict[str, Any]:
    """Serves `version` under `canary`, `stable` unchanged; records the move in the lineage log.

    When canaries are watched on live traffic, unaddressed requests stay on `stable` (a 0% split)
    until the watch opens the canary's share.
    """
    before = read_state(config)
    after = ServingState(before.stable, version, 0 if watches_canary(config) else None)
    apply_state(config, after)
    lineage.record(
        config, "label_moved", label=CANARY, version=version, previous=before.canary, labels=_labels(after), by=by
    )
    return {"stable": after.stable, "canary": after.canary}


def mark_stable(config: PipelineConfig, version: int, by: str) -> dict[str, Any]:
    """Moves `stable` (and `canary`) to `version`; records the move."""
    before = read_state(config)
    after = ServingState(version, version)
    apply_state(config, after)
    lineage.record(
        config, "label_moved", label=STABLE, version=version, previous=before.stable, labels=_labels(after), by=by
    )
    return {"stable": version, "canary": version, "previous_stable": before.stable}


def open_canary_traffic(config: PipelineConfig, by: str) -> ServingState:
    """Gives `canary` its share of live traffic (and the shadow copy) as configured; records the change."""
    before = read_state(config)
    after = ServingState(before.stable, before.canary, config.canary_traffic_percent, config.canary_shadow)
    apply_state(config, after)
    lineage.record(
        config,
        "canary_traffic",
        version=after.canary,
        traffic_percent=after.traffic_percent,
        shadow=after.shadow,
        labels=_labels(after),
        by=by,
    )
    return after


def withdraw_canary(config: PipelineConfig, event: str, reasons: list[str], by: str, **details: Any) -> dict:
    """Puts `canary` back on `stable` and ends its live traffic; records why (`event`: the lineage kind).

    Returns:
        The labels after the change.
    """
    before = read_state(config)
    after = ServingState(before.stable, before.stable)
    apply_state(config, after)
    lineage.record(
        config,
        event,
        label=CANARY,
        version=before.stable,
        previous=before.canary,
        labels=_labels(after),
        reasons=reasons,
        by=by,
        **details,
    )
    return _labels(after)


def restore(config: PipelineConfig, state: ServingState) -> None:
    """Puts the labels back to `state` after a failed promotion (best effort, logged)."""
    restored = ServingState(state.stable, state.stable)
    try:
        apply_state(config, restored)
        lineage.record(config, "labels_restored", labels=_labels(restored), by="automatic: promotion failed")
    except Exception as err:  # noqa: BLE001  (the original failure is what the caller reports)
        log.error("could not restore serving state %s: %s", state, err)


def rollback(config: PipelineConfig, version: int, by: str, reason: str = "") -> dict[str, Any]:
    """Moves `stable` back to an earlier published version and records the decision.

    Raises:
        PromotionError: if the version is not published.
    """
    before = read_state(config)
    published = model_repo.published_versions(config.model_dir)
    if version not in published:
        raise PromotionError(f"cannot roll back to version {version}: published versions are {published}")
    apply_state(config, ServingState(version, version))
    lineage.record(
        config,
        "rollback",
        label=STABLE,
        version=version,
        previous=before.stable,
        labels=_labels(ServingState(version, version)),
        by=by,
        reason=reason,
    )
    return {"stable": version, "previous_stable": before.stable}
