"""Live canary traffic on the local server: the `traffic_split_<P>` and `shadow` labels, per-version metrics.

TF Serving accepts the same config (the labels are plain labels to it) but splits nothing; the
README says how a load balancer does the split in front of it.
"""

from __future__ import annotations

import grpc
import numpy as np
import pytest
import tensorflow as tf

from serving import sample_models
from serving.client import TFServingClient
from serving.protocol import ServingError
from serving.server import metrics
from tests.serving.test_request_log import read_logs
from tests.support import start_test_server, wait_for

X = np.array([[1.0, 2.0, 3.0]], np.float32)


def _config(root, labels: dict[str, int], rate: float = 1.0) -> str:
    label_text = " ".join(f"version_labels {{ key: '{key}' value: {value} }}" for key, value in labels.items())
    return f"""model_config_list {{ config {{
  name: 'scaler' base_path: '{root}/scaler' model_platform: 'tensorflow'
  model_version_policy {{ specific {{ versions: 1 versions: 2 }} }}
  {label_text}
  logging_config {{
    log_collector_config {{ filename_prefix: '{root}/logs/scaler' }}
    sampling_config {{ sampling_rate: {rate} }}
  }}
}} }}
"""


@pytest.fixture(scope="module")
def split_server(tmp_path_factory):
    root = tmp_path_factory.mktemp("traffic-split")
    sample_models.save_scaler(root / "scaler", 1, 2.0)  # stable answers 2x
    sample_models.save_scaler(root / "scaler", 2, 3.0)  # canary answers 3x
    config = root / "split.config"
    config.write_text(_config(root, {}, rate=0.0))
    (root / "monitoring.config").write_text("prometheus_config { enable: true }\n")
    local = start_test_server(
        root,
        root / "server.log",
        f"--model_config_file={config}",
        f"--monitoring_config_file={root / 'monitoring.config'}",
        f"--request_log_roots={root / 'logs'}",
        "--request_log_rotate_seconds=1",
    )
    client = TFServingClient(local.grpc_target, local.rest_url)
    wait_for(lambda: {e["state"] for e in client.status("scaler")} == {"AVAILABLE"}, 60, "both versions loaded")
    yield {"local": local, "root": root, "client": client}
    client.close()
    local.stop()


def _answering_versions(client, calls: int) -> list[int]:
    return [client.predict("scaler", {"x": X}).version for _ in range(calls)]


def test_unaddressed_requests_follow_the_split_and_addressed_ones_do_not(split_server):
    client, root = split_server["client"], split_server["root"]
    assert set(_answering_versions(client, 10)) == {2}  # no split: the latest version, as TF Serving answers
    client.reload_config(_config(root, {"stable": 1, "canary": 2, "traffic_split_0": 2}, rate=0.0))
    assert set(_answering_versions(client, 20)) == {1}  # canary loaded, but no live traffic yet
    client.reload_config(_config(root, {"stable": 1, "canary": 2, "traffic_split_25": 2}, rate=0.0))
    versions = _answering_versions(client, 400)
    canary_share = versions.count(2) / len(versions)
    assert 0.15 < canary_share < 0.35, canary_share  # 25% expected; 400 draws: sd 2.2 points
    assert {client.predict("scaler", {"x": X}, label="stable").version for _ in range(20)} == {1}
    assert {client.predict("scaler", {"x": X}, version=2).version for _ in range(5)} == {2}
    client.reload_config(_config(root, {"stable": 1, "canary": 2, "traffic_split_100": 2}, rate=0.0))
    assert set(_answering_versions(client, 20)) == {2}
    rest = client.predict("scaler", {"x": X}, protocol="rest")  # REST follows the split as well
    np.testing.assert_allclose(rest["y"], X * 3)


def test_malformed_split_labels_are_refused_and_change_nothing(split_server):
    client, root = split_server["client"], split_server["root"]
    client.reload_config(_config(root, {"stable": 1, "traffic_split_0": 2}, rate=0.0))
    for labels, message in (
        ({"stable": 1, "traffic_split_150": 2}, "traffic_split_<0..100>"),
        ({"canary": 2, "traffic_split_10": 2}, "needs a 'stable' label"),
        ({"stable": 1, "traffic_split_10": 2, "traffic_split_20": 2}, "more than one traffic split"),
    ):
        with pytest.raises(ServingError) as refused:
            client.reload_config(_config(root, labels, rate=0.0))
        assert refused.value.code == grpc.StatusCode.INVALID_ARGUMENT and message in refused.value.message
    assert set(_answering_versions(client, 10)) == {1}  # the last good config still serves


def test_shadow_answers_are_logged_never_returned_and_counted_per_version(split_server):
    client, root = split_server["client"], split_server["root"]
    client.reload_config(_config(root, {"stable": 1, "shadow": 2, "traffic_split_0": 2}, rate=1.0))
    for _ in range(15):
        answer = client.predict("scaler", {"x": X})
        assert answer.version == 1
        np.testing.assert_allclose(answer["y"], X * 2)
    client.predict("scaler", {"x": X}, label="stable")  # addressed: logged, not mirrored

    def logged():
        records = read_logs(root / "logs")
        shadows = [r for r in records if r.predict_log.request.model_spec.version_label == "shadow"]
        return len(shadows) == 15 and records

    records = wait_for(logged, 30, "15 shadow answers in the published request logs")
    shadows = [r for r in records if r.predict_log.request.model_spec.version_label == "shadow"]
    assert {r.log_metadata.model_spec.version.value for r in shadows} == {2}
    np.testing.assert_allclose(
        np.concatenate([tf.make_ndarray(r.predict_log.response.outputs["y"]) for r in shadows]),
        np.repeat(X * 3, 15, axis=0),
    )
    primary = [r for r in records if r.log_metadata.model_spec.version.value == 1]
    assert len(primary) == 16
    scraped = client.metrics_text()
    for version in (1, 2):
        assert f'{metrics.VERSION_REQUEST_COUNT}{{model_name="scaler",status="OK",version="{version}"}}' in scraped
    client.reload_config(_config(root, {"stable": 1}, rate=0.0))
