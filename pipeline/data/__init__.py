"""Data steps: ingest a source into an immutable snapshot, validate it, build tf.data pipelines."""
