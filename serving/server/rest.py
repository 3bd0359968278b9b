"""TF Serving's REST API (g3doc/api_rest.md) as a Starlette app on uvicorn."""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import re
import socket
import threading
from typing import Any
from urllib.parse import unquote

import anyio
import anyio.to_thread
import orjson
import uvicorn
from google.protobuf import json_format
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route
from tensorflow.core.example import example_pb2, feature_pb2
from tensorflow_serving.apis import input_pb2

from serving.polling import poll_until
from serving.protocol import (
    ServingError,
    cap_message,
    columnar_inputs,
    columnar_outputs,
    invalid,
    is_b64,
    parse_version,
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


def _loads(body: bytes) -> Any:
    """json.loads, through orjson when it can (about 3x faster); json decides NaN, huge ints and errors."""
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        return json.loads(body)


def _parse_body(body: bytes) -> dict[str, Any]:
    if not body:
        raise invalid("JSON Parse error: The document is empty")
    try:
        document = _loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise invalid(f"JSON Parse error: {getattr(err, 'msg', err)} at offset: {getattr(err, 'pos', 0)}") from None
    except RecursionError:
        raise invalid("JSON Parse error: the document is nested too deeply") from None
    except ValueError as err:  # e.g. an integer of more than 4,300 digits
        raise invalid(f"JSON Parse error: {err}") from None
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
            return 500, {"error": cap_message(f"Internal error: {type(err).__name__}: {err}")}

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
            version_number = parse_version(version) if version else None
            if metadata:
                with self.service.observe("get_model_metadata", "REST", name):
                    servable = self.service.resolve(name, version_number, label)
                    response = self.service.metadata(servable)
                return _metadata_json(response)
            with self.service.observe("get_model_status", "REST", name):
                response = self.service.status(name, version_number)  # a label is ignored, as in TF Serving
            return json_format.MessageToDict(
                response, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
            )
        raise invalid(f"Malformed request: {method} {path}")

    def _predict_like(self, verb: str, name: str, version: str | None, label: str | None, body: bytes) -> Any:
        with self.service.observe(verb, "REST", name):
            document = _parse_body(body)
            servable = self.service.resolve(name, parse_version(version) if version else None, label)
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
            requested = (parse_version(version) if version else None, label)
            no_bools = b"true" not in body and b"false" not in body
            return self._predict(servable, signature, document, no_bools=no_bools, requested=requested)

    def _predict(
        self,
        servable,
        signature: str,
        document: dict[str, Any],
        *,
        no_bools: bool,
        requested: tuple[int | None, str | None] = (None, None),
    ) -> Any:
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
            inputs = row_inputs(instances, dtypes, no_bools=no_bools)
            _, outputs = self.service.predict(servable, signature, inputs, requested=requested)
            return {"predictions": row_outputs(outputs)}
        if has_inputs:
            inputs = columnar_inputs(document["inputs"], dtypes, no_bools=no_bools)
            _, outputs = self.service.predict(servable, signature, inputs, requested=requested)
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


class _BodyTooLarge(Exception):
    pass


def _too_large(declared_or_read: int, limit: int) -> JSONResponse:
    error = (
        f"Request body of {declared_or_read} bytes exceeds the limit of {limit} bytes (--rest_api_max_request_bytes)"
    )
    return JSONResponse({"error": error}, status_code=413, headers={"Connection": "close"})


async def _read_body(request: Request, limit: int) -> bytes:
    """Reads the body, refusing it as soon as it passes `limit` (before it is read whole)."""
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise _BodyTooLarge(size)
        chunks.append(chunk)
    return b"".join(chunks)


def make_rest_app(
    api: RestApi,
    max_request_bytes: int,
    timeout_s: float | None,
    registry_render,
    threads: int,
) -> Starlette:
    """The REST API as an ASGI app (Starlette), served by uvicorn.

    Args:
        api: The request router (framework-free: method, raw path, body -> status, JSON).
        max_request_bytes: Bodies larger than this are refused with 413, before being read whole.
        timeout_s: The request deadline; the service enforces it (a request still queued for
            batching answers 429), and 504 answers a model run that overruns it.
        registry_render: Returns the Prometheus text for the monitoring path.
        threads: Requests handled at once (`--rest_api_num_threads`); more wait for a thread.
    """
    limiter = anyio.CapacityLimiter(threads)
    wait_s = None if timeout_s is None else timeout_s + 1.0

    async def endpoint(request: Request) -> Response:
        method = request.method
        # The raw (still percent-encoded) path: model names are unquoted by the router, as TF Serving does.
        raw = request.scope.get("raw_path") or request.url.path.encode()
        path = raw.decode("latin-1")
        if request.url.query:
            path += "?" + request.url.query
        if api.monitoring_path and method == "GET" and path.split("?", 1)[0] == api.monitoring_path:
            return PlainTextResponse(registry_render(), media_type="text/plain; version=0.0.4")
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > max_request_bytes:
            return _too_large(int(declared), max_request_bytes)
        try:
            with anyio.fail_after(timeout_s):  # a client that declares more than it sends
                body = await _read_body(request, max_request_bytes)
        except _BodyTooLarge as err:
            return _too_large(err.args[0], max_request_bytes)
        except TimeoutError:
            return JSONResponse(
                {"error": f"Request body not received within {timeout_s:g} s"},
                status_code=408,
                headers={"Connection": "close"},
            )
        if not path.lower().startswith("/v1/"):
            return JSONResponse({"error": f"Not found: {method} {path}"}, status_code=404)
        try:
            with anyio.fail_after(wait_s):
                status, payload = await anyio.to_thread.run_sync(api.handle, method, path, body, limiter=limiter)
        except TimeoutError:
            status, payload = 504, {"error": f"Request timed out after {timeout_s:g} s"}
        if api.service.heap_trimmer is not None:  # a large JSON body leaves more garbage than its arrays
            api.service.heap_trimmer.note(len(body))
        return Response(json.dumps(payload, indent=1), status_code=status, media_type="application/json")

    methods = ["GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS"]
    return Starlette(routes=[Route("/{path:path}", endpoint, methods=methods)])


RECEIVE_BUFFER_BYTES = 1 << 20


class RestServer:
    """uvicorn serving the REST app on a socket bound up front (so port 0 reports its port)."""

    def __init__(self, app: Starlette, host: str, port: int, grace_s: float, backlog: int = 2048):
        self.socket = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
        self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        # Set before listen() so accepted connections inherit it and negotiate a large enough
        # window: with the default (~64 KiB at first) a batch-32 JSON body fills the window,
        # and the client waits for TCP's 200 ms persist timer (seen as a p99 of ~200 ms).
        self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER_BYTES)
        self.socket.bind((host, port))
        self.socket.listen(backlog)
        self.port = self.socket.getsockname()[1]
        config = uvicorn.Config(
            app,
            log_level="warning",
            access_log=False,
            timeout_keep_alive=30,
            timeout_graceful_shutdown=grace_s,
            lifespan="off",
            server_header=False,
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [self.socket]}, name="rest", daemon=True
        )

    def start(self, timeout_s: float = 30) -> None:
        self._thread.start()
        with contextlib.suppress(TimeoutError):  # judged just below
            poll_until(lambda: self._server.started or not self._thread.is_alive(), timeout_s, interval_s=0.01)
        if not self._server.started:
            raise OSError(f"the REST server did not start on port {self.port}")

    def stop(self) -> None:
        """Stops accepting, closes idle connections, lets in-flight requests finish (up to the grace)."""
        self._server.should_exit = True
        self._thread.join()
        self.socket.close()


def make_rest_server(
    api: RestApi,
    host: str,
    port: int,
    max_request_bytes: int,
    timeout_s: float | None,
    registry_render,
    *,
    threads: int = 32,
    grace_s: float = 30,
) -> RestServer:
    """Builds (does not start) the REST server; see `make_rest_app` for the arguments."""
    app = make_rest_app(api, max_request_bytes, timeout_s, registry_render, threads)
    return RestServer(app, host, port, grace_s)
