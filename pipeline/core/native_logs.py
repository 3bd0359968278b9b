"""TensorFlow's C++ log lines, read from the process's stderr and passed to Python logging at their level.

TensorFlow 2.19+ writes its start-up messages (oneDNN notice, CUDA probing, absl's pre-init
notice) straight to file descriptor 2, whatever TF_CPP_MIN_LOG_LEVEL says
(tensorflow/tensorflow#100442). An orchestrator that shows a task's stderr as errors then
paints a healthy CPU task red. `native_stderr_to_logging` reads descriptor 2 through a pipe
and logs each line at the severity its own prefix gives (I, W, E, F); what is expected on a
machine without a GPU (no CUDA driver, cuInit failing) is logged at INFO.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import os
import re
import sys
import threading
from collections.abc import Iterator

# glog/absl format: "E0000 00:00:1795480123.172672   15674 cuda_platform.cc:52] message"
_NATIVE_LINE = re.compile(r"^([IWEF])\d{4} [\d:.]+\s+\d+ [^\]]+\] ?(.*)$")
_LEVELS = {"I": logging.INFO, "W": logging.WARNING, "E": logging.ERROR, "F": logging.CRITICAL}
# What TensorFlow prints on every machine without a GPU (or before absl is set up): not a problem.
EXPECTED_WITHOUT_GPU = (
    "All log messages before absl::InitializeLog() is called",
    "Could not find cuda drivers on your machine",
    "failed call to cuInit",
    "Unable to register cuDNN factory",
    "Unable to register cuFFT factory",
    "Unable to register cuBLAS factory",
    "computation placer already registered",
)


def native_level(line: str) -> int:
    """The logging level for one line TensorFlow (or another library) wrote to stderr."""
    if any(expected in line for expected in EXPECTED_WITHOUT_GPU):
        return logging.INFO
    match = _NATIVE_LINE.match(line)
    if match:
        return _LEVELS[match.group(1)]
    return logging.WARNING  # Unformatted text on stderr: worth seeing, not an error by itself.


def _pump(read_fd: int, logger: logging.Logger) -> None:
    # A handler of `logger` that writes to descriptor 2 sends each logged line back into the
    # pipe; a line that holds one just logged is that echo, not new output.
    recent: collections.deque[str] = collections.deque(maxlen=64)
    with os.fdopen(read_fd, "r", errors="replace") as pipe:
        for line in pipe:
            line = line.rstrip("\n")
            if not line.strip() or any(logged in line for logged in recent):
                continue
            recent.append(line)
            logger.log(native_level(line), "%s", line)


@contextlib.contextmanager
def native_stderr_to_logging(logger: logging.Logger) -> Iterator[None]:
    """Sends what is written to file descriptor 2 inside the block to `logger`, line by line.

    Args:
        logger: Receives each line at the level `native_level` gives it.

    Yields:
        Nothing; on exit descriptor 2 is what it was before.
    """
    with contextlib.suppress(Exception):
        sys.stderr.flush()
    saved = os.dup(2)
    read_fd, write_fd = os.pipe()
    os.dup2(write_fd, 2)
    os.close(write_fd)
    pump = threading.Thread(target=_pump, args=(read_fd, logger), name="native-stderr", daemon=True)
    pump.start()
    try:
        yield
    finally:
        with contextlib.suppress(Exception):
            sys.stderr.flush()
        os.dup2(saved, 2)  # Closes the pipe's last write end we hold: the pump reads to its end.
        os.close(saved)
        # A child process started inside the block may still hold the pipe; do not wait for it.
        pump.join(timeout=5)
