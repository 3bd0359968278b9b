"""TensorFlow Serving compatible serving: a local server and gRPC/REST clients.

`serving.server` never imports `pipeline` or `dags`; `serving.client` works against
this server and against the official `tensorflow/serving` image alike.
"""

__version__ = "0.1.0"
