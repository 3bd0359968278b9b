"""TF Serving's REST API (g3doc/api_rest.md) over a threaded HTTP server."""

from __future__ import annotations

import base64
import concurrent.futures
import json
import logging
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import unquote

from google.protobuf import json_format
from tensorflow.core.example import example_pb2, feature_pb2
from tensorflow_serving.apis import input_pb2

from serving.protocol import (
    ServingError,
    columnar_inputs,
    columnar_outputs,
    invalid,
    is_b64,
    row_inputs,
    row_outputs,
)
from serving.server.service import ServingService

log = logging.getLogger("serving.server")

_PREDICTION_PATH = re.compile(
    r"/v1/models/([^/:]+)(?:/versions/(\d+)|/labels/([^/:]+))?:(classify|regress|predict)", re.IGNORECASE
)
_STATUS_PATH = re.compile(
    r"/v1/models(?:/([^/:]+))?(?:/versions/(\d+)|/labels/([^/:]+))?(?:/(metadata))?", re.IGNORECASE
)


def _parse_body(body: bytes) -> dict[str, Any]:
    if not body:
        raise invalid("JSON Parse error: The document is empty")
    try:
        document = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise invalid(f"JSON Parse error: {getattr(err, 'msg', err)} at offset: {getattr(err, 'pos', 0)}") from None
    if not isinstance(document, dict):
        raise invalid(f"JSON Value: {body[:80].decode(errors='replace')} Is not object")
    signature = document.get("signature_name", "")
    if not isinstance(signature, str):
        raise invalid("JSON Value not formatted correctly. 'signature_name' key must be a string value.")
    return document


def _feature(name: str, values: list) -> feature_pb2.Feature:
    feature = feature_pb2.Feature()
    for value in values:
        if value is None or isinstance(value, (list, dict)) and not is_b64(value):
            raise invalid(f"Feature: {name} has element with unexpected JSON type: {type(value).__name__}")
        if isinstance(value, bool):
            kind, item = "int64_list", int(value)
        elif isinstance(value, int):
            kind, item = "int64_list", value
        elif isinstance(value, float):
            kind, item = "float_list", value
        elif is_b64(value):
            kind, item = "bytes_list", base64.b64decode(value["b64"])
        else:
            kind, item = "bytes_list", value.encode()
        current = feature.WhichOneof("kind")
        if current not in (None, kind):
            raise invalid(f"Unexpected element type in feature: {name} expecting type: {current.split('_')[0]}")
        getattr(feature, kind).value.append(item)
    return feature


def _example(value: Any) -> example_pb2.Example:
    if not isinstance(value, dict):
        raise invalid(f"Example must be JSON object but got JSON {type(value).__name__}")
    example = example_pb2.Example()
    for name, content in value.items():
        example.features.feature[name].CopyFrom(_feature(name, content if isinstance(content, list) else [content]))
    return example


def examples_input(document: dict[str, Any]) -> input_pb2.Input:
    """Builds the Input proto of a classify/regress REST body ('examples' + optional 'context')."""
    examples = document.get("examples")
    if examples is None:
        raise invalid("JSON Value: When method is classify, key 'examples' is expected and was not found")
    if not isinstance(examples, list):
        raise invalid("JSON Value: Expecting 'examples' value to be an list/array")
    if not examples:
        raise invalid("JSON Value: 'examples' value is an empty array")
    model_input = input_pb2.Input()
    if "context" in document:
        target = model_input.example_list_with_context
        target.context.CopyFrom(_example(document["context"]))
    else:
        target = model_input.example_list
    for value in examples:
        target.examples.add().CopyFrom(_example(value))
    return model_input


class RestApi:
    """Routes REST requests to the service; returns (HTTP status, JSON-able body)."""

    def __init__(self, service: ServingService, monitoring_path: str | None):
        self.service = service
        self.monitoring_path = monitoring_path

    def handle(self, method: str, path: str, body: bytes) -> tuple[int, Any]:
        try:
            return 200, self._dispatch(method, path, body)
        except ServingError as err:
            return err.http_status, {"error": err.message}
        except Exception as err:  # noqa: BLE001  (a bug must answer 500, never kill the server)
            log.exception("unhandled error for %s %s", method, path, extra={"event": "internal_error"})
            return 500, {"error": f"Internal error: {type(err).__name__}: {err}"}

    def _dispatch(self, method: str, path: str, body: bytes) -> Any:
        path = path.split("?", 1)[0]
        if method == "POST" and (match := _PREDICTION_PATH.fullmatch(path)):
            name, version, label, verb = match.groups()
            return self._predict_like(verb.lower(), unquote(name), version, label and unquote(label), body)
        if method == "GET" and (match := _STATUS_PATH.fullmatch(path)):
            name, version, label, metadata = match.groups()
            if not name:
                raise invalid("Missing model name in request.")
            name, label = unquote(name), label and unquote(label)
            version_number = int(version) if version else None
            if metadata:
                with self.service.observe("get_model_metadata", "REST", name) as record:
                    servable = self.service.resolve(name, version_number, label)
                    record["version"] = servable.version
                    response = self.service.metadata(servable)
                return _metadata_json(response)
            with self.service.observe("get_model_status", "REST", name):
                response = self.service.status(name, version_number)  # a label is ignored, as in TF Serving
            return json_format.MessageToDict(
                response, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
            )
        raise invalid(f"Malformed request: {method} {path}")

    def _predict_like(self, verb: str, name: str, version: str | None, label: str | None, body: bytes) -> Any:
        with self.service.observe(verb, "REST", name) as record:
            document = _parse_body(body)
            servable = self.service.resolve(name, int(version) if version else None, label)
            record["version"] = servable.version
            signature = document.get("signature_name", "")
            if verb == "classify":
                response = self.service.classify(servable, signature, examples_input(document))
                return {
                    "results": [
                        [[c.label, c.score] for c in classification.classes]
                        for classification in response.result.classifications
                    ]
                }
            if verb == "regress":
                response = self.service.regress(servable, signature, examples_input(document))
                return {"results": [r.value for r in response.result.regressions]}
            return self._predict(servable, signature, document)

    def _predict(self, servable, signature: str, document: dict[str, Any]) -> Any:
        dtypes = servable.input_dtypes(signature)
        if not dtypes:
            raise invalid(f"Failed to get input map for signature: {signature or 'DEFAULT'}")
        has_instances, has_inputs = "instances" in document, "inputs" in document
        if has_instances and has_inputs:
            raise invalid(
                "JSON Value: Not formatted correctly expecting only one of 'inputs' or 'instances' keys to exist"
            )
        if has_instances:
            instances = document["instances"]
            if not isinstance(instances, list):
                raise invalid("JSON Value: Excepting 'instances' to be an list/array")
            if not instances:
                raise invalid("JSON Value: No values in 'instances' array")
            _, outputs = self.service.predict(servable, signature, row_inputs(instances, dtypes))
            return {"predictions": row_outputs(outputs)}
        if has_inputs:
            _, outputs = self.service.predict(servable, signature, columnar_inputs(document["inputs"], dtypes))
            return {"outputs": columnar_outputs(outputs)}
        raise invalid("Missing 'inputs' or 'instances' key")


