"""What the non-TensorFlow platforms share: signatures from names, dtypes and shapes, a
servable around plain Python callables, and a loader around a load function.

:class:`ModelServable` *is* a :class:`~pyserving.platforms.tensorflow.SavedModelServable`
(as the TFLite servable is) whose runner calls ``fn(inputs) -> outputs`` on NumPy arrays: its
``signature_defs`` and ``meta_graph`` are SignatureDef protos built from :class:`SignatureSpec`,
and ``run`` does the same request checks (missing or extra inputs, dtypes, unknown outputs,
with TF Serving's messages). Metadata, V1 and V2 predict, batching and warmup therefore work
unchanged for every platform.

Errors raised by a model's code: ``ServingError`` passes through; ``ValueError`` is
``INVALID_ARGUMENT`` with its message; anything else is ``INTERNAL`` with its type and message,
logged with its traceback. The server keeps serving either way.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from tensorflow.core.protobuf import meta_graph_pb2

from pyserving.codec import datatype_for_numpy, dtype_name, numpy_dtype
from pyserving.codec.json_predict import shape_text
from pyserving.core.loader import HeldServableLoader, ResourceEstimate
from pyserving.errors import FailedPrecondition, Internal, InvalidArgument, ServingError
from pyserving.platforms.tensorflow.servable import RunFn, SavedModelServable

log = logging.getLogger(__name__)

PREDICT_METHOD_NAME = "tensorflow/serving/predict"
DEFAULT_SIGNATURE_KEY = "serving_default"
_DT_STRING = 7
_DT_INVALID = 0

#: One signature's computation: input alias -> array in, output alias -> array(-like) out.
ModelFn = Callable[[dict[str, np.ndarray]], Mapping[str, Any]]


@dataclass(frozen=True)
class TensorSpec:
    """One tensor of a signature: a NumPy dtype (``str``/``bytes``/``object`` = string;
    ``None`` = any: an input takes the dtype the request gives, shown as ``DT_INVALID``) and
    a shape (-1 for a dimension of any size; ``None`` = unknown rank)."""

    dtype: Any
    shape: tuple[int, ...] | None = None


@dataclass(frozen=True)
class SignatureSpec:
    """A signature's inputs and outputs by alias, and its method name."""

    inputs: Mapping[str, TensorSpec]
    outputs: Mapping[str, TensorSpec]
    method_name: str = PREDICT_METHOD_NAME
    extra: Mapping[str, Any] = field(default_factory=dict)


def tensor_spec(value: Any) -> TensorSpec:
    """A :class:`TensorSpec` from itself, ``{"dtype": ..., "shape": [...]}``, a
    ``(dtype, shape)`` pair or a bare dtype. Raises ``ValueError`` for anything else."""
    if isinstance(value, TensorSpec):
        return value
    if isinstance(value, Mapping):
        shape = value.get("shape")
        return TensorSpec(
            value.get("dtype"), None if shape is None else tuple(int(d) for d in shape)
        )
    if isinstance(value, tuple) and len(value) == 2:
        dtype, shape = value
        return TensorSpec(dtype, None if shape is None else tuple(int(d) for d in shape))
    return TensorSpec(value)


def signature_spec(value: Any) -> SignatureSpec:
    """A :class:`SignatureSpec` from itself or ``{"inputs": {...}, "outputs": {...}}``."""
    if isinstance(value, SignatureSpec):
        return value
    if not isinstance(value, Mapping) or "inputs" not in value or "outputs" not in value:
        raise ValueError("a signature is a mapping with 'inputs' and 'outputs'")
    return SignatureSpec(
        {str(k): tensor_spec(v) for k, v in value["inputs"].items()},
        {str(k): tensor_spec(v) for k, v in value["outputs"].items()},
        str(value.get("method_name", PREDICT_METHOD_NAME)),
    )


def datatype(dtype: Any) -> int:
    """TensorFlow's DataType enum for a NumPy dtype-like (strings -> DT_STRING; ``None``,
    any dtype -> DT_INVALID)."""
    if dtype is None:
        return 0
    if dtype in (str, bytes, object, "string"):
        return _DT_STRING
    np_dtype = np.dtype(dtype)
    if np_dtype.kind in "OSU":
        return _DT_STRING
    return int(datatype_for_numpy(np_dtype))


