"""Keras/TensorFlow training pipeline: ingest, validate, preprocess, train, evaluate, export.

Each stage is a plain function in its own module that takes a `PipelineConfig`
and artifact paths and returns a small result object of paths and numbers, so it
runs the same from the CLI (`python -m pipeline`), from Airflow tasks and from tests.
"""

__version__ = "0.1.0"
