"""Start, wait for and stop a local serving server process (`python -m serving.server`).

The one way the project starts a local server: the pipeline's infra-validation sandbox,
`deploy/local.py` (make demo / make airflow), the benchmarks and the tests all use it.

    with launcher.start(["--model_config_file=models.config"], log_path=Path("server.log")) as server:
        TFServingClient(server.grpc_target, server.rest_url).status("m")
"""

from __future__ import annotations

import dataclasses
import signal
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

from serving.polling import poll_until

PACKAGE_ROOT = Path(__file__).resolve().parent.parent


class ServerStartError(RuntimeError):
    """The server exited (`exit_code` set) or did not answer in time; the message ends with its log's tail."""

    def __init__(self, message: str, exit_code: int | None = None):
        super().__init__(message)
        self.exit_code = exit_code


def free_port() -> int:
    """Returns a TCP port on 127.0.0.1 that is free right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclasses.dataclass
class LocalServer:
    """A running `python -m serving.server` process and its addresses."""

    process: subprocess.Popen
    grpc_port: int
    rest_port: int
    log_path: Path

    @property
    def grpc_target(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def rest_url(self) -> str:
        return f"http://127.0.0.1:{self.rest_port}"

    @property
    def pid(self) -> int:
        return self.process.pid

    def logs(self, tail: int | None = None) -> str:
        """The server's log so far (its last `tail` characters if given)."""
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return text[-tail:] if tail else text

    def wait_until_ready(self, timeout_s: float = 120) -> None:
        """Waits until the REST port answers HTTP (any status: a 404 for an unknown model is fine).

        Raises:
            ServerStartError: if the process exits first or `timeout_s` passes.
        """

        def answered() -> bool:
            if self.process.poll() is not None:
                raise ServerStartError(
                    f"server exited with {self.process.returncode}:\n{self.logs(3000)}", self.process.returncode
                )
            try:
                urllib.request.urlopen(self.rest_url + "/v1/models/none", timeout=1)
            except urllib.error.HTTPError:
                return True
            except OSError:
                return False
            return True

        try:
            poll_until(answered, timeout_s)
        except TimeoutError:
            raise ServerStartError(f"server did not start in {timeout_s:g}s:\n{self.logs(3000)}") from None

    def stop(self, timeout_s: float = 60) -> int:
        """Sends SIGTERM, waits up to `timeout_s` (then kills); returns the exit code."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait()

    def __enter__(self) -> LocalServer:
        return self

    def __exit__(self, *exc_info) -> None:
        self.stop()


def start(
    args: list[str],
    *,
    log_path: str | Path,
    grpc_port: int | None = None,
    rest_port: int | None = None,
    wait: bool = True,
    timeout_s: float = 120,
    python: str = sys.executable,
    env: dict[str, str] | None = None,
    detach: bool = False,
) -> LocalServer:
    """Starts `python -m serving.server` with `args` on the given (or free) loopback ports.

    Args:
        args: Server flags besides `--port` and `--rest_api_port`.
        log_path: File the server's stdout and stderr are appended to.
        grpc_port: gRPC port; a free one by default.
        rest_port: REST port; a free one by default.
        wait: Return only once the REST port answers.
        timeout_s: How long to wait for that.
        python: The interpreter to run the server with.
        env: The server's environment (default: this process's).
        detach: Start it in its own session, so it outlives this process (make demo).

    Returns:
        The running server.

    Raises:
        ServerStartError: with `wait`, if the server exits or does not answer in time.
    """
    grpc_port = grpc_port or free_port()
    rest_port = rest_port or free_port()
    log_path = Path(log_path)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    command = [python, "-m", "serving.server", f"--port={grpc_port}", f"--rest_api_port={rest_port}", *args]
    with open(log_path, "ab") as log_file:
        process = subprocess.Popen(
            command,
            cwd=PACKAGE_ROOT,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=detach,
        )
    server = LocalServer(process, grpc_port, rest_port, log_path)
    if wait:
        try:
            server.wait_until_ready(timeout_s)
        except ServerStartError:
            server.stop(timeout_s=10)
            raise
    return server