def tensor_info(name: str, spec: TensorSpec) -> meta_graph_pb2.TensorInfo:
    """A TensorInfo named ``name`` with ``spec``'s dtype and shape."""
    info = meta_graph_pb2.TensorInfo(name=name, dtype=datatype(spec.dtype))
    if spec.shape is None:
        info.tensor_shape.unknown_rank = True
    else:
        for size in spec.shape:
            info.tensor_shape.dim.add().size = int(size)
    return info


def signature_def(spec: SignatureSpec) -> meta_graph_pb2.SignatureDef:
    """The SignatureDef of ``spec`` (tensor names are the aliases)."""
    signature = meta_graph_pb2.SignatureDef(method_name=spec.method_name)
    for alias, tensor in spec.inputs.items():
        signature.inputs[alias].CopyFrom(tensor_info(alias, tensor))
    for alias, tensor in spec.outputs.items():
        signature.outputs[alias].CopyFrom(tensor_info(alias, tensor))
    return signature


def as_output(value: Any) -> np.ndarray:
    """An output value as the request path expects it: an ndarray of a canonical NumPy dtype,
    text as object arrays of UTF-8 ``bytes`` (as TensorFlow returns strings)."""
    array = value if type(value) is np.ndarray else np.asarray(value)
    if array.dtype.kind in "iuf":
        # Some runtimes (onnxruntime) answer int64 as ``longlong``: the same layout as
        # ``int64`` but a distinct scalar type that JSON encoders do not know.
        canonical = np.dtype(array.dtype.str)
        if canonical.type is not array.dtype.type:
            array = array.view(canonical)
    if array.dtype.kind == "U":
        flat = np.empty(array.size, dtype=object)
        flat[:] = [s.encode("utf-8") for s in array.ravel().tolist()]
        return flat.reshape(array.shape)
    if array.dtype.kind == "O":
        values = array.ravel().tolist()
        if not all(type(v) is bytes for v in values):
            texts = []
            for v in values:
                if isinstance(v, bytes):
                    texts.append(v)
                elif isinstance(v, str):
                    texts.append(v.encode("utf-8"))
                else:
                    numbers = _numeric(values)
                    if numbers is not None:  # numbers held as objects (pandas)
                        return numbers.reshape(array.shape)
                    raise Internal(  # None, dicts, lists...: no tensor holds them
                        f"A model output holds {type(v).__name__} values; outputs hold "
                        "numbers, booleans, strings or bytes"
                    )
            flat = np.empty(len(texts), dtype=object)
            flat[:] = texts
            return flat.reshape(array.shape)
    return array


def _numeric(values: list[Any]) -> np.ndarray | None:
    """``values`` as an array of numbers or booleans, or None when they are not all such."""
    if not all(isinstance(v, (bool, int, float, np.number, np.bool_)) for v in values):
        return None
    try:
        numbers = np.array(values)
    except (ValueError, OverflowError, TypeError):
        return None
    return numbers if numbers.dtype.kind in "biuf" else None


def declared_output(
    alias: str, info: meta_graph_pb2.TensorInfo
) -> Callable[[np.ndarray], np.ndarray] | None:
    """What holds a model's output ``alias`` to what its signature declares (``info``): a
    cast to the declared dtype within its kind or to a wider kind (float64 to float32, int32
    to int64 or float32), or ``Internal`` for a value of another dtype (text for a number, a
    float for an integer), rank or fixed dimension. None when nothing is declared (dtype
    ``DT_INVALID``: a model without a signature)."""
    dtype = info.dtype
    if dtype == _DT_INVALID:
        return None
    want = numpy_dtype(dtype)
    text = dtype == _DT_STRING
    shape = None if info.tensor_shape.unknown_rank else [d.size for d in info.tensor_shape.dim]

    def refuse(array: np.ndarray) -> Internal:
        declared = "any shape" if shape is None else f"shape {shape_text(shape)}"
        return Internal(
            f"The model's output '{alias}' is {array.dtype.name} of shape "
            f"{shape_text(list(array.shape))}; its signature declares {dtype_name(dtype)} of "
            f"{declared}"
        )

    rank = -1 if shape is None else len(shape)
    fixed = [] if shape is None else [(i, d) for i, d in enumerate(shape) if d >= 0]

    def check(array: np.ndarray) -> np.ndarray:
        if text:
            if array.dtype.kind not in "OSU":
                raise refuse(array)
        elif array.dtype != want:
            if array.dtype.kind in "OSUV" or not np.can_cast(array.dtype, want, "same_kind"):
                raise refuse(array)
            if (
                want.kind in "iu"
                and array.size
                and not np.can_cast(array.dtype, want, "safe")
                and (array.min() < np.iinfo(want).min or array.max() > np.iinfo(want).max)
            ):
                raise refuse(array)  # narrowing would wrap
            array = array.astype(want)
        if rank >= 0 and array.ndim != rank:
            raise refuse(array)
        if fixed:
            dims = array.shape
            for i, d in fixed:
                if dims[i] != d:
                    raise refuse(array)
        return array

    return check


