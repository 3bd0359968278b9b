"""The server under test: the local server by default, or a real TF Serving.

Set TFSERVING_REST_URL (e.g. http://localhost:8501) and TFSERVING_GRPC_TARGET
(localhost:8500) to certify a running `tensorflow/serving` instead. The tests then
write their SavedModels into TFSERVING_MODELS_DIR (a host folder mounted into the
server) and address them as TFSERVING_SERVER_MODELS_DIR (that folder as the server
sees it, default /models). Start the real server with a config it can replace, e.g.

    docker run -p 8500:8500 -p 8501:8501 -v $PWD/tfs-models:/models tensorflow/serving \
      --model_config_file=/models/empty.config --file_system_poll_wait_seconds=1 \
      --max_num_load_retries=1 --load_retry_interval_micros=100000 --enable_batching \
      --monitoring_config_file=/models/monitoring.config

(with `model_config_list {}` in empty.config and serving/monitoring.config copied there).
"""

from __future__ import annotations

import dataclasses
import os
import shutil
from pathlib import Path

import pytest

from serving import sample_models
from serving.client import TFServingClient
from serving.launcher import LocalServer
from tests.support import REPO_ROOT, export_candidate, start_test_server

EXTERNAL = bool(os.environ.get("TFSERVING_REST_URL") and os.environ.get("TFSERVING_GRPC_TARGET"))
local_only = pytest.mark.skipif(EXTERNAL, reason="uses flags or internals of the local server only")


@dataclasses.dataclass
class ServerUnderTest:
    rest_url: str
    grpc_target: str
    models_dir: Path  # where tests write models
    server_models_dir: str  # the same folder as the server sees it
    local: LocalServer | None = None

    def client(self, protocol: str = "grpc", **kwargs) -> TFServingClient:
        return TFServingClient(self.grpc_target, self.rest_url, protocol, **kwargs)

    def server_path(self, name: str) -> str:
        return f"{self.server_models_dir.rstrip('/')}/{name}"

    def config_text(self, *models: str) -> str:
        """Joins `config { ... }` blocks (use `{base}` for the models folder as the server sees it)."""
        body = "\n".join(m.replace("{base}", self.server_models_dir.rstrip("/")) for m in models)
        return f"model_config_list {{\n{body}\n}}\n"

    def logs(self) -> str:
        return self.local.logs() if self.local else ""


@pytest.fixture(scope="session")
def server(tmp_path_factory):
    """The server every conformance test talks to."""
    if EXTERNAL:
        models_dir = Path(os.environ.get("TFSERVING_MODELS_DIR") or tmp_path_factory.mktemp("models"))
        yield ServerUnderTest(
            os.environ["TFSERVING_REST_URL"],
            os.environ["TFSERVING_GRPC_TARGET"],
            models_dir,
            os.environ.get("TFSERVING_SERVER_MODELS_DIR", "/models"),
        )
        return
    models_dir = tmp_path_factory.mktemp("models")
    log_path = models_dir.parent / "server.log"
    batching = models_dir / "batching.config"
    batching.write_text(
        "max_batch_size { value: 64 }\nbatch_timeout_micros { value: 2000 }\n"
        "max_enqueued_batches { value: 100 }\nnum_batch_threads { value: 2 }\n"
    )
    shutil.copy(REPO_ROOT / "serving" / "monitoring.config", models_dir / "monitoring.config")
    local = start_test_server(
        models_dir,
        log_path,
        "--enable_batching",
        f"--batching_parameters_file={batching}",
        f"--monitoring_config_file={models_dir / 'monitoring.config'}",
    )
    yield ServerUnderTest(local.rest_url, local.grpc_target, models_dir, str(models_dir), local)
    local.stop()


@pytest.fixture(scope="session")
def model_repo(server, trained_run):
    """Writes the test models: scaler v1 (x2) and v2 (x3), examples (TF1 classify/regress), the quick start's
    half_plus_two, and the real Fashion-MNIST model."""
    base = server.models_dir
    sample_models.save_scaler(base / "scaler", 1, 2.0)
    sample_models.save_scaler(base / "scaler", 2, 3.0)
    sample_models.save_half_plus_two(base / "examples", 1)
    sample_models.save_quickstart_half_plus_two(base / "half_plus_two", 1)
    config = trained_run["config"].replace(model_base_path=str(base), model_name="fashion")
    export_candidate(trained_run, config)
    return base


SCALER = """config { name: 'scaler' base_path: '{base}/scaler' model_platform: 'tensorflow'
  model_version_policy { all {} }
  version_labels { key: 'stable' value: 1 } version_labels { key: 'canary' value: 2 } }"""
EXAMPLES = "config { name: 'examples' base_path: '{base}/examples' model_platform: 'tensorflow' }"
FASHION = "config { name: 'fashion' base_path: '{base}/fashion' model_platform: 'tensorflow' }"


@pytest.fixture
def standard_config(server, model_repo):
    """Applies the standard config (scaler with labels, examples, fashion) before a test.

    As with TF Serving, a label may only name a version that is already available, so the
    versions are loaded first and labelled in a second reload.
    """
    unlabelled = SCALER.split("version_labels", 1)[0] + "}"
    with server.client() as client:
        client.reload_config(server.config_text(unlabelled, EXAMPLES, FASHION))
        client.reload_config(server.config_text(SCALER, EXAMPLES, FASHION))
    return server
