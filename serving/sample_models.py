"""Small real SavedModels (TF2 tf.Module and a TF1 classify/regress graph) that the serving tests,
the conformance suite and the reliability benchmark serve."""

from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path

import numpy as np
import tensorflow as tf
from tensorflow_serving.apis import predict_pb2, prediction_log_pb2


class Scaler(tf.Module):
    """serving_default: x float32 [N,3] -> y = x * scale, sum = row sums; plus 'pair' and 'echo'."""

    def __init__(self, scale: float):
        super().__init__()
        self.scale = tf.Variable(scale, dtype=tf.float32)

    @tf.function(input_signature=[tf.TensorSpec([None, 3], tf.float32, name="x")])
    def serve(self, x):
        y = x * self.scale
        return {"y": y, "sum": tf.reduce_sum(y, axis=1)}

    @tf.function(
        input_signature=[
            tf.TensorSpec([None], tf.int64, name="a"),
            tf.TensorSpec([None, 2], tf.float32, name="b"),
        ]
    )
    def pair(self, a, b):
        return {"a_plus_one": a + 1, "b_total": tf.reduce_sum(b, axis=1) + tf.cast(a, tf.float32)}

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="text_bytes")])
    def echo(self, text_bytes):
        return {
            "length": tf.strings.length(text_bytes),
            "doubled_bytes": tf.strings.join([text_bytes, text_bytes]),
        }


def write_warmup(version_dir: Path, model_name: str, records: int = 3) -> None:
    """Writes TF Serving warmup records for the Scaler's serving_default."""
    extra = version_dir / "assets.extra"
    extra.mkdir(parents=True, exist_ok=True)
    with tf.io.TFRecordWriter(str(extra / "tf_serving_warmup_requests")) as writer:
        for index in range(records):
            request = predict_pb2.PredictRequest()
            request.model_spec.name = model_name
            request.inputs["x"].CopyFrom(tf.make_tensor_proto(np.full((index + 1, 3), index, np.float32)))
            writer.write(
                prediction_log_pb2.PredictionLog(
                    predict_log=prediction_log_pb2.PredictLog(request=request)
                ).SerializeToString()
            )


def save_scaler(base: Path, version: int, scale: float, model_name: str = "scaler") -> Path:
    """Saves a Scaler as <base>/<version>, atomically (staging folder, then rename)."""
    base.mkdir(parents=True, exist_ok=True)
    staging = base / f".tmp-{uuid.uuid4().hex}"
    module = Scaler(scale)
    tf.saved_model.save(
        module,
        str(staging),
        signatures={"serving_default": module.serve, "pair": module.pair, "echo": module.echo},
    )
    write_warmup(staging, model_name)
    final = base / str(version)
    os.rename(staging, final)
    return final


def copy_version(source: Path, base: Path, version: int) -> Path:
    """Publishes a copy of a version folder under a new number, atomically."""
    staging = base / f".tmp-{uuid.uuid4().hex}"
    shutil.copytree(source, staging)
    final = base / str(version)
    os.rename(staging, final)
    return final


def save_half_plus_two(base: Path, version: int = 1) -> Path:
    """A TF1-style graph with predict, classify and regress signatures (like TF Serving's half_plus_two).

    `regress_as_predict` has a regression's inputs and outputs but method_name predict.

    Examples carry a float feature 'x'; regress returns 0.5 * x + 2; classify returns
    classes ['low', 'high'] with scores [1 - s, s] where s = sigmoid(x).
    """
    final = base / str(version)
    base.mkdir(parents=True, exist_ok=True)
    staging = base / f".tmp-{uuid.uuid4().hex}"
    v1 = tf.compat.v1
    with tf.Graph().as_default():
        serialized = v1.placeholder(tf.string, [None], name="tf_example")
        features = tf.io.parse_example(serialized, {"x": tf.io.FixedLenFeature([1], tf.float32)})
        x_example = features["x"]
        half = v1.get_variable("half", initializer=0.5)
        regressed = x_example * half + 2.0
        score = tf.sigmoid(x_example)
        scores = tf.concat([1.0 - score, score], axis=1)
        classes = tf.tile(tf.constant([["low", "high"]]), [tf.shape(x_example)[0], 1])
        x_input = v1.placeholder(tf.float32, [None], name="x")
        y_output = x_input * half + 2.0
        with v1.Session() as session:
            session.run(v1.global_variables_initializer())
            builder = v1.saved_model.Builder(str(staging))
            signatures = v1.saved_model.signature_def_utils
            builder.add_meta_graph_and_variables(
                session,
                ["serve"],
                signature_def_map={
                    "serving_default": signatures.predict_signature_def({"x": x_input}, {"y": y_output}),
                    "classify_x": signatures.classification_signature_def(serialized, classes, scores),
                    "regress_x": signatures.regression_signature_def(serialized, regressed),
                    # As TF2 exports them: a regression's structure under method_name predict.
                    "regress_as_predict": signatures.predict_signature_def(
                        {"inputs": serialized}, {"outputs": regressed}
                    ),
                },
                strip_default_attrs=True,
            )
            builder.save()
    os.rename(staging, final)
    return final


