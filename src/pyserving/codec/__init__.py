"""Tensor conversions at the wire boundary, independent of HTTP and gRPC transports.

- :mod:`~pyserving.codec.json_predict`: JSON predict bodies -> ``numpy`` arrays for a
  signature (TF Serving's row ``instances`` and columnar ``inputs`` forms), and arrays ->
  JSON answers (``predictions`` / ``outputs``).
- :mod:`~pyserving.codec.json_examples`: JSON classify/regress bodies -> a
  ``tensorflow.serving.Input`` of ``tf.Example`` protos, and ``ClassificationResult`` /
  ``RegressionResult`` -> JSON.
- :mod:`~pyserving.codec.tensor_proto`: ``TensorProto`` <-> ``numpy``.
- :mod:`~pyserving.codec.dtypes`: TensorFlow dtypes, their NumPy counterparts and names.
- :mod:`~pyserving.codec.tf_json`: TF Serving's JSON dialect: how documents are parsed, how
  numbers are printed, how values are quoted in error messages.

Every rule and error message follows TF Serving's ``tensorflow_serving/util/json_tensor.cc``
(2.18 and later) and TensorFlow's ``Tensor::FromProto`` / ``Tensor::AsProtoField``. Errors are
raised as :class:`~pyserving.errors.ServingError` subclasses (almost always
``InvalidArgument``).

Numbers in requests: a float input takes any JSON number, rounded to float32 (``1435774380``
becomes ``1435774336``; beyond float32's range, ``+/-Infinity``), a double input any number;
integer inputs take integers within their range.

Hot paths use orjson and vectorized numpy; per-element Python work is limited to strings,
error reporting and rare numeric edge cases.
"""

from pyserving.codec.dtypes import datatype_for_numpy, dtype_name, numpy_dtype
from pyserving.codec.json_examples import (
    format_classify_response,
    format_regress_response,
    parse_examples_request,
)
from pyserving.codec.json_predict import (
    DEFAULT_SIGNATURE_KEY,
    JsonFormat,
    format_predict_response,
    get_signature_name,
    json_to_ndarray,
    parse_json_object,
    parse_predict_request,
)
from pyserving.codec.tensor_proto import ndarray_to_tensor_proto, tensor_proto_to_ndarray
from pyserving.codec.tf_json import loads, tf_float_text

__all__ = [
    "DEFAULT_SIGNATURE_KEY",
    "JsonFormat",
    "datatype_for_numpy",
    "dtype_name",
    "format_classify_response",
    "format_predict_response",
    "format_regress_response",
    "get_signature_name",
    "json_to_ndarray",
    "loads",
    "ndarray_to_tensor_proto",
    "numpy_dtype",
    "parse_examples_request",
    "parse_json_object",
    "parse_predict_request",
    "tensor_proto_to_ndarray",
    "tf_float_text",
]