def call_user_code(fn: Callable[..., Any], *args: Any) -> Any:
    """Call model code, mapping its exceptions (see the module docstring)."""
    try:
        return fn(*args)
    except ServingError:
        raise
    except ValueError as exc:
        raise InvalidArgument(str(exc) or type(exc).__name__) from None
    except (Exception, SystemExit) as exc:  # SystemExit: sys.exit() in model code
        log.exception("Model code raised %s", type(exc).__name__)
        raise Internal(f"{type(exc).__name__}: {exc}") from None


class FunctionRunner:
    """A :class:`~pyserving.platforms.tensorflow.servable.Runner` over one :data:`ModelFn`
    per signature. ``on_close`` runs once at :meth:`close`. ``check_outputs``: outputs are
    held to the signature (:func:`declared_output`), for signatures a user declared; the
    shapes runtimes report (onnxruntime's unknown ``[]``, an export's fixed batch of 1) are
    not held to."""

    def __init__(
        self,
        functions: Mapping[str, ModelFn],
        on_close: Callable[[], None] | None = None,
        *,
        check_outputs: bool = False,
    ) -> None:
        self._functions: dict[str, ModelFn] | None = dict(functions)
        self._on_close = on_close
        self._check_outputs = check_outputs

    def make_callable(
        self,
        signature_name: str,
        signature: meta_graph_pb2.SignatureDef,
        feed_aliases: Sequence[str],
        fetch_aliases: Sequence[str],
    ) -> RunFn:
        functions = self._functions
        if functions is None:
            raise FailedPrecondition("The servable has been unloaded.")
        fn = functions.get(signature_name)
        if fn is None:
            raise Internal(f"Signature {signature_name!r} has no function")
        feeds = tuple(feed_aliases)
        fetches = tuple(fetch_aliases)
        checks = [
            declared_output(a, signature.outputs[a]) if self._check_outputs else None
            for a in fetches
        ]

        def run(*args: np.ndarray) -> list[np.ndarray]:
            outputs = call_user_code(fn, dict(zip(feeds, args, strict=True)))
            if not isinstance(outputs, Mapping):
                raise Internal(
                    f"The model returned {type(outputs).__name__}, not a mapping of outputs"
                )
            answer = []
            for alias, check in zip(fetches, checks, strict=True):
                try:
                    value = outputs[alias]
                except KeyError:
                    raise Internal(f"The model returned no output '{alias}'") from None
                try:
                    array = as_output(value)
                except (ValueError, TypeError) as exc:  # ragged lists, objects NumPy refuses
                    raise Internal(
                        f"The model's output '{alias}' is not a tensor: {type(exc).__name__}: "
                        f"{exc}"
                    ) from None
                answer.append(array if check is None else check(array))
            return answer

        return run

    def close(self) -> None:
        self._functions = None
        on_close, self._on_close = self._on_close, None
        if on_close is not None:
            on_close()


class ModelServable(SavedModelServable):
    """A loaded model of a non-TensorFlow platform (see the module docstring).

    Args:
        path: the version directory.
        signatures: key -> :class:`SignatureSpec` or SignatureDef.
        functions: key -> the function computing that signature.
        backend: the platform's name (shown in ``repr``).
        on_close: releases the model (called once, by ``close``).
        check_outputs: hold outputs to the signatures (see :class:`FunctionRunner`).
    """

    #: String inputs reach the model's own code, not TensorFlow's conversion from NumPy.
    string_rank_limit = None

    def __init__(
        self,
        path: str,
        signatures: Mapping[str, SignatureSpec | meta_graph_pb2.SignatureDef],
        functions: Mapping[str, ModelFn],
        *,
        backend: str,
        on_close: Callable[[], None] | None = None,
        check_outputs: bool = False,
    ) -> None:
        meta_graph = meta_graph_pb2.MetaGraphDef()
        for key, spec in signatures.items():
            proto = spec if isinstance(spec, meta_graph_pb2.SignatureDef) else signature_def(spec)
            meta_graph.signature_def[key].CopyFrom(proto)
        runner = FunctionRunner(functions, on_close, check_outputs=check_outputs)
        super().__init__(path, (), meta_graph, runner, backend=backend)

    def __repr__(self) -> str:
        return f"ModelServable(path={self.path!r}, backend={self.backend!r})"


