"""Keras/TensorFlow training pipeline: data, training and release steps in one sequence.

Layers, each importing only the ones below it (checked by `make lint`):

    cli, runner, dag_settings   the step sequence the CLI and the Airflow DAG both run
    release/                    infra-validation, promotion, smoke test (talks to serving)
    training/                   models, hardware plan, train, evaluate (gate), export
    data/                       ingest, IDX reader, snapshots, data validation, tf.data
    core/                       config, errors, artifacts, lineage, model repository

Each step is a plain function that takes a `PipelineConfig` and artifact paths and
returns a small dict of paths and numbers, so it runs the same from the CLI
(`python -m pipeline`), from Airflow tasks and from tests.
"""

__version__ = "0.1.0"
