"""`python -m pipeline`: see `pipeline.cli`."""

import os
import sys

# Quiet TensorFlow's C++ start-up chatter unless the user asked for it.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from pipeline.cli import main  # noqa: E402  (also the `mlops-pipeline` console script)

if __name__ == "__main__":
    sys.exit(main())