class ModelLoader(HeldServableLoader):
    """A loader around ``load_fn() -> servable`` (a :class:`ModelServable` or anything with
    the servable interface and ``close``).

    ``estimate`` is computed once, before loading. Exceptions of ``load_fn`` other than
    ``ServingError`` become ``InvalidArgument`` errors naming the path,
    their type and message (a corrupt or foreign file).
    """

    def __init__(self, path: str, load_fn: Callable[[], Any], estimate: ResourceEstimate) -> None:
        self.path = path
        self._load_fn = load_fn
        self._estimate = estimate
        self._servable: Any = None

    def __repr__(self) -> str:
        return f"ModelLoader(path={self.path!r})"

    def estimate_resources(self) -> ResourceEstimate:
        return self._estimate

    def load(self) -> None:
        try:
            self._servable = self._load_fn()
        except ServingError:
            raise
        except (Exception, SystemExit) as exc:
            log.exception("Loading %s failed", self.path)
            raise InvalidArgument(
                f"Could not load the model at {self.path}: {type(exc).__name__}: {exc}"
            ) from None


def require(module: str, extra: str) -> Any:
    """Import ``module`` or raise ``FailedPrecondition`` naming the extra that installs it."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise FailedPrecondition(
            f"{module} is not installed ({exc}); install it with pip install 'pyserving[{extra}]'"
        ) from None


CLASSIFY_METHOD_NAME = "tensorflow/serving/classify"
REGRESS_METHOD_NAME = "tensorflow/serving/regress"


def examples_to_matrix(
    serialized: np.ndarray, n_features: int, feature_names: Sequence[str] | None
) -> np.ndarray:
    """Serialized ``tf.Example`` protos -> a float32 ``[len, n_features]`` matrix.

    An example gives its features either as one float (or int64) feature per name of
    ``feature_names`` (one value each), or as a feature ``inputs`` holding all
    ``n_features`` values in order. Raises ``InvalidArgument`` for anything else.
    """
    from tensorflow.core.example import example_pb2

    rows = np.zeros((len(serialized), n_features), dtype=np.float32)
    for i, data in enumerate(serialized.ravel().tolist()):
        example = example_pb2.Example()
        try:
            example.ParseFromString(bytes(data))
        except Exception:
            raise InvalidArgument(f"Could not parse example input {i}") from None
        features = example.features.feature
        if "inputs" in features:
            values = _feature_values(features["inputs"])
        elif feature_names and all(name in features for name in feature_names):
            values = []
            for name in feature_names:
                value = _feature_values(features[name])
                if len(value) != 1:
                    raise InvalidArgument(f"Feature {name} of example {i} must hold one value")
                values.extend(value)
        else:
            names = ", ".join(feature_names or ())
            raise InvalidArgument(
                f"Example {i} must hold a feature 'inputs' with {n_features} values"
                + (f", or one value for each of {names}" if names else "")
            )
        if len(values) != n_features:
            raise InvalidArgument(
                f"Example {i} holds {len(values)} feature values; the model takes {n_features}"
            )
        rows[i] = values
    return rows


def _feature_values(feature: Any) -> list[float]:
    kind = feature.WhichOneof("kind")
    if kind == "float_list":
        return list(feature.float_list.value)
    if kind == "int64_list":
        return [float(v) for v in feature.int64_list.value]
    raise InvalidArgument("Example features must be float or int64 lists")


def example_signatures(
    n_features: int,
    feature_names: Sequence[str] | None,
    labels: Sequence[str] | None,
    scores: Callable[[np.ndarray], np.ndarray] | None,
    values: Callable[[np.ndarray], np.ndarray] | None,
) -> tuple[dict[str, SignatureSpec], dict[str, ModelFn]]:
    """TF Serving's Classify and Regress APIs for a model over a feature matrix: signature
    ``classify`` (when ``scores`` is given: ``classes`` = ``labels`` per example, ``scores``
    = ``scores(x)``, float32 ``[-1, n_classes]``) and ``regress`` (when ``values`` is given:
    ``outputs`` = ``values(x)``, float32 ``[-1]``), both taking serialized ``tf.Example``s
    (see :func:`examples_to_matrix`)."""
    signatures: dict[str, SignatureSpec] = {}
    functions: dict[str, ModelFn] = {}
    examples = {"inputs": TensorSpec(str, (-1,))}
    if scores is not None and labels is not None:
        names = np.array([str(label).encode() for label in labels], dtype=object)
        n_classes = len(names)
        signatures["classify"] = SignatureSpec(
            examples,
            {
                "classes": TensorSpec(str, (-1, n_classes)),
                "scores": TensorSpec(np.float32, (-1, n_classes)),
            },
            CLASSIFY_METHOD_NAME,
        )

        def classify(feeds: dict[str, np.ndarray]) -> dict[str, Any]:
            x = examples_to_matrix(feeds["inputs"], n_features, feature_names)
            result = np.asarray(scores(x), dtype=np.float32).reshape(len(x), n_classes)
            return {"classes": np.tile(names, (len(x), 1)), "scores": result}

        functions["classify"] = classify
    if values is not None:
        signatures["regress"] = SignatureSpec(
            examples, {"outputs": TensorSpec(np.float32, (-1,))}, REGRESS_METHOD_NAME
        )

        def regress(feeds: dict[str, np.ndarray]) -> dict[str, Any]:
            x = examples_to_matrix(feeds["inputs"], n_features, feature_names)
            return {"outputs": np.asarray(values(x), dtype=np.float32).reshape(len(x))}

        functions["regress"] = regress
    return signatures, functions


def _json_dtype(value: Any) -> int | None:
    """The DataType JSON ``value`` reads as (None for no leaves): strings and ``{"b64": ...}``
    are DT_STRING, any float DT_FLOAT, only booleans DT_BOOL, integers DT_INT64."""
    kinds: set[str] = set()
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, list):
            stack.extend(item)
        elif isinstance(item, dict):
            kinds.add("str")
        elif isinstance(item, bool):
            kinds.add("bool")
        elif isinstance(item, int):
            kinds.add("int")
        elif isinstance(item, float):
            kinds.add("float")
        elif isinstance(item, str):
            kinds.add("str")
    if not kinds:
        return None
    if "str" in kinds:
        return _DT_STRING
    if "float" in kinds:
        return int(datatype_for_numpy(np.dtype(np.float32)))
    if kinds == {"bool"}:
        return int(datatype_for_numpy(np.dtype(np.bool_)))
    return int(datatype_for_numpy(np.dtype(np.int64)))


def is_open_signature(signature: meta_graph_pb2.SignatureDef) -> bool:
    """True for the signature of a model that declares no inputs or outputs (a Python model
    without ``signature``): it takes inputs by the names a request gives."""
    return not signature.inputs and not signature.outputs


def request_signature(body: Any) -> meta_graph_pb2.SignatureDef:
    """A predict SignatureDef for a REST predict ``body`` sent to an open signature: one
    input per name the body gives (``inputs`` for an unnamed value), its dtype read from the
    JSON values (see :func:`_json_dtype`; float32 when there are none)."""
    columns: dict[str, list[Any]] = {}
    if (
        isinstance(body, dict)
        and isinstance(body.get("inputs"), dict)
        and ("b64" not in body["inputs"])
    ):
        columns = {str(k): [v] for k, v in body["inputs"].items()}
    elif isinstance(body, dict) and "inputs" in body:
        columns = {"inputs": [body["inputs"]]}
    elif isinstance(body, dict) and isinstance(body.get("instances"), list):
        for row in body["instances"]:
            if isinstance(row, dict) and "b64" not in row:
                for k, v in row.items():
                    columns.setdefault(str(k), []).append(v)
            else:
                columns.setdefault("inputs", []).append(row)
    signature = meta_graph_pb2.SignatureDef(method_name=PREDICT_METHOD_NAME)
    for name, values in columns.items():
        dtype = _json_dtype(values)
        signature.inputs[name].name = name
        signature.inputs[name].dtype = (
            dtype if dtype is not None else int(datatype_for_numpy(np.dtype(np.float32)))
        )
        signature.inputs[name].tensor_shape.unknown_rank = True
    return signature
