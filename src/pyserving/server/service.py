"""The one request path behind every front end.

REST and gRPC (both protocols, V1 and V2) translate their wire format into calls on
:class:`ModelServing` and translate the answer back; everything between (model spec
resolution, scoped handles, signature checks, running the model, status and metadata)
happens here once. A predict request takes three hops::

    model = serving.bind(spec)          # resolve name, version/label and signature once
    inputs = <front end decodes, with model.signature_def>
    future = model.predict(inputs)      # run, or queue for the batch; the future answers

Thread-safe. :meth:`BoundModel.predict` returns without waiting for a batched request;
every other method blocks while the model runs, so front ends call them from worker
threads.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import time
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from tensorflow_serving.apis import (
    classification_pb2,
    get_model_metadata_pb2,
    get_model_status_pb2,
    input_pb2,
    regression_pb2,
)

from pyserving import inference
from pyserving.batching import BatchingServable, settled_future
from pyserving.core.monitor import ManagerState, ServableState
from pyserving.core.source import ServableId
from pyserving.errors import Code, InvalidArgument, NotFound, ServingError
from pyserving.server.core import ServerCore
from pyserving.server.metrics import ServerMetrics

DEFAULT_SIGNATURE = "serving_default"


@dataclass(frozen=True)
class ModelSpec:
    """What a request names: a model, optionally a version or a label, and a signature."""

    name: str
    version: int | None = None
    label: str | None = None
    signature_name: str = ""


@dataclass(frozen=True)
class PredictResult:
    id: ServableId
    signature_name: str
    outputs: dict[str, np.ndarray]


class ModelServing:
    """Predict, classify, regress, metadata and status over a :class:`ServerCore`."""

    def __init__(
        self,
        core: ServerCore,
        *,
        check_method_name: bool = False,
        metrics: ServerMetrics | None = None,
    ) -> None:
        self.core = core
        self.check_method_name = check_method_name
        self.metrics = metrics

    @contextlib.contextmanager
    def _observed(self, model_name: str, api: str, entrypoint: str) -> Iterator[None]:
        """Count the request and its latency (status ``OK`` or the error code's name)."""
        if self.metrics is None:
            yield
            return
        start = time.perf_counter()
        error: Exception | None = None
        try:
            yield
        except Exception as exc:
            error = exc
            raise
        finally:
            self._observe(model_name, api, entrypoint, error, start)

    def bind(self, spec: ModelSpec, *, entrypoint: str = "GRPC") -> BoundModel:
        """Resolve ``spec`` once for a predict request: the model version it names (held
        until the request is answered) and its signature.

        Use it as ``with serving.bind(spec) as model: future = model.predict(inputs)``;
        the front end decodes its inputs between the two (``model.signature_def`` tells
        how). Raises ``NotFound`` (model, version or label), ``InvalidArgument`` (a label
        not assigned), :class:`~pyserving.inference.SignatureNotFound` (gRPC's wording: a
        front end may reword it) or ``Internal`` (with the method-name check, a signature
        that is not predict, classify or regress). Every failure, here or before
        :meth:`BoundModel.predict`, is counted in the metrics with ``entrypoint``.
        """
        start = time.perf_counter()
        try:
            handle = self.core.handle(spec.name, spec.version, spec.label)
        except Exception as exc:
            self._observe(spec.name, "predict", entrypoint, exc, start)
            raise
        try:
            name = inference.predict_signature(
                handle.servable,
                spec.signature_name or DEFAULT_SIGNATURE,
                check_method_name=self.check_method_name,
            )
        except Exception as exc:
            handle.release()
            self._observe(spec.name, "predict", entrypoint, exc, start, handle.id.version)
            raise
        return BoundModel(self, spec.name, entrypoint, start, handle, name)

    def _observe(
        self,
        model_name: str,
        api: str,
        entrypoint: str,
        error: BaseException | None,
        start: float,
        version: int | None = None,
        rows: int = 1,
        executed: bool = True,
    ) -> None:
        """Count one request since ``start``: status ``OK``, the error code's name, or
        ``INTERNAL`` for an error that is not a ``ServingError``. With ``version`` (the
        request reached that version) also the version's inference statistics: ``rows``
        rows, and a model run of its own unless ``executed`` is false (it joined a batch)."""
        if self.metrics is None:
            return
        if version is not None:
            self.metrics.observe_inference(
                model_name,
                version,
                error is None,
                time.perf_counter() - start,
                rows,
                executed,
            )
        if error is None:
            status = "OK"
        elif isinstance(error, ServingError):
            status = error.code.name
        else:
            status = Code.INTERNAL.name
        self.metrics.observe_request(
            model_name, api, entrypoint, status, time.perf_counter() - start
        )

    def classify(
        self, spec: ModelSpec, request_input: input_pb2.Input, *, entrypoint: str = "GRPC"
    ) -> tuple[ServableId, str, classification_pb2.ClassificationResult]:
        """The Classify API on the examples of ``request_input``."""
        return self._on_examples("classify", inference.classify, spec, request_input, entrypoint)

    def regress(
        self, spec: ModelSpec, request_input: input_pb2.Input, *, entrypoint: str = "GRPC"
    ) -> tuple[ServableId, str, regression_pb2.RegressionResult]:
        """The Regress API on the examples of ``request_input``."""
        return self._on_examples("regress", inference.regress, spec, request_input, entrypoint)

    def _on_examples(
        self,
        api: str,
        run: Callable[..., Any],
        spec: ModelSpec,
        request_input: input_pb2.Input,
        entrypoint: str,
    ) -> tuple[ServableId, str, Any]:
        with (
            self._observed(spec.name, api, entrypoint),
            self.core.handle(spec.name, spec.version, spec.label) as handle,
        ):
            signature_name = spec.signature_name or DEFAULT_SIGNATURE
            result = run(
                handle.servable,
                signature_name,
                request_input,
                check_method_name=self.check_method_name,
            )
            return handle.id, signature_name, result

    def multi_inference(self, request: Any) -> Any:
        """MultiInference, as TF Serving runs it: the version the first task's model spec
        names serves every task (the others' versions and labels are not read; their model
        names must be the same, :func:`pyserving.inference.multi_inference` checks);
        without tasks, the empty model spec is refused as any other."""
        tasks = request.tasks
        spec = spec_from_proto(tasks[0].model_spec) if tasks else ModelSpec("")
        with (
            self._observed(spec.name, "multi_inference", "GRPC"),
            self.core.handle(spec.name, spec.version, spec.label) as handle,
        ):
            return inference.multi_inference(
                handle.servable,
                request,
                version=handle.id.version,
                check_method_name=self.check_method_name,
            )

    def metadata(
        self, spec: ModelSpec, fields: Sequence[str] = ("signature_def",)
    ) -> get_model_metadata_pb2.GetModelMetadataResponse:
        """GetModelMetadata; only the ``signature_def`` field exists (as in TF Serving)."""
        if not fields:
            raise InvalidArgument(
                "GetModelMetadataRequest must specify at least one metadata_field"
            )
        for field in fields:
            if field != "signature_def":
                raise InvalidArgument(f"Metadata field {field} is not supported")
        with self.core.handle(spec.name, spec.version, spec.label) as handle:
            response = get_model_metadata_pb2.GetModelMetadataResponse()
            set_model_spec(response.model_spec, handle.id, "")
            response.metadata["signature_def"].Pack(inference.signature_def_map(handle.servable))
            return response

    def list_models(self) -> list[tuple[str, get_model_status_pb2.GetModelStatusResponse]]:
        """Every configured model, sorted by name, with its GetModelStatus answer (empty
        when none of its versions is known yet)."""
        return [(name, _status_or_empty(self, name)) for name in sorted(self.core.model_names())]

    def status(self, spec: ModelSpec) -> get_model_status_pb2.GetModelStatusResponse:
        """GetModelStatus: every known version of the model, or the one asked for."""
        response = get_model_status_pb2.GetModelStatusResponse()
        for state in self.core.model_status(spec.name, spec.version, spec.label):
            fill_version_status(response.model_version_status.add(), state)
        return response


class BoundModel:
    """One predict request's hold on a model version and its resolved signature (see
    :meth:`ModelServing.bind`).

    ``id`` is the version, ``signature_name`` the resolved signature name,
    ``signature_def`` its SignatureDef. The hold ends once: when the run :meth:`predict`
    starts has answered, or, when :meth:`predict` is never called, on leaving the ``with``
    block (a failure raised inside it is counted as the request's failure). Used by one
    thread at a time; it references the servable, so drop it with the request.
    """

    def __init__(
        self,
        serving: ModelServing,
        model_name: str,
        entrypoint: str,
        start: float,
        handle: Any,
        signature_name: str,
    ) -> None:
        self._serving = serving
        self._model_name = model_name
        self._entrypoint = entrypoint
        self._start = start
        self._handle = handle
        self._spent = False  # predict() called, or the hold ended
        self.id: ServableId = handle.id
        self.servable: Any = handle.servable
        self.signature_name = signature_name
        self.signature_def: Any = self.servable.signature_defs[signature_name]

    def __enter__(self) -> BoundModel:
        return self

    def __exit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> None:
        if not self._spent:
            self._spent = True
            self._finish(exc if isinstance(exc, Exception) else None, 1, True)

    def _finish(self, error: BaseException | None, rows: int, executed: bool) -> None:
        """Release the version and count the request (called once)."""
        self._handle.release()
        self._serving._observe(
            self._model_name,
            "predict",
            self._entrypoint,
            error,
            self._start,
            self.id.version,
            rows,
            executed,
        )

    def check_input_aliases(self, aliases: Collection[str]) -> None:
        """Raise the error :meth:`predict` would give inputs named ``aliases`` that do not
        fit the signature (for a front end that has yet to decode their values); nothing
        when they fit or the servable cannot tell without the values."""
        servable = self.servable
        if isinstance(servable, BatchingServable):
            servable = servable.inner
        check = getattr(servable, "check_input_aliases", None)
        if check is not None:
            check(self.signature_name, aliases)

    def predict(
        self, inputs: Mapping[str, np.ndarray], output_filter: Sequence[str] = ()
    ) -> concurrent.futures.Future[PredictResult]:
        """Run the signature on ``inputs``; ``output_filter`` names the outputs to answer
        (empty: all). Call it once.

        A servable without batching runs here and the future comes back done; a
        :class:`~pyserving.batching.BatchingServable` only queues the request for its
        batch (cancelling the future takes it out of the batch; callbacks of a pending
        future run on a batch thread). Every error is the future's exception, nothing is
        raised.
        """
        if self._spent:
            raise RuntimeError("BoundModel.predict called twice")
        self._spent = True
        rows = _rows(inputs)
        keys = list(output_filter) if output_filter else None
        servable = self.servable
        name = self.signature_name
        if not isinstance(servable, BatchingServable):
            try:
                outputs = servable.run(name, inputs, keys)
            except Exception as exc:
                self._finish(exc, rows, True)
                return settled_future(exception=exc)
            self._finish(None, rows, True)
            return settled_future(PredictResult(self.id, name, outputs))
        model_id = self.id

        def wrap(outputs: dict[str, np.ndarray]) -> PredictResult:
            return PredictResult(model_id, name, outputs)

        def on_done(error: BaseException | None) -> None:
            self._finish(error, rows, False)

        # The request's own batch future, its result wrapped as it is set: no second
        # future chained onto it. Cancelling it takes the request out of its batch.
        try:
            return servable.run_future(name, inputs, keys, wrap=wrap, on_done=on_done)
        except Exception as exc:  # refused at once (queue full, closing): on_done ran
            return settled_future(exception=exc)


def _rows(inputs: Mapping[str, Any]) -> int:
    """A request's batch size: the first dimension of its first input that has one."""
    for array in inputs.values():
        shape = getattr(array, "shape", ())
        if shape:
            return int(shape[0])
    return 1


def _status_or_empty(
    serving: ModelServing, name: str
) -> get_model_status_pb2.GetModelStatusResponse:
    try:
        return serving.status(ModelSpec(name))
    except NotFound:  # configured, no version known yet
        return get_model_status_pb2.GetModelStatusResponse()


def spec_from_proto(model_spec: Any) -> ModelSpec:
    """A ModelSpec from ``tensorflow.serving.ModelSpec``."""
    choice = model_spec.WhichOneof("version_choice")
    version = model_spec.version.value if choice == "version" else None
    label = model_spec.version_label if choice == "version_label" else None
    return ModelSpec(model_spec.name, version, label, model_spec.signature_name)


def set_model_spec(target: Any, id: ServableId, signature_name: str) -> None:
    """Echo the resolved name, version and signature into a response's model_spec."""
    target.name = id.name
    target.version.value = id.version
    target.signature_name = signature_name


_STATE_NUMBER = {
    ManagerState.START: 10,
    ManagerState.LOADING: 20,
    ManagerState.AVAILABLE: 30,
    ManagerState.UNLOADING: 40,
    ManagerState.END: 50,
}


def fill_version_status(target: Any, state: ServableState) -> None:
    """Fill a ``ModelVersionStatus`` from a monitor state (TF Serving's numbering)."""
    target.version = state.id.version
    target.state = _STATE_NUMBER[state.state]
    error: ServingError | None = state.error
    target.status.error_code = int(error.code) if error is not None else int(Code.OK)
    target.status.error_message = error.message if error is not None else ""
