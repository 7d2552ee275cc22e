"""``inference.GRPCInferenceService`` (the Open Inference Protocol over gRPC), whatever the
transport.

:class:`V2GrpcService` translates the service's messages (:mod:`protos`) into
:class:`~pyserving.server.v2.service.V2Service` calls and back: its :meth:`~V2GrpcService.methods`
join the method table both gRPC transports serve (``server/grpc/service.py``). Errors are
raised with the code :meth:`V2Service.error` chose (INVALID_ARGUMENT, NOT_FOUND,
UNAVAILABLE...) and become the call's status in the transport.

``ModelInfer`` is an :class:`~pyserving.server.grpc.calls.Inference` method, served as
Predict is (small calls for fast models on the transport's event loop). A request whose
inputs came as ``raw_input_contents`` (as ``tritonclient`` always sends them) is answered
with ``raw_output_contents``; one with typed ``contents`` with typed contents (FP16 and BF16
outputs, which have no typed field, make the whole answer raw). Thread-safe.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
from dataclasses import dataclass
from typing import Any

from pyserving.batching import settled_future
from pyserving.errors import InvalidArgument, NotFound, ServingError
from pyserving.server.grpc.calls import Call, Inference, Method, Unary, run_inference
from pyserving.server.service import ModelServing, PredictResult
from pyserving.server.v2 import codec
from pyserving.server.v2.protos import MESSAGES, SERVICE
from pyserving.server.v2.service import (
    CLASSIFICATION_REFUSED,
    CONTENTS,
    RAW,
    InferRequest,
    InputTensor,
    ModelStatistics,
    V2Service,
)

#: The full path of ModelInfer.
INFER_PATH = f"/{SERVICE}/ModelInfer"
_REQUESTS = {
    name: MESSAGES[f"{name}Request"]
    for name in (
        "ServerLive",
        "ServerReady",
        "ModelReady",
        "ServerMetadata",
        "ModelMetadata",
        "ModelInfer",
        "ModelStatistics",
        "RepositoryIndex",
        "RepositoryModelLoad",
        "RepositoryModelUnload",
    )
}
_NO_TYPED_FIELD = frozenset({"FP16", "BF16"})


@dataclass(frozen=True)
class _Started:
    """A ModelInfer that ran (or waits for its batch): what its answer is built from."""

    request: InferRequest
    raw: bool
    future: concurrent.futures.Future[PredictResult]


def infer_request(message: Any) -> InferRequest:
    """A ``ModelInferRequest`` as an :class:`InferRequest` (``InvalidArgument`` when raw
    and typed contents are mixed, or the raw entries do not match the inputs)."""
    inputs = message.inputs
    raw = message.raw_input_contents
    if raw:
        if len(raw) != len(inputs):
            raise InvalidArgument(
                f"raw_input_contents holds {len(raw)} entries for {len(inputs)} inputs"
            )
        tensors = []
        for index, tensor in enumerate(inputs):
            if tensor.HasField("contents"):
                raise InvalidArgument(
                    f"input '{tensor.name}' has contents although raw_input_contents is used"
                )
            tensors.append(
                InputTensor(tensor.name, tensor.datatype, tuple(tensor.shape), raw[index], RAW)
            )
    else:
        tensors = [
            InputTensor(t.name, t.datatype, tuple(t.shape), t.contents, CONTENTS) for t in inputs
        ]
    parameters = message.parameters
    signature_name = ""
    if "signature_name" in parameters:
        signature_name = parameters["signature_name"].string_param
    return InferRequest(
        message.model_name,
        message.model_version,
        message.id,
        tensors,
        [_output_name(output) for output in message.outputs],
        signature_name,
    )


def _output_name(output: Any) -> str:
    """A requested output's name; ``InvalidArgument`` when it asks for the classification
    extension, which this server does not offer."""
    if "classification" in output.parameters:
        raise InvalidArgument(CLASSIFICATION_REFUSED.format(output.name))
    return str(output.name)


class V2GrpcService:
    """``inference.GRPCInferenceService`` over ``serving`` (see the module docstring).
    Each method takes ``(request, call)`` and blocks; ModelInfer also has the
    :class:`~pyserving.server.grpc.calls.Inference` parts (:meth:`start_predict`,
    :meth:`predict_response`)."""

    #: ModelInfer's request class, for front ends that parse it themselves.
    infer_request_type = MESSAGES["ModelInferRequest"]

    def __init__(self, serving: ModelServing) -> None:
        self.service = V2Service(serving)
        self._infer = Inference(
            self.infer_request_type, self.model_name, self.start_predict, self.predict_response
        )

    # -- ModelInfer, as PredictionService's Predict ---------------------------------------

    @staticmethod
    def model_name(message: Any) -> str:
        """The model a ModelInfer request names (for per-model call costs)."""
        return str(message.model_name)

    def start_predict(self, message: Any) -> concurrent.futures.Future[_Started]:
        """Decode and run ``message`` (or queue it for its batch). The future fails at once
        for a request that fails at once; otherwise it resolves, once the model has run, to
        what :meth:`predict_response` answers from (which raises a later failure).
        Cancelling it takes a queued request out of its batch."""
        try:
            request = infer_request(message)
        except ServingError as exc:
            return settled_future(exception=exc)
        service = self.service
        inner = service.infer_future(request, "GRPC")
        started = _Started(request, bool(message.raw_input_contents), inner)
        if inner.done():
            error = inner.exception()
            if error is not None:
                return settled_future(
                    exception=service.error(error, request.model_name, request.model_version)
                )
            return settled_future(started)
        outer: concurrent.futures.Future[_Started] = concurrent.futures.Future()

        def finished(_inner: concurrent.futures.Future[PredictResult]) -> None:
            with contextlib.suppress(concurrent.futures.InvalidStateError):
                outer.set_result(started)  # unless the caller cancelled it meanwhile

        inner.add_done_callback(finished)
        outer.add_done_callback(lambda done: inner.cancel() if done.cancelled() else None)
        return outer

    def predict_response(self, started: _Started) -> Any:
        """The ``ModelInferResponse`` of a finished :meth:`start_predict`."""
        result = self.service.result(started.request, started.future)
        response = MESSAGES["ModelInferResponse"](
            model_name=result.model_name, model_version=result.model_version, id=result.id
        )
        raw = started.raw or any(o.datatype in _NO_TYPED_FIELD for o in result.outputs)
        for output in result.outputs:
            tensor = response.outputs.add(
                name=output.name, datatype=output.datatype, shape=output.array.shape
            )
            if raw:
                response.raw_output_contents.append(codec.raw_bytes(output.array, output.datatype))
            else:
                codec.fill_contents(tensor.contents, output.array, output.datatype)
        return response

    # -- the service's methods -------------------------------------------------------------

    def ModelInfer(self, request: Any, call: Call) -> Any:
        return run_inference(self._infer, request, call)

    def ServerLive(self, request: Any, call: Call) -> Any:
        return MESSAGES["ServerLiveResponse"](live=self.service.live())

    def ServerReady(self, request: Any, call: Call) -> Any:
        return MESSAGES["ServerReadyResponse"](ready=self.service.ready())

    def ModelReady(self, request: Any, call: Call) -> Any:
        try:
            ready = self.service.model_ready(request.name, request.version)
        except NotFound:
            ready = False
        return MESSAGES["ModelReadyResponse"](ready=ready)

    def ServerMetadata(self, request: Any, call: Call) -> Any:
        name, version, extensions = self.service.server_metadata()
        return MESSAGES["ServerMetadataResponse"](
            name=name, version=version, extensions=list(extensions)
        )

    def ModelMetadata(self, request: Any, call: Call) -> Any:
        meta = self.service.model_metadata(request.name, request.version)
        response = MESSAGES["ModelMetadataResponse"](
            name=meta.name, versions=meta.versions, platform=meta.platform
        )
        for target, tensors in (
            (response.inputs, meta.inputs),
            (response.outputs, meta.outputs),
        ):
            for tensor in tensors:
                target.add(name=tensor.name, datatype=tensor.datatype, shape=tensor.shape)
        return response

    def ModelStatistics(self, request: Any, call: Call) -> Any:
        response = MESSAGES["ModelStatisticsResponse"]()
        for stats in self.service.statistics(request.name, request.version):
            _fill_statistics(response.model_stats.add(), stats)
        return response

    def RepositoryIndex(self, request: Any, call: Call) -> Any:
        response = MESSAGES["RepositoryIndexResponse"]()
        for entry in self.service.repository_index(request.ready):
            response.models.add(
                name=entry.name, version=entry.version, state=entry.state, reason=entry.reason
            )
        return response

    def RepositoryModelLoad(self, request: Any, call: Call) -> Any:
        parameters = {
            key: getattr(value, value.WhichOneof("parameter_choice") or "string_param")
            for key, value in request.parameters.items()
        }
        self.service.load(request.model_name, parameters)
        return MESSAGES["RepositoryModelLoadResponse"]()

    def RepositoryModelUnload(self, request: Any, call: Call) -> Any:
        self.service.unload(request.model_name)
        return MESSAGES["RepositoryModelUnloadResponse"]()

    # -- registration ----------------------------------------------------------------------

    def methods(self) -> dict[str, Method]:
        """Every method served, by full path."""
        table: dict[str, Method] = {
            f"/{SERVICE}/{name}": Unary(request_type, getattr(self, name))
            for name, request_type in _REQUESTS.items()
        }
        table[INFER_PATH] = self._infer
        return table


def _fill_statistics(target: Any, stats: ModelStatistics) -> None:
    counts = stats.counts
    target.name = stats.name
    target.version = stats.version
    target.last_inference = counts.last_inference_ms
    target.inference_count = counts.inference_count
    target.execution_count = counts.execution_count
    inference = target.inference_stats
    inference.success.count = counts.success_count
    inference.success.ns = counts.success_ns
    inference.fail.count = counts.fail_count
    inference.fail.ns = counts.fail_ns
    for field in ("queue", "compute_input", "compute_infer", "compute_output"):
        getattr(inference, field).SetInParent()
    for size, runs in sorted(counts.batch_sizes.items()):
        batch = target.batch_stats.add(batch_size=size)
        batch.compute_input.count = runs
        batch.compute_infer.count = runs
        batch.compute_output.count = runs


__all__ = ["INFER_PATH", "V2GrpcService", "infer_request"]
