"""Text-proto config messages TF Serving reads that tensorflow-serving-api does not ship.

`BatchingParameters` (servables/tensorflow/session_bundle_config.proto) and
`MonitoringConfig` (config/monitoring_config.proto) are declared here with TF Serving's
field names and numbers, so the same batching.config and monitoring.config files parse
here and in `tensorflow_model_server`. `ModelServerConfig` comes from the package.
"""

from __future__ import annotations

from google.protobuf import (
    descriptor_pb2,
    descriptor_pool,
    message_factory,
    text_format,
    wrappers_pb2,  # noqa: F401  (registers google/protobuf/wrappers.proto)
)
from tensorflow_serving.config import model_server_config_pb2

_FIELD = descriptor_pb2.FieldDescriptorProto


def _build_file() -> descriptor_pb2.FileDescriptorProto:
    proto = descriptor_pb2.FileDescriptorProto(
        name="serving_local/config.proto",
        package="tensorflow.serving",
        syntax="proto3",
        dependency=["google/protobuf/wrappers.proto"],
    )
    batching = proto.message_type.add(name="BatchingParameters")
    for number, name, type_name in (
        (1, "max_batch_size", ".google.protobuf.Int64Value"),
        (2, "batch_timeout_micros", ".google.protobuf.Int64Value"),
        (3, "max_enqueued_batches", ".google.protobuf.Int64Value"),
        (4, "num_batch_threads", ".google.protobuf.Int64Value"),
        (5, "thread_pool_name", ".google.protobuf.StringValue"),
    ):
        batching.field.add(
            name=name,
            number=number,
            type=_FIELD.TYPE_MESSAGE,
            type_name=type_name,
            label=_FIELD.LABEL_OPTIONAL,
        )
    batching.field.add(name="allowed_batch_sizes", number=6, type=_FIELD.TYPE_INT64, label=_FIELD.LABEL_REPEATED)
    batching.field.add(name="pad_variable_length_inputs", number=7, type=_FIELD.TYPE_BOOL, label=_FIELD.LABEL_OPTIONAL)

    prometheus = proto.message_type.add(name="PrometheusConfig")
    prometheus.field.add(name="enable", number=1, type=_FIELD.TYPE_BOOL, label=_FIELD.LABEL_OPTIONAL)
    prometheus.field.add(name="path", number=2, type=_FIELD.TYPE_STRING, label=_FIELD.LABEL_OPTIONAL)
    monitoring = proto.message_type.add(name="MonitoringConfig")
    monitoring.field.add(
        name="prometheus_config",
        number=1,
        type=_FIELD.TYPE_MESSAGE,
        type_name=".tensorflow.serving.PrometheusConfig",
        label=_FIELD.LABEL_OPTIONAL,
    )
    return proto


_POOL = descriptor_pool.DescriptorPool()
_POOL.AddSerializedFile(
    descriptor_pb2.FileDescriptorProto.FromString(wrappers_pb2.DESCRIPTOR.serialized_pb).SerializeToString()
)
_POOL.Add(_build_file())
BatchingParameters = message_factory.GetMessageClass(
    _POOL.FindMessageTypeByName("tensorflow.serving.BatchingParameters")
)
MonitoringConfig = message_factory.GetMessageClass(_POOL.FindMessageTypeByName("tensorflow.serving.MonitoringConfig"))
ModelServerConfig = model_server_config_pb2.ModelServerConfig


def parse_text(text: str, message_class, source: str = "config"):
    """Parses a text-format proto.

    Raises:
        ValueError: on bad syntax, with TF Serving's words (proto_util.h's status and protobuf's
            parser error), e.g. "Invalid protobuf file: 'models.config': Error parsing text-format
            tensorflow.serving.ModelServerConfig: 1:1 : ...".
    """
    message = message_class()
    try:
        text_format.Parse(text, message)
    except text_format.ParseError as err:
        raise ValueError(
            f"Invalid protobuf file: '{source}': Error parsing text-format {message_class.DESCRIPTOR.full_name}: {err}"
        ) from err
    return message