def save_as_tf1_0_wrote_it(base: Path, version: int = 1) -> Path:
    """save_half_plus_two's model as TensorFlow 1.0 wrote SavedModels (TF Serving's own
    saved_model_half_plus_three is one): signatures without tensor shapes, which read as
    scalars, and placeholders with an empty `shape` beside an unknown recorded one."""
    from tensorflow.core.protobuf import saved_model_pb2

    path = save_half_plus_two(base, version)
    saved_model = saved_model_pb2.SavedModel()
    saved_model.ParseFromString((path / "saved_model.pb").read_bytes())
    for meta_graph in saved_model.meta_graphs:
        for signature in meta_graph.signature_def.values():
            for tensor_info in (*signature.inputs.values(), *signature.outputs.values()):
                tensor_info.ClearField("tensor_shape")
        for node in meta_graph.graph_def.node:
            node.attr.pop("_output_shapes", None)
            if node.op == "Placeholder":
                node.attr["shape"].shape.Clear()
                node.attr["_output_shapes"].list.shape.add(unknown_rank=True)
    (path / "saved_model.pb").write_bytes(saved_model.SerializeToString())
    return path


class PixelMean(tf.Module):
    """serving_default: images uint8 [N, 28, 28] -> mean float32 [N], the shape of a Fashion-MNIST request."""

    @tf.function(input_signature=[tf.TensorSpec([None, 28, 28], tf.uint8, name="images")])
    def serve(self, images):
        return {"mean": tf.reduce_mean(tf.cast(images, tf.float32), axis=[1, 2])}


def save_pixel_mean(base: Path, version: int = 1) -> Path:
    """Writes PixelMean as version `version` under `base` (atomically)."""
    final = base / str(version)
    base.mkdir(parents=True, exist_ok=True)
    staging = base / f".tmp-{uuid.uuid4().hex}"
    module = PixelMean()
    tf.saved_model.save(module, str(staging), signatures={"serving_default": module.serve})
    os.rename(staging, final)
    return final


class HalfPlus(tf.Module):
    """y = 0.5 * x + offset with x float [?, 1], as TF Serving's quick-start models declare it."""

    def __init__(self, offset: float):
        super().__init__()
        self.offset = offset

    @tf.function(input_signature=[tf.TensorSpec([None, 1], tf.float32, name="x")])
    def serve(self, x):
        return {"y": x * 0.5 + self.offset}


def save_quickstart_half_plus_two(base: Path, version: int = 1, offset: float = 2.0) -> Path:
    """The model of TF Serving's README quick start (offset 3: its half_plus_three), exported with TF2."""
    base.mkdir(parents=True, exist_ok=True)
    staging = base / f".tmp-{uuid.uuid4().hex}"
    module = HalfPlus(offset)
    tf.saved_model.save(module, str(staging), signatures={"serving_default": module.serve})
    final = base / str(version)
    os.rename(staging, final)
    return final


def write_broken_version(base: Path, version: int) -> Path:
    """A version folder whose saved_model.pb is garbage (fails to load)."""
    final = base / str(version)
    final.mkdir(parents=True)
    (final / "saved_model.pb").write_bytes(b"this is not a SavedModel")
    return final
