"""The gRPC services, whatever transport carries them: messages in, messages out.

:class:`GrpcService` is the method table both transports serve (``h2.py``, pyserving's
HTTP/2 server, and ``aio.py``, grpcio's ``grpc.aio``), by full method path:

* ``tensorflow.serving.PredictionService``: Predict (an :class:`~.calls.Inference`
  method), Classify, Regress, MultiInference, GetModelMetadata;
* ``tensorflow.serving.ModelService``: GetModelStatus, HandleReloadConfigRequest;
* ``inference.GRPCInferenceService``, the Open Inference Protocol (``v2/grpc.py``;
  ModelInfer is an Inference method too);
* ``tensorflow.ProfilerService`` when enabled (``profiler_service.py``);
* ``grpc.health.v1.Health`` when enabled: :attr:`GrpcService.health` (``health.py``),
  which the transports serve themselves (``Watch`` streams).

Every request becomes calls on :class:`~pyserving.server.service.ModelServing` (or
``ServerCore.reload_config``) and its answer becomes the response message. Errors are
pyserving's, turned into a status by :func:`~.calls.status_of`: TF Serving's codes and
messages. A Predict input that would decode to more than the receive limit (few typed values
filling a huge shape) is ``INVALID_ARGUMENT`` ``tensor parsing error: <alias>``.
Thread-safe.
"""

from __future__ import annotations

import concurrent.futures
import logging
from collections.abc import Mapping
from typing import Any

import numpy as np
from tensorflow_serving.apis import (
    classification_pb2,
    get_model_metadata_pb2,
    get_model_status_pb2,
    inference_pb2,
    model_management_pb2,
    predict_pb2,
    regression_pb2,
)

from pyserving import codec
from pyserving.batching import settled_future
from pyserving.codec.tensor_proto import ByteBudget
from pyserving.errors import Code, InvalidArgument, ServingError
from pyserving.server.grpc.calls import Call, Inference, Method, Unary
from pyserving.server.grpc.health import HealthService
from pyserving.server.service import (
    ModelServing,
    ModelSpec,
    PredictResult,
    set_model_spec,
    spec_from_proto,
)

log = logging.getLogger(__name__)

PREDICTION_SERVICE = "tensorflow.serving.PredictionService"
MODEL_SERVICE = "tensorflow.serving.ModelService"
PREDICT_PATH = f"/{PREDICTION_SERVICE}/Predict"

def decode_inputs(
    inputs: Mapping[str, Any], max_tensor_bytes: int | None = None
) -> dict[str, np.ndarray]:
    """Request inputs as arrays, in the request's order; a malformed one is ``tensor parsing
    error: <alias>``.

    A TensorProto whose typed values are fewer than its shape holds is filled out (TF's
    ``Tensor::FromProto``), so a few bytes on the wire can describe a huge tensor. Inputs
    that together would decode to more than ``max_tensor_bytes`` (the largest request the
    server accepts) are refused the way TF Serving refuses a tensor it cannot allocate:
    ``tensor parsing error: <alias>``, naming the input that crosses the limit, before that
    input is allocated (the inputs decoded before it hold at most the limit together).
    """
    if max_tensor_bytes is None:
        return {name: codec.tensor_proto_to_ndarray(p, name=name) for name, p in inputs.items()}
    budget = ByteBudget(max_tensor_bytes)
    try:
        return {
            name: codec.tensor_proto_to_ndarray(p, name=name, budget=budget)
            for name, p in inputs.items()
        }
    except InvalidArgument:
        if budget.remaining < 0:
            log.debug("inputs would decode to over %d bytes; refused", max_tensor_bytes)
        raise


def request_spec(request: Any) -> ModelSpec:
    """The request's model spec; ``INVALID_ARGUMENT: Missing ModelSpec`` when absent."""
    if not request.HasField("model_spec"):
        raise InvalidArgument("Missing ModelSpec")
    return spec_from_proto(request.model_spec)


