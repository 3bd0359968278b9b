"""Which folders the local server takes for versions."""

from serving.server.manager import scan_versions


def test_only_ascii_digit_folders_are_versions(tmp_path):
    for name in ("1", "²", "١٢", "x3"):
        (tmp_path / name).mkdir()
    assert scan_versions(tmp_path) == {1: tmp_path / "1"}


def test_a_broken_version_never_holds_back_newer_ones_and_is_retried_when_its_folder_changes(tmp_path, model_repo):
    """Issue: load retries (5 x 60 s) ran under the manager's lock, so one broken version blocked
    every newer version for ~5 minutes, and stayed failed after its folder was completed."""
    import shutil

    from serving import sample_models
    from serving.client import TFServingClient
    from tests.serving.test_conformance import X
    from tests.support import start_test_server, wait_for

    base = tmp_path / "models" / "fragile"
    sample_models.write_broken_version(base, 1)
    config = tmp_path / "fragile.config"
    config.write_text(
        f"model_config_list {{ config {{ name: 'fragile' base_path: '{base}' model_platform: 'tensorflow' "
        "model_version_policy { all {} } } }"
    )
    server = start_test_server(
        tmp_path / "models",
        tmp_path / "server.log",
        f"--model_config_file={config}",
        "--max_num_load_retries=5",
        "--load_retry_interval_micros=600000000",  # 10 minutes between attempts, as a slow operator sets it
    )
    try:
        with TFServingClient(server.grpc_target) as client:

            def states():
                return {s["version"]: s["state"] for s in client.status("fragile")}

            assert wait_for(lambda: states().get(1) == "END", 30, "version 1 to fail")
            sample_models.copy_version(model_repo / "scaler" / "2", base, 2)  # a newer good version
            assert wait_for(lambda: states().get(2) == "AVAILABLE", 30, "version 2 to load past the broken one")
            assert client.predict("fragile", {"x": X})["y"].tolist() == (X * 3).tolist()

            staging = tmp_path / "fixed"
            shutil.copytree(model_repo / "scaler" / "1", staging)
            shutil.rmtree(base / "1")
            staging.rename(base / "1")  # the broken folder completed: retried now, not in 10 minutes
            assert wait_for(lambda: states().get(1) == "AVAILABLE", 30, "the completed version 1 to load")
            assert client.predict("fragile", {"x": X}, version=1)["y"].tolist() == (X * 2).tolist()
    finally:
        server.stop()
    assert '"event": "load_retry"' in server.logs()
