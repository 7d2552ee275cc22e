"""The one request path shared by the REST and gRPC front ends.

Each function takes a servable the caller already holds (through a scoped ServableHandle)
and does what TF Serving's ``predict_util.cc``, ``classifier.cc``, ``regressor.cc``,
``multi_inference.cc`` and ``get_model_metadata_impl.cc`` do between "the request is parsed"
and "the response is built": signature resolution and validation, example serialization,
running the servable, and checking/shaping its outputs. Nothing here knows about HTTP,
JSON or gRPC; errors are :class:`~pyserving.errors.ServingError` subclasses with TF Serving's
messages.

Method-name checking follows ``--enable_signature_method_name_check`` (off by default, as in
TF Serving): when off, classify/regress accept any signature whose inputs and outputs have
the classify/regress layout, which is how TF2 exports (whose signatures are all labelled
``tensorflow/serving/predict``) are classified and regressed.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import numpy as np
from tensorflow.core.framework import types_pb2
from tensorflow.core.protobuf import meta_graph_pb2
from tensorflow_serving.apis import (
    classification_pb2,
    get_model_metadata_pb2,
    inference_pb2,
    input_pb2,
    regression_pb2,
)

from pyserving.codec import (
    DEFAULT_SIGNATURE_KEY,
    datatype_for_numpy,
    dtype_name,
    format_classify_response,
    format_regress_response,
)
from pyserving.errors import (
    FailedPrecondition,
    Internal,
    InvalidArgument,
    ServingError,
    Unimplemented,
)

__all__ = [
    "CLASSIFY_METHOD_NAME",
    "DEFAULT_SIGNATURE_KEY",
    "PREDICT_METHOD_NAME",
    "REGRESS_METHOD_NAME",
    "Servable",
    "SignatureNotFound",
    "classify",
    "find_signature",
    "format_classify_response",
    "format_regress_response",
    "multi_inference",
    "predict",
    "predict_signature",
    "regress",
    "serialized_examples",
    "signature_def_map",
]

PREDICT_METHOD_NAME = "tensorflow/serving/predict"
CLASSIFY_METHOD_NAME = "tensorflow/serving/classify"
REGRESS_METHOD_NAME = "tensorflow/serving/regress"

CLASSIFY_INPUTS = "inputs"
CLASSIFY_OUTPUT_CLASSES = "classes"
CLASSIFY_OUTPUT_SCORES = "scores"
REGRESS_INPUTS = "inputs"
REGRESS_OUTPUTS = "outputs"


class Servable(Protocol):
    """What the request path needs from a loaded model (e.g. ``SavedModelServable``)."""

    @property
    def signature_defs(self) -> Mapping[str, meta_graph_pb2.SignatureDef]:
        """The servable signatures by key."""
        ...

    @property
    def meta_graph(self) -> meta_graph_pb2.MetaGraphDef:
        """The MetaGraphDef (its ``signature_def`` map is what metadata reports)."""
        ...

    def run(
        self,
        signature_name: str,
        inputs: Mapping[str, np.ndarray],
        output_keys: Sequence[str] | None = None,
    ) -> dict[str, np.ndarray]:
        """Run a signature; see ``SavedModelServable.run``."""
        ...


class SignatureNotFound(FailedPrecondition):
    """A predict request names a signature the model does not have.

    The message is TF Serving's gRPC one (``Serving signature key "x" not found.``,
    FAILED_PRECONDITION); its REST API reports the same case as INVALID_ARGUMENT
    ``Serving signature name: "x" not found in signature def``: a front end rewords it
    from ``signature_name``, the resolved name.
    """

    def __init__(self, signature_name: str) -> None:
        super().__init__(f'Serving signature key "{signature_name}" not found.')
        self.signature_name = signature_name


def _resolve(signature_name: str) -> str:
    return signature_name or DEFAULT_SIGNATURE_KEY


def _shape_text(shape: Sequence[int]) -> str:
    """``TensorShape::DebugString``: ``[2,1]``."""
    return "[" + ",".join(str(d) for d in shape) + "]"


def _dtype_enum_name(array: np.ndarray) -> str:
    """``DataType_Name`` of an output array: ``DT_FLOAT``..."""
    try:
        return str(types_pb2.DataType.Name(datatype_for_numpy(array.dtype)))
    except (ServingError, ValueError):
        return str(array.dtype)


# --------------------------------------------------------------------------------------------
# predict
# --------------------------------------------------------------------------------------------


def predict(
    servable: Servable,
    signature_name: str,
    inputs: Mapping[str, np.ndarray],
    output_filter: Sequence[str] = (),
    *,
    check_method_name: bool = False,
) -> tuple[str, dict[str, np.ndarray]]:
    """Run a Predict request (``RunPredict``).

    Args:
        signature_name: ``""`` means ``serving_default``.
        inputs: one array per signature input alias (inputs with signature defaults may be
            omitted).
        output_filter: output aliases to return; empty returns every output.
        check_method_name: ``--enable_signature_method_name_check``.

    Returns:
        ``(resolved signature name, {output alias: array})``.

    Raises:
        SignatureNotFound: ``Serving signature key "x" not found.``
        Internal: the method-name check is on and the signature is not predict, classify
            or regress.
        InvalidArgument: inputs that do not match the signature, unknown or repeated
            ``output_filter`` aliases, wrong dtypes, TF argument errors.
    """
    name = predict_signature(servable, signature_name, check_method_name=check_method_name)
    outputs = servable.run(name, inputs, list(output_filter) if output_filter else None)
    return name, outputs


def predict_signature(
    servable: Servable, signature_name: str, *, check_method_name: bool = False
) -> str:
    """The checks :func:`predict` makes before running: the resolved signature name.

    Raises :class:`SignatureNotFound` / ``Internal`` as :func:`predict` does.
    """
    name = _resolve(signature_name)
    signature = servable.signature_defs.get(name)
    if signature is None:
        raise SignatureNotFound(name)
    if check_method_name and signature.method_name not in (
        PREDICT_METHOD_NAME,
        CLASSIFY_METHOD_NAME,
        REGRESS_METHOD_NAME,
    ):
        raise Internal(
            "Expected prediction signature method_name to be one of "
            f"{{{PREDICT_METHOD_NAME}, {CLASSIFY_METHOD_NAME}, {REGRESS_METHOD_NAME}}}. "
            f"Was: {signature.method_name}"
        )
    return name


def find_signature(servable: Servable, signature_name: str) -> meta_graph_pb2.SignatureDef:
    """The SignatureDef a predict request names (``""`` = ``serving_default``), e.g. to
    decode its inputs before calling :func:`predict`.

    Raises:
        SignatureNotFound: ``Serving signature key "x" not found.`` (gRPC Predict's error;
            the REST API words it differently, see :class:`SignatureNotFound`).
    """
    name = _resolve(signature_name)
    signature = servable.signature_defs.get(name)
    if signature is None:
        raise SignatureNotFound(name)
    return signature


# --------------------------------------------------------------------------------------------
# classify / regress
# --------------------------------------------------------------------------------------------


def serialized_examples(request_input: input_pb2.Input) -> np.ndarray:
    """``InputToSerializedExampleTensor``: a 1-D object array of serialized ``tf.Example``.

    For an ``ExampleListWithContext`` each entry is the serialized context followed by the
    serialized example (parsing that concatenation merges the two, example features winning).

    Raises:
        InvalidArgument: ``Input is empty.`` when there are no examples.
    """
    kind = request_input.WhichOneof("kind")
    if kind == "example_list":
        serialized = [e.SerializeToString() for e in request_input.example_list.examples]
    elif kind == "example_list_with_context":
        with_context = request_input.example_list_with_context
        context = with_context.context.SerializeToString()
        serialized = [context + e.SerializeToString() for e in with_context.examples]
    else:
        serialized = []
    if not serialized:
        raise InvalidArgument("Input is empty.")
    array = np.empty(len(serialized), dtype=object)
    array[:] = serialized
    return array


def _classification_layout(
    signature: meta_graph_pb2.SignatureDef, check_method_name: bool
) -> list[str]:
    """``PreProcessClassification``: validate; returns the output aliases to fetch."""
    if check_method_name and signature.method_name != CLASSIFY_METHOD_NAME:
        raise InvalidArgument(
            f"Expected classification signature method_name to be {CLASSIFY_METHOD_NAME}. "
            f"Was: {signature.method_name}"
        )
    if len(signature.inputs) != 1:
        raise InvalidArgument("Expected one input Tensor.")
    if len(signature.outputs) not in (1, 2):
        raise InvalidArgument(f"Expected one or two output Tensors, found {len(signature.outputs)}")
    if CLASSIFY_INPUTS not in signature.inputs:
        raise InvalidArgument(f"No classification inputs found in SignatureDef: {signature}")
    outputs = [
        a for a in (CLASSIFY_OUTPUT_CLASSES, CLASSIFY_OUTPUT_SCORES) if a in signature.outputs
    ]
    if not outputs:
        raise InvalidArgument(
            "Expected classification signature outputs to contain at least one of "
            f'"{CLASSIFY_OUTPUT_CLASSES}" or "{CLASSIFY_OUTPUT_SCORES}". '
            f"Signature was: {signature}"
        )
    return outputs


def _regression_layout(signature: meta_graph_pb2.SignatureDef, check_method_name: bool) -> None:
    """``PreProcessRegression``."""
    if check_method_name and signature.method_name != REGRESS_METHOD_NAME:
        raise InvalidArgument(
            f"Expected regression signature method_name to be {REGRESS_METHOD_NAME}. "
            f"Was: {signature.method_name}"
        )
    if len(signature.inputs) != 1:
        raise InvalidArgument("Expected one input Tensor.")
    if len(signature.outputs) != 1:
        raise InvalidArgument("Expected one output Tensor.")
    if REGRESS_INPUTS not in signature.inputs:
        raise InvalidArgument(f"No regression inputs found in SignatureDef: {signature}")
    if REGRESS_OUTPUTS not in signature.outputs:
        raise InvalidArgument(f"No regression outputs found in SignatureDef: {signature}")


def _lookup(servable: Servable, name: str) -> meta_graph_pb2.SignatureDef:
    signature = servable.signature_defs.get(name)
    if signature is None:
        raise InvalidArgument(f"No signature was found with the name: {name}")
    return signature


def _classification_signature(
    servable: Servable, name: str, check_method_name: bool
) -> tuple[meta_graph_pb2.SignatureDef, list[str]]:
    """``GetClassificationSignatureDef`` followed by ``PreProcessClassification``."""
    signature = _lookup(servable, name)
    return signature, _classification_layout(signature, check_method_name)


def _regression_signature(
    servable: Servable, name: str, check_method_name: bool
) -> meta_graph_pb2.SignatureDef:
    signature = _lookup(servable, name)
    _regression_layout(signature, check_method_name)
    return signature


def _label(value: Any) -> Any:
    if isinstance(value, bytes):
        try:
            value.decode("utf-8")
        except UnicodeDecodeError:
            return value.decode("utf-8", errors="replace")
    return value


def _classification_result(
    num_examples: int, outputs: Mapping[str, np.ndarray]
) -> classification_pb2.ClassificationResult:
    """``PostProcessClassificationResult``."""
    classes = outputs.get(CLASSIFY_OUTPUT_CLASSES)
    scores = outputs.get(CLASSIFY_OUTPUT_SCORES)
    if classes is not None:
        if classes.ndim != 2:
            raise InvalidArgument(
                "Expected Tensor shape: [batch_size num_classes] but got "
                f"{_shape_text(classes.shape)}"
            )
        if classes.dtype.kind not in "OSU":
            raise InvalidArgument(
                f"Expected classes Tensor of DT_STRING. Got: {_dtype_enum_name(classes)}"
            )
        if classes.shape[0] != num_examples:
            raise InvalidArgument(
                f"Expected classes output batch size of {num_examples}. Got: {classes.shape[0]}"
            )
    if scores is not None:
        if scores.ndim != 2:
            raise InvalidArgument(
                "Expected Tensor shape: [batch_size num_classes] but got "
                f"{_shape_text(scores.shape)}"
            )
        if scores.dtype != np.float32:
            raise InvalidArgument(
                f"Expected scores Tensor of DT_FLOAT. Got: {_dtype_enum_name(scores)}"
            )
        if scores.shape[0] != num_examples:
            raise InvalidArgument(
                f"Expected scores output batch size of {num_examples}. Got: {scores.shape[0]}"
            )
    if classes is not None and scores is not None and classes.shape[1] != scores.shape[1]:
        raise InvalidArgument(
            "Tensors class and score should match in dim_size(1). Got "
            f"{classes.shape[1]} vs. {scores.shape[1]}"
        )
    reference = classes if classes is not None else scores
    num_classes = 0 if reference is None else reference.shape[1]
    label_rows = classes.tolist() if classes is not None else None
    score_rows = scores.tolist() if scores is not None else None
    result = classification_pb2.ClassificationResult()
    Class = classification_pb2.Class
    for i in range(num_examples):
        entries = []
        for c in range(num_classes):
            entry = Class()
            if label_rows is not None:
                entry.label = _label(label_rows[i][c])
            if score_rows is not None:
                entry.score = score_rows[i][c]
            entries.append(entry)
        result.classifications.add().classes.extend(entries)
    return result


def _regression_result(num_examples: int, output: np.ndarray) -> regression_pb2.RegressionResult:
    """``PostProcessRegressionResult``."""
    if not (output.ndim == 1 or (output.ndim == 2 and output.shape[1] == 1)):
        raise InvalidArgument(
            "Expected output Tensor shape to be either [batch_size] or [batch_size, 1] but "
            f"got {_shape_text(output.shape)}"
        )
    if num_examples != output.shape[0]:
        raise InvalidArgument(
            "Input batch size did not match output batch size: "
            f"{num_examples} vs. {output.shape[0]}"
        )
    if output.dtype != np.float32:
        raise InvalidArgument(
            f"Expected output Tensor of DT_FLOAT.  Got: {_dtype_enum_name(output)}"
        )
    if output.size != num_examples:
        raise InvalidArgument(
            f"Expected output batch size to be {num_examples}.  Got: {output.size}"
        )
    result = regression_pb2.RegressionResult()
    Regression = regression_pb2.Regression
    result.regressions.extend(Regression(value=v) for v in output.ravel().tolist())
    return result


def classify(
    servable: Servable,
    signature_name: str,
    input_proto: input_pb2.Input,
    *,
    check_method_name: bool = False,
) -> classification_pb2.ClassificationResult:
    """Run a Classify request (``RunClassify``).

    The signature must take one string tensor ``inputs`` (the serialized examples) and
    output ``classes`` (string, [batch, num_classes]) and/or ``scores`` (float, same shape).

    Raises:
        InvalidArgument: ``No signature was found with the name: x``, a signature without
            the classify layout (or, with ``check_method_name``, not labelled classify),
            ``Input is empty.``, outputs of the wrong shape/type.
        ServingError: errors from running the model.
    """
    name = _resolve(signature_name)
    _signature, output_keys = _classification_signature(servable, name, check_method_name)
    examples = serialized_examples(input_proto)
    outputs = servable.run(name, {CLASSIFY_INPUTS: examples}, output_keys)
    return _classification_result(len(examples), outputs)


def regress(
    servable: Servable,
    signature_name: str,
    input_proto: input_pb2.Input,
    *,
    check_method_name: bool = False,
) -> regression_pb2.RegressionResult:
    """Run a Regress request (``RunRegress``).

    The signature must take one string tensor ``inputs`` and output one float tensor
    ``outputs`` of shape [batch] or [batch, 1].

    Raises:
        InvalidArgument: as :func:`classify`, with the regression messages.
        ServingError: errors from running the model.
    """
    name = _resolve(signature_name)
    _regression_signature(servable, name, check_method_name)
    examples = serialized_examples(input_proto)
    outputs = servable.run(name, {REGRESS_INPUTS: examples}, [REGRESS_OUTPUTS])
    return _regression_result(len(examples), outputs[REGRESS_OUTPUTS])


def _check_example_feeds(input_tensors: Mapping[str, int]) -> None:
    """Raise the error ``Session::Run`` gives when the serialized examples (a string tensor)
    are fed to every tensor of ``input_tensors`` (name -> DataType) and one of them is not a
    string tensor: feeds are numbered in the sorted order of their names."""
    for index, name in enumerate(sorted(input_tensors)):
        dtype = input_tensors[name]
        if dtype != types_pb2.DT_STRING:
            raise InvalidArgument(
                f"Expects arg[{index}] to be {dtype_name(dtype)} but string is provided"
            )


def multi_inference(
    servable: Servable,
    request: inference_pb2.MultiInferenceRequest,
    *,
    version: int | None = None,
    check_method_name: bool = False,
) -> inference_pb2.MultiInferenceResponse:
    """Run a MultiInference request: several classify/regress tasks over one Input.

    Every task is validated before anything runs (same model name, no repeated signature,
    classify/regress method names, signatures of the right layout; with
    ``check_method_name`` each signature must also be labelled with its task's method).

    The signatures need not share their input tensor (TF Serving's rule since it serves TF2
    exports, where each signature function has its own placeholder): the one batch of
    serialized examples is fed to every task's input tensor. An input tensor that is not a
    string tensor therefore cannot take it, and the request fails as TF Serving's single
    ``Session::Run`` over the sorted set of input tensors does, with ``Expects arg[i] to be
    float but string is provided`` (``i`` the tensor's position in that sorted set). The
    tasks then run one after another on the same examples. Each result's ``model_spec`` is
    its task's model name and signature name (``serving_default`` when the task left it
    empty), with ``version`` when given (TF Serving's ``MakeModelSpec``).

    Raises:
        InvalidArgument: TF Serving's messages for invalid task lists, ``Input is empty.``,
            an input tensor that is not a string tensor, outputs of the wrong shape/type.
        Unimplemented: a task whose ``method_name`` is neither classify nor regress.
        ServingError: errors from running the model.
    """
    model_name = ""
    input_tensors: dict[str, int] = {}  # tensor name -> DataType, of every task's input
    seen: set[str] = set()
    plans: list[tuple[Any, str, list[str] | None]] = []
    for task in request.tasks:
        if not task.model_spec.name:
            raise InvalidArgument("Found ModelSpec with an empty model name.")
        if not model_name:
            model_name = task.model_spec.name
        elif model_name != task.model_spec.name:
            raise InvalidArgument(
                "All ModelSpecs in a MultiInferenceRequest must access the same model name."
            )
        name = _resolve(task.model_spec.signature_name)
        if name in seen:
            raise InvalidArgument(f"Duplicate evaluation of signature: {name}")
        seen.add(name)
        signature = servable.signature_defs.get(name)
        if signature is None:
            raise InvalidArgument(f"Requested signature not found in model graph: {name}")
        if task.method_name == CLASSIFY_METHOD_NAME:
            output_keys: list[str] | None = _classification_layout(signature, check_method_name)
            tensor = signature.inputs[CLASSIFY_INPUTS]
        elif task.method_name == REGRESS_METHOD_NAME:
            _regression_layout(signature, check_method_name)
            output_keys = None
            tensor = signature.inputs[REGRESS_INPUTS]
        else:
            raise Unimplemented(f"Unsupported signature method_name: {task.method_name}")
        input_tensors[tensor.name] = tensor.dtype
        plans.append((task, name, output_keys))
    if not plans:
        raise InvalidArgument("MultiInferenceRequest must contain at least one task.")

    examples = serialized_examples(request.input)
    _check_example_feeds(input_tensors)
    response = inference_pb2.MultiInferenceResponse()
    for task, name, output_keys in plans:
        result = response.results.add()
        result.model_spec.name = task.model_spec.name
        result.model_spec.signature_name = name
        if version is not None:
            result.model_spec.version.value = version
        if output_keys is not None:
            outputs = servable.run(name, {CLASSIFY_INPUTS: examples}, output_keys)
            result.classification_result.CopyFrom(_classification_result(len(examples), outputs))
        else:
            outputs = servable.run(name, {REGRESS_INPUTS: examples}, [REGRESS_OUTPUTS])
            result.regression_result.CopyFrom(
                _regression_result(len(examples), outputs[REGRESS_OUTPUTS])
            )
    return response


# --------------------------------------------------------------------------------------------
# metadata
# --------------------------------------------------------------------------------------------


def signature_def_map(servable: Servable) -> get_model_metadata_pb2.SignatureDefMap:
    """The ``signature_def`` metadata TF Serving's GetModelMetadata returns.

    This is the MetaGraphDef's complete map, ``__saved_model_init_op`` included (TF Serving
    reports it for TF2 exports), not only the servable signatures.
    """
    result = get_model_metadata_pb2.SignatureDefMap()
    for key, signature in servable.meta_graph.signature_def.items():
        result.signature_def[key].CopyFrom(signature)
    return result
