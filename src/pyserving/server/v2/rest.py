"""The Open Inference Protocol's REST API, on the REST port beside ``/v1/``.

Routes (case-sensitive, as V2 specifies)::

    GET  /v2                                                  server metadata
    GET  /v2/health/live, /v2/health/ready                    (health.py's, when installed)
    GET  /v2/models/{m}[/versions/{v}]                        model metadata
    GET  /v2/models/{m}[/versions/{v}]/ready                  200 ready, 503 not, 404 unknown
    POST /v2/models/{m}[/versions/{v}]/infer                  inference
    GET  /v2/models[/{m}[/versions/{v}]]/stats                statistics extension
    POST /v2/repository/index                                 model repository extension
    POST /v2/repository/models/{m}/load, .../unload

Inference bodies are JSON, or with the binary tensor data extension a JSON header of
``Inference-Header-Content-Length`` bytes followed by the inputs' bytes (in input order,
each input's size in its ``binary_data_size`` parameter; they must add up to the rest of the
body). Outputs are JSON ``data`` unless the request's ``binary_data_output`` parameter or
an output's ``binary_data`` parameter asks for binary data: the answer is then
``application/octet-stream``, the JSON header (its length in
``Inference-Header-Content-Length``) followed by those outputs' bytes.

Errors answer ``{"error": "..."}`` with the status of the error
(:meth:`V2Service.error` maps them: 400, 404, 503...). Thread-safe.
"""

from __future__ import annotations

import concurrent.futures
import json
import re
from collections.abc import Callable
from typing import Any

import orjson

from pyserving.errors import InvalidArgument, NotFound
from pyserving.server.rest import PendingResponse, RestResponse
from pyserving.server.service import PredictResult
from pyserving.server.v2 import codec
from pyserving.server.v2.service import (
    CLASSIFICATION_REFUSED,
    JSON,
    RAW,
    InferRequest,
    InferResult,
    InputTensor,
    ModelStatistics,
    V2Service,
)

_MODEL = re.compile(r"^/v2/models/([^/]+)(?:/versions/([^/]+))?(/ready|/infer|/stats)?$")
_REPOSITORY = re.compile(r"^/v2/repository/models/([^/]+)/(load|unload)$")
_HEADER_LENGTH = b"inference-header-content-length"
_OCTET_STREAM = b"application/octet-stream"
_NUMPY = orjson.OPT_SERIALIZE_NUMPY


def _json(status: int, body: Any) -> RestResponse:
    return RestResponse(status, orjson.dumps(body, option=_NUMPY))


class V2Routes:
    """``handle(method, path, headers, body)`` for paths under ``/v2``; ``body`` is the
    request body, already decompressed."""

    def __init__(self, service: V2Service) -> None:
        self.service = service

    def handle(
        self, method: str, path: str, headers: dict[bytes, bytes], body: bytes
    ) -> RestResponse | PendingResponse:
        """The answer (a pending one for an inference waiting for its batch); raises
        ``ServingError`` for the caller to turn into ``{"error": ...}``."""
        service = self.service
        if method == "GET":
            if path in ("/v2", "/v2/"):
                name, version, extensions = service.server_metadata()
                return _json(200, {"name": name, "version": version, "extensions": extensions})
            if path == "/v2/health/live":
                return _json(200, {"live": True})
            if path == "/v2/health/ready":
                ready = service.ready()
                return _json(200 if ready else 503, {"ready": ready})
            if path == "/v2/models/stats":
                return _statistics(service.statistics())
        match = _MODEL.match(path)
        if match:
            name, version, action = match.groups()
            version = version or ""
            if action == "/infer" and method == "POST":
                return self._infer(name, version, headers, body, method, path)
            if method == "GET":
                if action is None:
                    return _metadata(service, name, version)
                if action == "/ready":
                    if service.model_ready(name, version):
                        return _json(200, {"name": name, "ready": True})
                    return _json(
                        503, {"error": f"Model '{name}' is not ready", "name": name, "ready": False}
                    )
                if action == "/stats":
                    return _statistics(service.statistics(name, version))
        elif method == "POST":
            if path == "/v2/repository/index":
                request = _object(body, empty_ok=True)
                ready = request.get("ready", False)
                if not isinstance(ready, bool):
                    raise InvalidArgument('"ready" must be true or false')
                entries = service.repository_index(ready)
                return _json(
                    200,
                    [
                        {"name": e.name, "version": e.version, "state": e.state, "reason": e.reason}
                        for e in entries
                    ],
                )
            match = _REPOSITORY.match(path)
            if match:
                name, verb = match.groups()
                parameters = _parameters(_object(body, empty_ok=True), "request")
                if verb == "load":
                    service.load(name, parameters)
                else:
                    service.unload(name)
                return _json(200, {})
        raise NotFound(f"Not found: {method} {path}")

    def _infer(
        self,
        name: str,
        version: str,
        headers: dict[bytes, bytes],
        body: bytes,
        method: str,
        path: str,
    ) -> RestResponse | PendingResponse:
        request, binary_outputs = parse_infer_request(name, version, headers, body)
        service = self.service
        future = service.infer_future(request, "REST")

        def encode(result: concurrent.futures.Future[PredictResult]) -> RestResponse:
            return encode_infer_result(service.result(request, result), binary_outputs)

        if future.done():
            return encode(future)
        # The pending answer resolves to the finished future itself, so that its error is
        # mapped by the service like an immediate one.
        outer: concurrent.futures.Future[Any] = concurrent.futures.Future()
        future.add_done_callback(outer.set_result)
        outer.add_done_callback(lambda done: future.cancel() if done.cancelled() else None)
        return PendingResponse(outer, encode, method, path)


