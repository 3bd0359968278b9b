"""Serving-config bookkeeping of promotion, without a serving endpoint (the DAG tests cover one)."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.core.errors import PromotionError
from pipeline.release.promotion import ServingState, apply_state, read_state, render_config, rollback


def test_labels_round_trip_through_the_config_file(published):
    assert read_state(published) == ServingState()
    apply_state(published, ServingState(stable=1, canary=2))
    assert read_state(published) == ServingState(stable=1, canary=2)
    text = Path(published.serving_config_file).read_text()
    assert "versions: 1" in text and "versions: 2" in text and 'base_path: "' in text


def test_other_models_in_a_shared_config_are_kept(published):
    other = 'model_config_list { config { name: "other" base_path: "/models/other" model_platform: "tensorflow" } }'
    path = Path(published.serving_config_file)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(other)
    apply_state(published, ServingState(stable=2, canary=2))
    text = path.read_text()
    assert 'name: "other"' in text and 'base_path: "/models/other"' in text
    assert read_state(published) == ServingState(stable=2, canary=2)


def test_unpublished_versions_are_refused(published):
    apply_state(published, ServingState(stable=1, canary=1))
    with pytest.raises(PromotionError, match=r"version\(s\) \[7\] of fashion_mnist are not published"):
        apply_state(published, ServingState(stable=7, canary=7))
    with pytest.raises(PromotionError, match=r"cannot roll back to version 9: published versions are \[1, 2\]"):
        rollback(published, 9, by="test")
    assert read_state(published) == ServingState(stable=1, canary=1)


def test_empty_state_renders_an_empty_model_list(published):
    assert render_config(published, [], {}) == "model_config_list {\n}\n"


def test_the_file_leads_the_server_and_a_restarted_server_keeps_the_last_promoted_labels(
    published, tmp_path, monkeypatch
):
    """Issue: promotion pushed labels before writing the file, so a crash in between lost them on restart."""
    from pipeline.release import promotion
    from serving.client import TFServingClient
    from tests.support import start_test_server

    config_file = Path(published.serving_config_file)
    apply_state(published, ServingState(stable=1))  # the file alone, before any server
    flags = (f"--model_config_file={config_file}", "--allow_version_labels_for_unavailable_models")
    (tmp_path / "server").mkdir()
    server = start_test_server(tmp_path / "server", tmp_path / "server.log", *flags)
    try:
        config = published.replace(serving_grpc_target=server.grpc_target)
        file_ahead_at_each_push, real_push = [], promotion._push

        def push_after_checking_the_file(config_, text, versions):
            file_ahead_at_each_push.append(config_file.read_text() == text)
            real_push(config_, text, versions)

        monkeypatch.setattr(promotion, "_push", push_after_checking_the_file)
        apply_state(config, ServingState(stable=1, canary=2))
        assert file_ahead_at_each_push == [True, True]  # load v2 under the old labels, then label it

        (Path(published.model_dir) / "3").mkdir()  # a version that cannot load
        (Path(published.model_dir) / "3" / "saved_model.pb").write_bytes(b"not a graph")
        before = config_file.read_text()
        with pytest.raises(PromotionError, match="version 3 failed to load"):
            apply_state(config, ServingState(stable=1, canary=3))
        assert config_file.read_text() == before  # a refused promotion leaves the file as it was
        with TFServingClient(server.grpc_target) as client:  # and the server back on it
            assert sorted(s["version"] for s in client.status(published.model_name) if s["state"] == "AVAILABLE") == [
                1,
                2,
            ]

        server.stop()  # as if killed right after the last promotion: the file is all it has
        server = start_test_server(tmp_path / "server", tmp_path / "server.log", *flags)
        with TFServingClient(server.grpc_target) as client:
            assert client.predict(published.model_name, {"images": _image()}, label="canary").version == 2
            assert client.predict(published.model_name, {"images": _image()}, label="stable").version == 1
    finally:
        server.stop()


def _image():
    import numpy as np

    return np.zeros((1, 28, 28), np.uint8)


def test_promotion_keeps_replicas_in_step_and_undoes_a_change_one_of_them_missed(published, tmp_path):
    """Two servers on the same model storage and config file: each change reaches both; when one is down,
    the change is undone on the other and in the file, so `stable` stays the same everywhere."""
    from pipeline.core.errors import ServingUnavailableError
    from serving.client import TFServingClient
    from tests.support import start_test_server

    config_file = Path(published.serving_config_file)
    apply_state(published, ServingState(stable=1))
    flags = (f"--model_config_file={config_file}", "--allow_version_labels_for_unavailable_models")
    servers = {}
    for name in ("primary", "replica"):
        (tmp_path / name).mkdir()
        servers[name] = start_test_server(tmp_path / name, tmp_path / f"{name}.log", *flags)

    def labels(server) -> dict[str, int]:
        with TFServingClient(server.grpc_target, retries=0) as client:
            return {
                label: client.predict(published.model_name, {"images": _image()}, label=label).version
                for label in ("stable", "canary")
            }

    try:
        config = published.replace(
            serving_grpc_target=servers["primary"].grpc_target, serving_replicas=[servers["replica"].grpc_target]
        )
        apply_state(config, ServingState(stable=1, canary=2))
        assert labels(servers["primary"]) == labels(servers["replica"]) == {"stable": 1, "canary": 2}

        replica = servers["replica"]
        replica.stop()  # one replica down during the next promotion
        with pytest.raises(ServingUnavailableError, match=replica.grpc_target):
            apply_state(config, ServingState(stable=2, canary=2))
        assert read_state(config) == ServingState(stable=1, canary=2)  # the file as before
        assert labels(servers["primary"]) == {"stable": 1, "canary": 2}  # and the primary put back

        servers["replica"] = start_test_server(
            tmp_path / "replica", tmp_path / "replica.log", *flags, ports=(replica.grpc_port, replica.rest_port)
        )
        assert labels(servers["replica"]) == {"stable": 1, "canary": 2}  # restarted from the file
        apply_state(config, ServingState(stable=2, canary=2))  # the retry, with both up
        assert labels(servers["primary"]) == labels(servers["replica"]) == {"stable": 2, "canary": 2}
    finally:
        for server in servers.values():
            server.stop()


def test_two_models_promoted_concurrently_never_touch_each_others_versions_or_labels(trained_run, table_run, tmp_path):
    """Several models share one serving config file and server: each promotion changes its own entry only."""
    import threading

    from pipeline.release.promotion import withdraw_canary
    from serving.client import TFServingClient
    from tests.support import export_candidate, start_test_server

    config_file = tmp_path / "serving" / "models.config"
    config_file.parent.mkdir()
    config_file.write_text("model_config_list {\n}\n")
    server = start_test_server(tmp_path, tmp_path / "server.log", f"--model_config_file={config_file}")
    shared = {
        "model_base_path": str(tmp_path / "models"),
        "serving_config_file": str(config_file),
        "serving_grpc_target": server.grpc_target,
        "serving_rest_url": server.rest_url,
    }
    images = trained_run["config"].replace(model_name="images", **shared)
    loans = table_run("binary")["config"].replace(model_name="loans", **shared)
    for _ in range(3):
        export_candidate(trained_run, images)
        export_candidate(table_run("binary"), loans)
    try:
        errors = []

        def promote(config, steps):
            try:
                for state in steps:
                    apply_state(config, state)
            except Exception as err:  # noqa: BLE001  (reported below)
                errors.append(err)

        threads = [
            threading.Thread(
                target=promote,
                args=(images, [ServingState(stable=1, canary=1), ServingState(stable=1, canary=2), ServingState(2, 2)]),
            ),
            threading.Thread(
                target=promote,
                args=(loans, [ServingState(stable=1, canary=1), ServingState(stable=1, canary=3), ServingState(3, 3)]),
            ),
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(300)
        assert errors == []
        assert read_state(images) == ServingState(2, 2) and read_state(loans) == ServingState(3, 3)
        with TFServingClient(server.grpc_target, server.rest_url) as client:
            assert (
                client.predict("images", trained_run["snapshot"].request_rows("test", 2), label="stable").version == 2
            )
            rows = table_run("binary")["snapshot"].request_rows("test", 2)
            assert client.predict("loans", rows, label="stable").version == 3

        # A rollback of one model and a withdrawn canary of the other: each leaves the other as it was.
        rollback(images, 1, by="test")
        assert read_state(images).stable == 1 and read_state(loans) == ServingState(3, 3)
        apply_state(loans, ServingState(stable=3, canary=2))
        withdraw_canary(loans, "canary_rejected", ["a test"], by="test")
        assert read_state(loans) == ServingState(3, 3) and read_state(images).stable == 1
        with TFServingClient(server.grpc_target, server.rest_url) as client:
            assert (
                client.predict("images", trained_run["snapshot"].request_rows("test", 2), label="stable").version == 1
            )
            assert client.predict("loans", rows, label="stable").version == 3
    finally:
        server.stop()