def _metadata_json(response) -> dict[str, Any]:
    from tensorflow_serving.apis import get_model_metadata_pb2

    signature_map = get_model_metadata_pb2.SignatureDefMap()
    response.metadata["signature_def"].Unpack(signature_map)
    options = {"preserving_proto_field_name": True, "always_print_fields_with_no_presence": True}
    return {
        "model_spec": json_format.MessageToDict(response.model_spec, **options),
        "metadata": {"signature_def": json_format.MessageToDict(signature_map, **options)},
    }


class RestServer(ThreadingHTTPServer):
    """HTTP server whose close() waits for in-flight requests; it carries what `RestHandler` needs."""

    daemon_threads = False
    block_on_close = True
    allow_reuse_address = True

    api: RestApi
    max_request_bytes: int
    timeout_s: float | None
    registry_render: Any
    executor: concurrent.futures.ThreadPoolExecutor


class RestHandler(BaseHTTPRequestHandler):
    """One HTTP/1.1 connection: routes `/v1/...` to the server's `RestApi` in its executor."""

    protocol_version = "HTTP/1.1"
    server_version = "serving-local"
    server: RestServer

    def log_message(self, format, *args):  # noqa: A002  (BaseHTTPRequestHandler's signature)
        log.debug("%s %s", self.address_string(), format % args)

    def _send(self, status: int, payload: Any, content_type: str = "application/json") -> None:
        data = payload if isinstance(payload, bytes) else json.dumps(payload, indent=1).encode()
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _serve(self, method: str) -> None:
        server = self.server
        if server.api.monitoring_path and method == "GET" and self.path.split("?", 1)[0] == server.api.monitoring_path:
            self._send(200, server.registry_render().encode(), "text/plain; version=0.0.4")
            return
        length = int(self.headers.get("Content-Length") or 0)
        if length > server.max_request_bytes:
            self.close_connection = True
            error = (
                f"Request body of {length} bytes exceeds the limit of "
                f"{server.max_request_bytes} bytes (--rest_api_max_request_bytes)"
            )
            self._send(413, {"error": error})
            return
        body = self.rfile.read(length) if length else b""
        if not self.path.lower().startswith("/v1/"):
            self._send(404, {"error": f"Not found: {method} {self.path}"})
            return
        future = server.executor.submit(server.api.handle, method, self.path, body)
        # The service enforces the deadline itself (a request still queued for batching answers 429);
        # a little grace here keeps that answer, and 504 is left for a model run that overruns.
        wait_s = None if server.timeout_s is None else server.timeout_s + 1.0
        try:
            status, payload = future.result(timeout=wait_s)
        except concurrent.futures.TimeoutError:
            status, payload = 504, {"error": f"Request timed out after {server.timeout_s:g} s"}
        self._send(status, payload)

    def do_GET(self):  # noqa: N802  (http.server's naming)
        self._serve("GET")

    def do_POST(self):  # noqa: N802
        self._serve("POST")

    def do_PUT(self):  # noqa: N802
        self._serve("PUT")

    def do_DELETE(self):  # noqa: N802
        self._serve("DELETE")


def make_rest_server(
    api: RestApi,
    host: str,
    port: int,
    max_request_bytes: int,
    timeout_s: float | None,
    registry_render,
) -> RestServer:
    """Builds (does not start) the REST server.

    Args:
        api: The request router.
        host: Address to bind.
        port: Port (0 picks a free one).
        max_request_bytes: Bodies larger than this are refused with 413.
        timeout_s: Requests running longer answer 504 DEADLINE_EXCEEDED.
        registry_render: Returns the Prometheus text for the monitoring path.
    """
    server = RestServer((host, port), RestHandler)
    server.api = api
    server.max_request_bytes = max_request_bytes
    server.timeout_s = timeout_s
    server.registry_render = registry_render
    server.executor = concurrent.futures.ThreadPoolExecutor(max_workers=32, thread_name_prefix="rest")
    return server


def serve_in_thread(server: RestServer) -> threading.Thread:
    thread = threading.Thread(target=server.serve_forever, name="rest", daemon=True)
    thread.start()
    return thread