class PredictionService:
    """``tensorflow.serving.PredictionService`` over :class:`ModelServing`.

    ``max_tensor_bytes``: the largest decoded size of a request's inputs (``None``: no
    limit); the server sets it to its receive limit. ``tensor_content``: Predict outputs as
    raw bytes (``--enable_serialization_as_tensor_content``).
    """

    def __init__(
        self,
        serving: ModelServing,
        *,
        max_tensor_bytes: int | None = None,
        tensor_content: bool = False,
    ) -> None:
        self.serving = serving
        self.max_tensor_bytes = max_tensor_bytes
        self.tensor_content = tensor_content

    # -- Predict -------------------------------------------------------------------------

    @staticmethod
    def predict_model(request: Any) -> str:
        return str(request.model_spec.name)

    def start_predict(self, request: Any) -> concurrent.futures.Future[PredictResult]:
        """Resolve the model, decode the inputs and run them, or queue them for the batch;
        every error is the future's."""
        try:
            with self.serving.bind(request_spec(request)) as model:
                try:
                    inputs = decode_inputs(request.inputs, self.max_tensor_bytes)
                except InvalidArgument:
                    # TF Serving checks the aliases before parsing the tensors: a request
                    # wrong in both gets the alias error.
                    model.check_input_aliases(request.inputs.keys())
                    raise
                return model.predict(inputs, tuple(request.output_filter))
        except Exception as exc:
            return settled_future(exception=exc)

    def predict_response(self, result: PredictResult) -> predict_pb2.PredictResponse:
        """The ``PredictResponse`` of a finished predict."""
        response = predict_pb2.PredictResponse()
        set_model_spec(response.model_spec, result.id, result.signature_name)
        outputs = response.outputs
        for name, array in result.outputs.items():
            codec.ndarray_to_tensor_proto(
                array, use_tensor_content=self.tensor_content, into=outputs[name]
            )
        return response

    # -- the blocking methods ------------------------------------------------------------

    def classify(self, request: Any, call: Call) -> classification_pb2.ClassificationResponse:
        id, signature_name, result = self.serving.classify(request_spec(request), request.input)
        response = classification_pb2.ClassificationResponse()
        set_model_spec(response.model_spec, id, signature_name)
        response.result.CopyFrom(result)
        return response

    def regress(self, request: Any, call: Call) -> regression_pb2.RegressionResponse:
        id, signature_name, result = self.serving.regress(request_spec(request), request.input)
        response = regression_pb2.RegressionResponse()
        set_model_spec(response.model_spec, id, signature_name)
        response.result.CopyFrom(result)
        return response

    def multi_inference(self, request: Any, call: Call) -> Any:
        return self.serving.multi_inference(request)

    def metadata(self, request: Any, call: Call) -> Any:
        return self.serving.metadata(request_spec(request), tuple(request.metadata_field))

    def methods(self) -> dict[str, Method]:
        prefix = f"/{PREDICTION_SERVICE}/"
        return {
            PREDICT_PATH: Inference(
                predict_pb2.PredictRequest,
                self.predict_model,
                self.start_predict,
                self.predict_response,
            ),
            prefix + "Classify": Unary(classification_pb2.ClassificationRequest, self.classify),
            prefix + "Regress": Unary(regression_pb2.RegressionRequest, self.regress),
            prefix + "MultiInference": Unary(
                inference_pb2.MultiInferenceRequest, self.multi_inference
            ),
            prefix + "GetModelMetadata": Unary(
                get_model_metadata_pb2.GetModelMetadataRequest, self.metadata
            ),
        }


class ModelService:
    """``tensorflow.serving.ModelService``: model status and config reload."""

    def __init__(self, serving: ModelServing) -> None:
        self.serving = serving

    def status(self, request: Any, call: Call) -> Any:
        return self.serving.status(request_spec(request))

    def reload_config(self, request: Any, call: Call) -> Any:
        """Replace the model set; answers once it has settled.

        As TF Serving: success answers a response whose ``status.error_code`` is OK; a
        failure is the RPC's status (code and message), so no response body arrives.
        """
        config = request.config
        if config.WhichOneof("config") != "model_config_list":
            raise InvalidArgument(
                "ServerModelConfig type not supported by HandleReloadConfigRequest. "
                "Only ModelConfigList is currently supported"
            )
        for index, model in enumerate(config.model_config_list.config):
            log.info(
                "Config entry index: %d path: %s name: %s platform: %s",
                index,
                model.base_path,
                model.name,
                model.model_platform,
            )
        try:
            self.serving.core.reload_config(config)
        except ServingError as exc:
            log.error("ReloadConfig failed: %s", exc.message)
            raise
        response = model_management_pb2.ReloadConfigResponse()
        response.status.error_code = int(Code.OK)
        response.status.error_message = ""
        return response

    def methods(self) -> dict[str, Method]:
        prefix = f"/{MODEL_SERVICE}/"
        return {
            prefix + "GetModelStatus": Unary(
                get_model_status_pb2.GetModelStatusRequest, self.status
            ),
            prefix + "HandleReloadConfigRequest": Unary(
                model_management_pb2.ReloadConfigRequest, self.reload_config
            ),
        }


class GrpcService:
    """Every method the gRPC port serves (see the module docstring), by full path.

    ``methods``: the method table; ``health``: the health service, None unless
    ``enable_health``. ``max_tensor_bytes`` and ``tensor_content``: as
    :class:`PredictionService`.
    """

    def __init__(
        self,
        serving: ModelServing,
        *,
        max_tensor_bytes: int | None = None,
        tensor_content: bool = False,
        enable_health: bool = False,
        enable_profiler: bool = True,
    ) -> None:
        self.prediction = PredictionService(
            serving, max_tensor_bytes=max_tensor_bytes, tensor_content=tensor_content
        )
        self.methods: dict[str, Method] = {
            **self.prediction.methods(),
            **ModelService(serving).methods(),
        }
        from pyserving.server.v2.grpc import V2GrpcService

        self.methods.update(V2GrpcService(serving).methods())
        if enable_profiler:
            from pyserving.server.profiler_service import ProfilerServicer

            for path, (request_type, run) in ProfilerServicer().methods().items():
                self.methods[path] = Unary(request_type, run)
        self.health: HealthService | None = HealthService() if enable_health else None

    def services(self) -> dict[str, dict[str, Method]]:
        """The method table grouped by service: ``{service: {method name: method}}``."""
        grouped: dict[str, dict[str, Method]] = {}
        for path, method in self.methods.items():
            service, name = path[1:].rsplit("/", 1)
            grouped.setdefault(service, {})[name] = method
        return grouped


__all__ = [
    "MODEL_SERVICE",
    "PREDICTION_SERVICE",
    "PREDICT_PATH",
    "GrpcService",
    "ModelService",
    "PredictionService",
    "decode_inputs",
    "request_spec",
]
