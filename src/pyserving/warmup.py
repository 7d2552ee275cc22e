"""Model warmup: replay recorded requests before a version becomes AVAILABLE.

TF Serving's format: ``<version>/assets.extra/tf_serving_warmup_requests``, a TFRecord file of
``tensorflow.serving.PredictionLog`` records (predict, classify, regress or multi_inference
logs; at most 1000). Each record is replayed ``num_request_iterations`` times (at least once)
through the same request path real requests take, after the version is loaded and before it
serves. Any failure fails the load of that version (visible in model status); a version
without the file needs no warmup.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterator
from typing import Any

from tensorflow_serving.apis import prediction_log_pb2

from pyserving.core.loader import Loader, ResourceEstimate
from pyserving.errors import DataLoss, InvalidArgument, ServingError

log = logging.getLogger(__name__)

WARMUP_FILE = os.path.join("assets.extra", "tf_serving_warmup_requests")
MAX_WARMUP_RECORDS = 1000


def read_tfrecords(path: str) -> Iterator[bytes]:
    """The records of a TFRecord file, read by TensorFlow's reader (lengths and data
    checked against their CRCs).

    Raises ``DataLoss`` for a file that is not in the format, or is truncated or corrupt,
    with TensorFlow's reason (as TF Serving refuses it).
    """
    import tensorflow as tf

    def refused(reason: str) -> DataLoss:
        return DataLoss(
            f"Failed to read warmup data in {path}: {reason}. Please verify your warmup "
            "data is in TFRecord format."
        )

    size = os.path.getsize(path)
    offset = 0  # bytes of whole records read
    try:
        for record in tf.data.TFRecordDataset(path):
            data = record.numpy()
            offset += 12 + len(data) + 4  # length, its CRC, the data, its CRC
            yield data
    except tf.errors.OpError as exc:
        raise refused(exc.message) from None
    if offset != size:  # (TensorFlow's reader ends quietly at a header cut short)
        raise refused(f"truncated record at {offset}")


def load_warmup_records(version_path: str) -> list[Any]:
    """The PredictionLogs of a version (empty when it has no warmup file)."""
    path = os.path.join(version_path, WARMUP_FILE)
    if not os.path.isfile(path):
        return []
    records = []
    for i, data in enumerate(read_tfrecords(path)):
        if i >= MAX_WARMUP_RECORDS:
            raise InvalidArgument(
                f"Number of warmup records exceeds the maximum ({MAX_WARMUP_RECORDS}) at {path}"
            )
        record = prediction_log_pb2.PredictionLog()
        try:
            record.ParseFromString(data)
        except Exception as exc:
            raise DataLoss(f"Failed to parse warmup record {i} in {path}: {exc}") from None
        records.append(record)
    return records


def replay(servable: Any, record: Any) -> None:
    """Run one PredictionLog's request against ``servable`` (raises what the request raises)."""
    from pyserving import codec, inference

    kind = record.WhichOneof("log_type")
    if kind == "predict_log":
        request = record.predict_log.request
        inputs = {k: codec.tensor_proto_to_ndarray(v) for k, v in request.inputs.items()}
        inference.predict(
            servable, request.model_spec.signature_name, inputs, list(request.output_filter)
        )
    elif kind == "classify_log":
        request = record.classify_log.request
        inference.classify(servable, request.model_spec.signature_name, request.input)
    elif kind == "regress_log":
        request = record.regress_log.request
        inference.regress(servable, request.model_spec.signature_name, request.input)
    elif kind == "multi_inference_log":
        inference.multi_inference(servable, record.multi_inference_log.request)
    else:
        raise InvalidArgument(f"Unsupported log_type for warmup: {kind}")


class WarmupLoader(Loader):
    """Wraps a Loader: after it loads, replays the version's warmup records.

    ``observe(seconds)`` is told how long a successful warmup took.
    """

    def __init__(
        self,
        inner: Loader,
        version_path: str,
        iterations: int = 1,
        observe: Callable[[float], None] | None = None,
    ) -> None:
        self.inner = inner
        self.version_path = version_path
        self.iterations = max(1, iterations)
        self._observe = observe

    def estimate_resources(self) -> ResourceEstimate:
        return self.inner.estimate_resources()

    def load(self) -> None:
        self.inner.load()
        try:
            self._warm_up()
        except BaseException:
            self.inner.unload()
            raise

    def _warm_up(self) -> None:
        records = load_warmup_records(self.version_path)
        if not records:
            return
        start = time.perf_counter()
        servable = self.inner.servable()
        for i, record in enumerate(records):
            for _ in range(self.iterations):
                try:
                    replay(servable, record)
                except ServingError as exc:
                    raise type(exc)(
                        f"Warmup record {i} in {os.path.join(self.version_path, WARMUP_FILE)} "
                        f"failed: {exc.message}"
                    ) from None
        elapsed = time.perf_counter() - start
        log.info(
            "Finished reading warmup data for model at %s; %d records x %d iterations in %.3fs",
            self.version_path,
            len(records),
            self.iterations,
            elapsed,
        )
        if self._observe is not None:
            self._observe(elapsed)

    def unload(self) -> None:
        self.inner.unload()

    def servable(self) -> Any:
        return self.inner.servable()
