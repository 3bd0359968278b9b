"""TensorFlow's C++ stderr lines reach Python logging at their own level; expected CPU-only noise is INFO."""

from __future__ import annotations

import logging
import os
import subprocess
import sys

from pipeline.core.native_logs import native_level, native_stderr_to_logging

CUINIT = "E0000 00:00:1795480123.172672   15674 cuda_platform.cc:52] failed call to cuInit: UNKNOWN ERROR (303)"
REAL_ERROR = "E0000 00:00:1795480123.172672   15674 bfc_allocator.cc:485] Allocator ran out of memory"


def test_levels_follow_the_line_prefix_and_expected_cpu_messages_are_info():
    assert native_level(CUINIT) == logging.INFO
    assert native_level("WARNING: All log messages before absl::InitializeLog() is called are written to STDERR") == 20
    assert native_level("I0000 00:00:1.5   1 port.cc:153] oneDNN custom operations are on.") == logging.INFO
    assert native_level("W0000 00:00:1.5   1 x.cc:1] something odd") == logging.WARNING
    assert native_level(REAL_ERROR) == logging.ERROR
    assert native_level("F0000 00:00:1.5   1 x.cc:1] check failed") == logging.CRITICAL
    assert native_level("plain text on stderr") == logging.WARNING


def test_lines_written_to_descriptor_2_by_this_and_child_processes_are_logged(caplog):
    logger = logging.getLogger("tests.native")
    with caplog.at_level(logging.INFO, logger="tests.native"), native_stderr_to_logging(logger):
        os.write(2, f"{CUINIT}\n{REAL_ERROR}\n".encode())
        subprocess.run([sys.executable, "-c", "import sys; sys.stderr.write('from a child\\n')"], check=True)
    levels = {record.getMessage(): record.levelno for record in caplog.records if record.name == "tests.native"}
    assert levels == {CUINIT: logging.INFO, REAL_ERROR: logging.ERROR, "from a child": logging.WARNING}
    os.write(2, b"")  # descriptor 2 works again after the block
