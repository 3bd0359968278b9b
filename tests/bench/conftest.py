"""The benchmark smoke tests reuse the serving suite's model repository."""

from tests.serving.conftest import model_repo, server  # noqa: F401  (fixtures)
