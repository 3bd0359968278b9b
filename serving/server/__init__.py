"""A TensorFlow Serving-compatible model server (`python -m serving.server`)."""