def _object(body: bytes, empty_ok: bool = False) -> dict[str, Any]:
    if empty_ok and not body.strip():
        return {}
    try:
        value = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        value = _with_non_finite_numbers(body)
        if value is None:
            raise InvalidArgument(f"Request body is not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise InvalidArgument("Request body must be a JSON object")
    return value


def _with_non_finite_numbers(body: bytes) -> Any:
    """``body`` read with ``NaN``, ``Infinity`` and ``-Infinity`` as numbers (Triton reads
    them so, with RapidJSON's ``kParseNanAndInfFlag``), or None when it is not JSON even so.
    Only a body orjson refused comes here; it must still be UTF-8 throughout, with no lone
    surrogate escapes, as orjson requires."""
    if b"NaN" not in body and b"Infinity" not in body:
        return None
    try:
        value = json.loads(body.decode("utf-8"), parse_int=_int_as_orjson_reads)
        orjson.dumps(value)  # refuses what orjson would not have read (lone surrogates)
    except (ValueError, TypeError, RecursionError):
        return None
    return value


def _int_as_orjson_reads(text: str) -> int | float:
    """A JSON integer as orjson reads it: an int within 64 bits, else a float."""
    value = int(text)
    return value if -(1 << 63) <= value < (1 << 64) else float(value)


def _parameters(holder: dict[str, Any], what: str) -> dict[str, Any]:
    parameters = holder.get("parameters", {})
    if not isinstance(parameters, dict):
        raise InvalidArgument(f'The {what}\'s "parameters" must be a JSON object')
    return parameters


def _flag(parameters: dict[str, Any], key: str, default: bool) -> bool:
    value = parameters.get(key, default)
    if not isinstance(value, bool):
        raise InvalidArgument(f'Parameter "{key}" must be true or false')
    return value


def parse_infer_request(
    name: str, version: str, headers: dict[bytes, bytes], body: bytes
) -> tuple[InferRequest, dict[str, bool]]:
    """A REST inference body as an :class:`InferRequest`, and for each requested output
    whether it is wanted as binary data (key ``""``: the default for the others)."""
    declared = headers.get(_HEADER_LENGTH)
    if declared is not None:
        text = declared.strip()
        if not text.isdigit() or int(text) > len(body):
            raise InvalidArgument(
                f"Inference-Header-Content-Length {declared.decode('latin-1')!r} is not a "
                f"length within the body ({len(body)} bytes)"
            )
        length = int(text)
        if length == 0:
            raise InvalidArgument(
                "Inference-Header-Content-Length 0 (a body of tensor data without a JSON "
                "header) is not supported: send the JSON header"
            )
        document = _object(body[:length])
        binary = memoryview(body)[length:]
    else:
        document = _object(body)
        binary = memoryview(b"")
    request_id = document.get("id", "")
    if not isinstance(request_id, str):
        raise InvalidArgument('"id" must be a string')
    parameters = _parameters(document, "request")
    signature_name = parameters.get("signature_name", "")
    if not isinstance(signature_name, str):
        raise InvalidArgument('Parameter "signature_name" must be a string')
    raw_inputs = document.get("inputs")
    if not isinstance(raw_inputs, list) or not raw_inputs:
        raise InvalidArgument('"inputs" must be a non-empty list of input tensors')
    inputs: list[InputTensor] = []
    offset = 0
    for index, item in enumerate(raw_inputs):
        if not isinstance(item, dict):
            raise InvalidArgument(f"input {index} must be a JSON object")
        input_name = item.get("name")
        if not isinstance(input_name, str):
            raise InvalidArgument(f'input {index} needs a "name" string')
        size = _parameters(item, f"input '{input_name}'").get("binary_data_size")
        if size is not None:
            if type(size) is not int or size < 0:
                raise InvalidArgument(
                    f"input '{input_name}': binary_data_size must be a non-negative integer"
                )
            if "data" in item:
                raise InvalidArgument(f"input '{input_name}' has both \"data\" and binary data")
            if offset + size > len(binary):
                raise InvalidArgument(
                    f"input '{input_name}': binary_data_size {size} runs past the "
                    f"{len(binary)} bytes of binary data"
                )
            data: Any = binary[offset : offset + size]
            offset += size
            form = RAW
        elif "data" in item:
            data, form = item["data"], JSON
        else:
            raise InvalidArgument(f"input '{input_name}' has no \"data\" and no binary data")
        inputs.append(InputTensor(input_name, item.get("datatype"), item.get("shape"), data, form))
    if offset != len(binary):
        raise InvalidArgument(
            f"The inputs' binary_data_size add up to {offset} bytes, the body holds "
            f"{len(binary)} bytes of binary data"
        )
    binary_default = _flag(parameters, "binary_data_output", False)
    wanted: dict[str, bool] = {"": binary_default}
    names: list[str] = []
    raw_outputs = document.get("outputs", [])
    if not isinstance(raw_outputs, list):
        raise InvalidArgument('"outputs" must be a list')
    for index, item in enumerate(raw_outputs):
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            raise InvalidArgument(f'output {index} must be an object with a "name" string')
        output_name = item["name"]
        names.append(output_name)
        output_parameters = _parameters(item, f"output '{output_name}'")
        if "classification" in output_parameters:
            raise InvalidArgument(CLASSIFICATION_REFUSED.format(output_name))
        wanted[output_name] = _flag(output_parameters, "binary_data", binary_default)
    request = InferRequest(name, version, request_id, inputs, names, signature_name)
    return request, wanted


def encode_infer_result(result: InferResult, binary: dict[str, bool]) -> RestResponse:
    """The REST answer: JSON, or JSON header + binary outputs when any is binary."""
    outputs: list[dict[str, Any]] = []
    chunks: list[bytes] = []
    default = binary.get("", False)
    for output in result.outputs:
        entry: dict[str, Any] = {
            "name": output.name,
            "datatype": output.datatype,
            "shape": output.shape,
        }
        if binary.get(output.name, default):
            data = codec.raw_bytes(output.array, output.datatype)
            entry["parameters"] = {"binary_data_size": len(data)}
            chunks.append(data)
        else:
            entry["data"] = codec.json_data(output.name, output.array, output.datatype)
        outputs.append(entry)
    document: dict[str, Any] = {
        "model_name": result.model_name,
        "model_version": result.model_version,
    }
    if result.id:
        document["id"] = result.id
    document["outputs"] = outputs
    header = orjson.dumps(document, option=_NUMPY)
    if not chunks:
        return RestResponse(200, header)
    return RestResponse(
        200,
        b"".join([header, *chunks]),
        _OCTET_STREAM,
        ((b"inference-header-content-length", str(len(header)).encode()),),
    )


def _metadata(service: V2Service, name: str, version: str) -> RestResponse:
    meta = service.model_metadata(name, version)

    def tensors(items: Any) -> list[dict[str, Any]]:
        return [{"name": t.name, "datatype": t.datatype, "shape": t.shape} for t in items]

    return _json(
        200,
        {
            "name": meta.name,
            "versions": meta.versions,
            "platform": meta.platform,
            "inputs": tensors(meta.inputs),
            "outputs": tensors(meta.outputs),
        },
    )


def statistics_dict(stats: ModelStatistics) -> dict[str, Any]:
    """One model version's statistics as the statistics extension's JSON."""
    counts = stats.counts

    def duration(count: int = 0, ns: int = 0) -> dict[str, int]:
        return {"count": count, "ns": ns}

    return {
        "name": stats.name,
        "version": stats.version,
        "last_inference": counts.last_inference_ms,
        "inference_count": counts.inference_count,
        "execution_count": counts.execution_count,
        "inference_stats": {
            "success": duration(counts.success_count, counts.success_ns),
            "fail": duration(counts.fail_count, counts.fail_ns),
            "queue": duration(),
            "compute_input": duration(),
            "compute_infer": duration(),
            "compute_output": duration(),
            "cache_hit": duration(),
            "cache_miss": duration(),
        },
        "batch_stats": [
            {
                "batch_size": size,
                "compute_input": duration(runs),
                "compute_infer": duration(runs),
                "compute_output": duration(runs),
            }
            for size, runs in sorted(counts.batch_sizes.items())
        ],
        "memory_usage": [],
    }


def _statistics(stats: list[ModelStatistics]) -> RestResponse:
    return _json(200, {"model_stats": [statistics_dict(s) for s in stats]})


#: ``(method, path, headers, body) -> answer`` as :class:`~pyserving.server.rest.RestHandler`
#: calls it.
Handler = Callable[[str, str, dict[bytes, bytes], bytes], RestResponse | PendingResponse]

__all__ = [
    "Handler",
    "V2Routes",
    "encode_infer_result",
    "parse_infer_request",
    "statistics_dict",
]
