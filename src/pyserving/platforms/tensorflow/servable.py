"""A loaded SavedModel: its signatures (exactly as in the MetaGraphDef) and a thread-safe ``run``.

:class:`SavedModelServable` is what a ``ServableHandle`` hands to requests. It knows nothing
about REST or gRPC: it takes and returns ``numpy`` arrays keyed by signature alias, and raises
only :class:`~pyserving.errors.ServingError` subclasses, with TF Serving's messages.

The heavy lifting is done by a *runner*, chosen by the loader:

- ``session``: the graph runs in a ``tf.compat.v1.Session``; each (signature, outputs) pair is
  compiled once into a C++ ``Session::MakeCallable`` handle, so a call is one trip into C++
  with no Python-side feed/fetch bookkeeping. This is how TF Serving itself runs every
  SavedModel (TF1 and TF2 exports alike), and it accepts the same inputs TF Serving does (feed
  shapes are not checked against the placeholder's static shape).
- ``function``: a TF2 export restored with ``tf.saved_model.load``. Only used when the
  session path cannot load a model (a Keras 3 export, whose variables only its object
  graph restores). :class:`FunctionRunner` imports the signatures' function graphs into a
  session of its own, with the restored variables copied in, and compiles callables as
  above; only models whose signatures capture other resources (lookup tables) are called
  eagerly, through each signature's flat concrete-function call.

Both runners are driven through the same :meth:`SavedModelServable.run`, which does the
request validation TF Serving does before ``Session::Run`` (``predict_util.cc``,
``saved_model/util.cc``) and feed dtype checks with ``FunctionCallFrame``'s message.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Protocol

import numpy as np
import tensorflow as tf
from tensorflow.core.protobuf import config_pb2, meta_graph_pb2

from pyserving.codec import (
    datatype_for_numpy,
    dtype_name,
    numpy_dtype,
    tensor_proto_to_ndarray,
)
from pyserving.errors import (
    Code,
    FailedPrecondition,
    Internal,
    InvalidArgument,
    ServingError,
)

_log = logging.getLogger(__name__)

#: Signature key TF2 exports use for their initializer; it is not a servable signature.
INIT_OP_SIGNATURE_KEY = "__saved_model_init_op"

#: At most this many compiled (signature, output set) callables are kept per servable. More
#: distinct ``output_filter`` combinations still work; they are compiled per call.
MAX_CACHED_CALLABLES = 256

_DT_STRING = 7
#: The most dimensions a string input may have: TensorFlow's conversion of a NumPy array of
#: strings (eager and session alike) crashes the process beyond 32 (numeric arrays are fine).
MAX_STRING_RANK = 32
#: A signature input of any dtype (a non-TensorFlow model that declares none): fed as given.
_DT_INVALID = 0
_MISSING: Any = object()

RunFn = Callable[..., Sequence[Any]]


class Runner(Protocol):
    """Executes signatures. Implementations must be safe to call from many threads at once."""

    def make_callable(
        self,
        signature_name: str,
        signature: meta_graph_pb2.SignatureDef,
        feed_aliases: Sequence[str],
        fetch_aliases: Sequence[str],
    ) -> RunFn:
        """A function taking one array per ``feed_aliases`` entry (positionally) and returning
        one value per ``fetch_aliases`` entry. May raise ``tf.errors.OpError``."""
        ...

    def close(self) -> None:
        """Release the runtime (idempotent). No callable may be used afterwards."""
        ...


class SessionRunner:
    """Runs signatures in a TF1 ``Session`` through C++ callables (see module docstring)."""

    def __init__(self, graph: tf.Graph, session: tf.compat.v1.Session) -> None:
        self._graph: tf.Graph | None = graph
        self._session: tf.compat.v1.Session | None = session

    def make_callable(
        self,
        signature_name: str,
        signature: meta_graph_pb2.SignatureDef,
        feed_aliases: Sequence[str],
        fetch_aliases: Sequence[str],
    ) -> RunFn:
        session = self._session
        if session is None:
            raise FailedPrecondition("The servable has been unloaded.")
        fetch_names = [signature.outputs[a].name for a in fetch_aliases]
        unique = list(dict.fromkeys(fetch_names))
        options = config_pb2.CallableOptions()
        options.feed.extend(signature.inputs[a].name for a in feed_aliases)
        options.fetch.extend(unique)
        # Session.make_callable() with a feed list falls back to feed_dict runs (slow, and it
        # checks static shapes, which TF Serving does not); the options form is the C++
        # Session::MakeCallable API.
        fn: RunFn = session._make_callable_from_options(options)
        if unique == fetch_names:
            return fn
        positions = [unique.index(n) for n in fetch_names]

        def run_with_duplicates(*args: Any) -> list[Any]:
            values = fn(*args)
            return [values[i] for i in positions]

        return run_with_duplicates

    def close(self) -> None:
        session, self._session, self._graph = self._session, None, None
        if session is not None:
            session.close()


class FunctionRunner:
    """Runs the signatures of a TF2 export restored with ``tf.saved_model.load``.

    Two ways, chosen once at construction:

    - ``session`` (the fast path, used whenever it applies): every signature's function graph
      is imported into one new ``tf.Graph``, its captured variables become variables of that
      graph holding the restored values (copied once; the eager objects are then released),
      and each (signature, outputs) pair is compiled into a C++ ``Session::MakeCallable``
      handle as in :class:`SessionRunner`. A call is one trip into C++, ~15 us of CPU for a
      small model, where calling a restored signature function eagerly costs ~200-270 us
      (Python argument binding, then TF's eager function runtime executing the signature's
      nested ``StatefulPartitionedCall``; see docs/benchmarks.md). Variables live in the
      session, so state a signature assigns is seen by every signature, as before.
    - ``eager``: when some signature captures anything other than variables and constant
      tensors (a lookup table, another resource), every signature is called eagerly through
      its concrete function's flat call (tensors in positional order plus its captured
      inputs), which skips the structured-signature binding of ``function(**kwargs)``.

    ``path`` reports which (``"session"`` or ``"eager"``).
    """

    def __init__(self, loaded: Any, config: Any = None) -> None:
        self._loaded: Any = loaded
        self._functions: Mapping[str, Any] | None = loaded.signatures
        self._session: SessionRunner | None = None
        self._imported: dict[str, meta_graph_pb2.SignatureDef] = {}
        try:
            imported = _import_signatures(self._functions, config)
        except _NotImportable as exc:
            _log.info("Signatures of %r run eagerly: %s", loaded, exc)
            imported = None
        except Exception:  # a graph TF will not import: the eager path still serves it
            _log.warning("Signatures of %r run eagerly: import failed", loaded, exc_info=True)
            imported = None
        if imported is not None:
            self._session, self._imported = imported
            # The session holds copies of the variables: drop the eager objects.
            self._loaded = None
            self._functions = None
        self.path = "eager" if self._session is None else "session"

    def make_callable(
        self,
        signature_name: str,
        signature: meta_graph_pb2.SignatureDef,
        feed_aliases: Sequence[str],
        fetch_aliases: Sequence[str],
    ) -> RunFn:
        if self._session is not None:
            imported = self._imported.get(signature_name)
            if imported is None:
                raise Internal(f"Signature {signature_name!r} has no restored function")
            return self._session.make_callable(
                signature_name, imported, feed_aliases, fetch_aliases
            )
        functions = self._functions
        if functions is None:
            raise FailedPrecondition("The servable has been unloaded.")
        try:
            function = functions[signature_name]
        except KeyError:
            raise Internal(
                f"Signature {signature_name!r} has no restored function in {self._loaded!r}"
            ) from None
        return _eager_callable(function, feed_aliases, fetch_aliases)

    def close(self) -> None:
        session, self._session = self._session, None
        if session is not None:
            session.close()
        self._functions = None
        self._loaded = None


class _NotImportable(Exception):
    """A signature function cannot be imported into a graph (see :class:`FunctionRunner`)."""


def _flat_aliases(structure: Any, what: str) -> list[str]:
    """The keys of a signature function's input or output dict, in flat-tensor order."""
    if not isinstance(structure, Mapping) or not all(isinstance(k, str) for k in structure):
        raise _NotImportable(f"signature {what} are not a dict of tensors")
    flat = tf.nest.flatten(structure)
    if len(flat) != len(structure):
        raise _NotImportable(f"signature {what} are nested")
    # tf.nest flattens a dict in sorted key order.
    return sorted(structure)


def _capture_values(
    function: Any, variables: dict[int, tuple[Any, np.ndarray]]
) -> list[tuple[bool, np.ndarray, int]]:
    """Per captured input of ``function``: (is a variable, its value, key). A variable's value
    is read once per eager variable (key: its handle's id, kept alive in ``variables``);
    constants are keyed by position. Raises ``_NotImportable`` for any other resource."""
    values: list[tuple[bool, np.ndarray, int]] = []
    for capture in function.captured_inputs:
        if capture.dtype != tf.resource:
            values.append((False, np.asarray(capture.numpy()), -1))
            continue
        data = getattr(capture, "_handle_data", None)
        shapes = list(data.shape_and_type) if data is not None and data.is_set else []
        if len(shapes) != 1 or shapes[0].dtype == 0:
            raise _NotImportable("a signature captures a resource that is not a variable")
        key = id(capture)
        if key not in variables:
            dtype = tf.as_dtype(shapes[0].dtype)
            try:
                current = tf.raw_ops.ReadVariableOp(resource=capture, dtype=dtype)
            except tf.errors.OpError as exc:
                raise _NotImportable(f"a captured variable cannot be read: {exc.message}") from None
            variables[key] = (capture, np.asarray(current.numpy()))
        values.append((True, variables[key][1], key))
    return values


def _import_signatures(
    functions: Mapping[str, Any], config: Any
) -> tuple[SessionRunner, dict[str, meta_graph_pb2.SignatureDef]]:
    """Import every signature function into one graph and session (see FunctionRunner)."""
    plans = []
    for name, function in functions.items():
        graph = function.graph
        args, kwargs = function.structured_input_signature
        if args:
            raise _NotImportable(f"signature {name!r} takes positional arguments")
        inputs = _flat_aliases(kwargs, "inputs")
        outputs = _flat_aliases(function.structured_outputs, "outputs")
        captures = list(graph.internal_captures)
        placeholders = graph.inputs[: len(graph.inputs) - len(captures)]
        if len(placeholders) != len(inputs) or len(graph.outputs) != len(outputs):
            raise _NotImportable(f"signature {name!r} has inputs or outputs besides its dict")
        for alias, placeholder in zip(inputs, placeholders, strict=True):
            if kwargs[alias].dtype != placeholder.dtype:
                raise _NotImportable(f"signature {name!r}: input {alias} does not line up")
        plans.append((name, function, inputs, outputs, placeholders, captures))

    read: dict[int, tuple[Any, np.ndarray]] = {}  # id(eager handle) -> (handle, value)
    captured = [_capture_values(plan[1], read) for plan in plans]

    graph = tf.Graph()
    handles: dict[int, Any] = {}  # id(eager handle) -> the graph's variable
    initial: dict[Any, np.ndarray] = {}  # initial-value placeholder -> value
    assigns = []
    imported: dict[str, meta_graph_pb2.SignatureDef] = {}
    with graph.as_default():

        def new_variable(value: np.ndarray) -> tuple[Any, Any]:
            index = len(initial)
            dtype = tf.string if value.dtype.kind in "OSU" else tf.as_dtype(value.dtype)
            handle = tf.raw_ops.VarHandleOp(
                dtype=dtype,
                shape=value.shape,
                shared_name=f"capture_{index}",
                name=f"capture_{index}",
            )
            feed = tf.compat.v1.placeholder(dtype, value.shape, name=f"capture_{index}_value")
            initial[feed] = value
            assigns.append(tf.raw_ops.AssignVariableOp(resource=handle, value=feed))
            return handle, dtype

        for number, (name, function, inputs, outputs, placeholders, captures) in enumerate(plans):
            input_map = {}
            for internal, (is_variable, value, key) in zip(captures, captured[number], strict=True):
                if is_variable:  # one graph variable per eager variable, shared by signatures
                    if key not in handles:
                        handles[key] = new_variable(value)[0]
                    input_map[internal.name] = handles[key]
                else:  # a captured constant, held in a variable (no 2 GB GraphDef limit)
                    handle, dtype = new_variable(value)
                    input_map[internal.name] = tf.raw_ops.ReadVariableOp(
                        resource=handle, dtype=dtype
                    )
            scope = f"signature_{number}"
            returned = tf.graph_util.import_graph_def(
                function.graph.as_graph_def(),
                input_map=input_map,
                return_elements=[t.name for t in function.graph.outputs],
                name=scope,
            )
            signature = meta_graph_pb2.SignatureDef()
            for alias, placeholder in zip(inputs, placeholders, strict=True):
                signature.inputs[alias].name = f"{scope}/{placeholder.name}"
            for alias, tensor in zip(outputs, returned, strict=True):
                signature.outputs[alias].name = tensor.name
            imported[name] = signature
        init = tf.group(*assigns)
    graph.finalize()
    session = tf.compat.v1.Session(graph=graph, config=config or _default_config())
    try:
        session.run(init, feed_dict=initial)
    except BaseException:
        session.close()
        raise
    return SessionRunner(graph, session), imported


def _default_config() -> Any:
    """What ``SavedModelLoader.config_proto`` gives by default: ops run in the calling thread."""
    config = tf.compat.v1.ConfigProto()
    config.inter_op_parallelism_threads = -1
    config.allow_soft_placement = True
    return config


def _eager_callable(
    function: Any, feed_aliases: Sequence[str], fetch_aliases: Sequence[str]
) -> RunFn:
    """Call ``function`` (a signature concrete function) eagerly with flat tensors."""
    args, kwargs = function.structured_input_signature
    order = sorted(kwargs) if not args and isinstance(kwargs, Mapping) else None
    captured = function.captured_inputs
    fetches = tuple(fetch_aliases)
    if order is None or sorted(feed_aliases) != order:
        feeds = tuple(feed_aliases)

        def run_structured(*values: Any) -> list[Any]:
            tensors = {a: tf.convert_to_tensor(v) for a, v in zip(feeds, values, strict=True)}
            try:
                result = function(**tensors)
            except (TypeError, ValueError) as exc:
                raise InvalidArgument(str(exc)) from None
            return [result[a].numpy() for a in fetches]

        return run_structured
    # Feeds arrive in feed_aliases order; the flat call takes them in sorted-alias order.
    positions = [list(feed_aliases).index(a) for a in order]
    call_flat = function._call_flat

    def run(*values: Any) -> list[Any]:
        tensors = [tf.convert_to_tensor(values[i]) for i in positions]
        try:
            result = call_flat(tensors, captured)
        except (TypeError, ValueError) as exc:
            raise InvalidArgument(str(exc)) from None
        return [result[a].numpy() for a in fetches]

    return run


@dataclass(frozen=True)
class _Feed:
    alias: str
    tensor_name: str
    dtype: int
    np_dtype: np.dtype[Any] | None


class _SignatureInfo:
    """What ``run`` needs to validate and feed one signature, computed once at load."""

    def __init__(self, name: str, signature: meta_graph_pb2.SignatureDef) -> None:
        self.name = name
        self.signature = signature
        self.input_aliases = frozenset(signature.inputs.keys())
        self.sorted_aliases = sorted(self.input_aliases)
        self.output_aliases = tuple(sorted(signature.outputs.keys()))
        # Feeds are ordered by tensor name, the order DirectSession numbers its args in.
        self.feeds = tuple(
            sorted(
                (
                    _Feed(alias, info.name, info.dtype, _maybe_numpy_dtype(info.dtype))
                    for alias, info in signature.inputs.items()
                ),
                key=lambda f: f.tensor_name,
            )
        )
        self.defaults: dict[str, np.ndarray] = {}
        for alias, proto in signature.defaults.items():
            self.defaults[alias] = tensor_proto_to_ndarray(proto, name=alias)

    def check_inputs(self, inputs: Mapping[str, Any]) -> None:
        """Raise TF Serving's ``InvalidArgument`` when ``inputs`` do not fit the signature."""
        n_request, n_signature = len(inputs), len(self.input_aliases)
        if n_request > n_signature or (n_request < n_signature and not self.defaults):
            request = sorted(inputs)
            extra = [a for a in request if a not in self.input_aliases]
            missing = [a for a in self.sorted_aliases if a not in inputs]
            raise InvalidArgument(
                f"input size does not match signature: {n_request}!={n_signature} "
                f"len({{{','.join(request)}}}) != len({{{','.join(self.sorted_aliases)}}}). "
                f"Sent extra: {{{','.join(extra)}}}. "
                f"Missing but required: {{{','.join(missing)}}}."
            )
        seen = 0
        for alias in self.sorted_aliases:
            if alias in inputs:
                seen += 1
            elif alias not in self.defaults:
                raise InvalidArgument(
                    f"Signature input alias: {alias}(feed name: "
                    f"{self.signature.inputs[alias].name}) not found in request and no "
                    f"default value provided. Inputs expected to be in the request "
                    f"{{{','.join(sorted(inputs))}}}, or default input alias set: "
                    f"{','.join(sorted(self.defaults))}"
                )
        if inputs and seen != n_request:
            used = [a for a in sorted(inputs) if a in self.input_aliases]
            raise InvalidArgument(
                f"Inputs contains invalid name. Used request inputs: {','.join(used)}, "
                f"request input: {','.join(sorted(inputs))}"
            )

    def check_outputs(self, output_keys: Sequence[str]) -> None:
        """Raise TF Serving's ``InvalidArgument`` for unknown or repeated output aliases."""
        seen: set[str] = set()
        for alias in output_keys:
            if alias not in self.signature.outputs:
                raise InvalidArgument(
                    f"output tensor alias not found in signature: {alias} Outputs expected "
                    f"to be in the set {{{','.join(self.output_aliases)}}}."
                )
            if alias in seen:
                raise InvalidArgument(f"duplicate output tensor alias: {alias}")
            seen.add(alias)


def _maybe_numpy_dtype(dtype: int) -> np.dtype[Any] | None:
    try:
        return numpy_dtype(dtype)
    except ServingError:
        return None


def _numpy_dtype_name(dtype: np.dtype[Any]) -> str:
    if dtype.kind in "OSU":
        return "string"
    try:
        return dtype_name(datatype_for_numpy(dtype))
    except ServingError:
        return str(dtype)


def _translate(exc: tf.errors.OpError) -> ServingError:
    try:
        code = Code(exc.error_code)
    except ValueError:
        code = Code.UNKNOWN
    return ServingError.from_code(code, exc.message)


def _undecodable_error(exc: UnicodeDecodeError) -> ServingError:
    """TensorFlow raises ``UnicodeDecodeError`` instead of the op's error when that error's
    message is not UTF-8: it quotes input bytes (``Could not parse example input, value:
    '\\xff'`` from ParseExample fed a string that is not a tf.Example). The status code is
    lost with it; such errors are about the input: ``InvalidArgument``, with the message's
    undecodable bytes written as ``\\xNN``."""
    raw = exc.object
    message = bytes(raw).decode("utf-8", "backslashreplace") if raw else str(exc)
    return InvalidArgument(message)


def _as_string_feed(value: np.ndarray) -> np.ndarray:
    """``str`` arrays become object arrays of UTF-8 ``bytes``; other string forms pass."""
    if value.dtype.kind != "U":
        return value
    flat = [s.encode("utf-8") for s in value.ravel().tolist()]
    out = np.empty(len(flat), dtype=object)
    out[:] = flat
    return out.reshape(value.shape)


class SavedModelServable:
    """One loaded SavedModel version.

    Attributes:
        path: the version directory it was loaded from.
        tags: the tag-set of the MetaGraphDef that was loaded.
        meta_graph: that MetaGraphDef, without its ``graph_def`` (the graph itself lives in
            the runtime; keeping a second copy would double the memory of large models).
            ``meta_graph.signature_def`` is the complete map, ``__saved_model_init_op``
            included, exactly as TF Serving reports it in model metadata.
        signature_defs: the servable signatures (read-only mapping), i.e. the MetaGraphDef's
            map without ``__saved_model_init_op``.
        backend: ``"session"`` or ``"function"`` (see the module docstring).

    ``run`` is thread-safe and may be called concurrently. ``close`` (called by the loader's
    ``unload``) must not race with ``run``; the manager guarantees that by waiting for handles.
    """

    #: The most dimensions a string input may have (:data:`MAX_STRING_RANK`: TensorFlow
    #: converts it from NumPy); None: no limit (a model of another platform).
    string_rank_limit: int | None = MAX_STRING_RANK

    def __init__(
        self,
        path: str,
        tags: Sequence[str],
        meta_graph: meta_graph_pb2.MetaGraphDef,
        runner: Runner,
        *,
        backend: str,
    ) -> None:
        self.path = path
        self.tags = tuple(tags)
        self.meta_graph = meta_graph
        self.backend = backend
        self.signature_defs: Mapping[str, meta_graph_pb2.SignatureDef] = MappingProxyType(
            {k: v for k, v in meta_graph.signature_def.items() if k != INIT_OP_SIGNATURE_KEY}
        )
        self._infos = {k: _SignatureInfo(k, v) for k, v in self.signature_defs.items()}
        self._runner: Runner | None = runner
        self._callables: dict[tuple[str, tuple[str, ...] | None], RunFn] = {}
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return (
            f"SavedModelServable(path={self.path!r}, tags={self.tags!r}, backend={self.backend!r})"
        )

    def check_input_aliases(self, signature_name: str, aliases: Collection[str]) -> None:
        """Raise what :meth:`run` raises for a request whose inputs are named ``aliases``
        (missing, extra or unknown aliases), without their values: TF Serving checks a
        Predict's aliases before it parses the tensors. Nothing for an unknown signature."""
        info = self._infos.get(signature_name)
        if info is not None and frozenset(aliases) != info.input_aliases:
            info.check_inputs(dict.fromkeys(aliases))

    def run(
        self,
        signature_name: str,
        inputs: Mapping[str, np.ndarray],
        output_keys: Sequence[str] | None = None,
    ) -> dict[str, np.ndarray]:
        """Run one signature.

        Args:
            signature_name: a key of ``signature_defs`` (already resolved: no default here).
            inputs: one array per signature input alias. Inputs the signature has a default
                for may be left out. Arrays must have the signature's dtype exactly (string
                inputs accept object arrays of ``bytes``, ``bytes_`` or ``str_`` arrays; an
                input of dtype ``DT_INVALID``, a model that declares none, takes any);
                shapes are not checked against the signature, as in TF Serving.
            output_keys: the output aliases to fetch, in the order wanted; ``None`` fetches
                every output of the signature.

        Returns:
            ``{alias: array}`` for the requested outputs (scalars as 0-d arrays).

        Raises:
            FailedPrecondition: unknown signature (``Serving signature key "x" not found.``).
            InvalidArgument: missing/extra inputs, wrong dtypes, unknown or repeated outputs,
                and TF runtime argument errors.
            ServingError: any other TF runtime error, with TF's code and message.
        """
        info = self._infos.get(signature_name)
        if info is None:
            raise FailedPrecondition(f'Serving signature key "{signature_name}" not found.')
        if inputs.keys() != info.input_aliases:
            info.check_inputs(inputs)
        key = None if output_keys is None else tuple(output_keys)
        fn = self._callables.get((signature_name, key))
        if fn is None:
            fn = self._callable(info, key)
        args = []
        for index, feed in enumerate(info.feeds):
            value = inputs.get(feed.alias, _MISSING)
            if value is _MISSING:
                value = info.defaults[feed.alias]
            elif type(value) is not np.ndarray:
                value = np.asarray(value)
            limit = self.string_rank_limit
            if limit is not None and value.ndim > limit and value.dtype.kind in "OSU":
                raise InvalidArgument(
                    f"Input '{feed.alias}' is a string tensor of {value.ndim} dimensions; "
                    f"at most {limit} are supported"
                )
            if value.dtype != feed.np_dtype and feed.dtype != _DT_INVALID:
                if feed.dtype == _DT_STRING and value.dtype.kind in "OSU":
                    value = _as_string_feed(value)
                else:
                    raise InvalidArgument(
                        f"Expects arg[{index}] to be {dtype_name(feed.dtype)} but "
                        f"{_numpy_dtype_name(value.dtype)} is provided"
                    )
            args.append(value)
        try:
            values = fn(*args)
        except tf.errors.OpError as exc:
            raise _translate(exc) from None
        except UnicodeDecodeError as exc:
            raise _undecodable_error(exc) from None
        fetches = info.output_aliases if key is None else key
        return {
            alias: v if type(v) is np.ndarray else np.asarray(v)
            for alias, v in zip(fetches, values, strict=True)
        }

    def _callable(self, info: _SignatureInfo, key: tuple[str, ...] | None) -> RunFn:
        if key is not None:
            info.check_outputs(key)
        fetches = info.output_aliases if key is None else key
        with self._lock:
            fn = self._callables.get((info.name, key))
            if fn is not None:
                return fn
            runner = self._runner
            if runner is None:
                raise FailedPrecondition("The servable has been unloaded.")
            try:
                fn = runner.make_callable(
                    info.name, info.signature, [f.alias for f in info.feeds], fetches
                )
            except tf.errors.OpError as exc:
                raise _translate(exc) from None
            if len(self._callables) < MAX_CACHED_CALLABLES:
                self._callables[(info.name, key)] = fn
            return fn

    def check_output_keys(self, signature_name: str, output_keys: Sequence[str]) -> None:
        """Raise what :meth:`run` raises for ``signature_name`` and ``output_keys``
        (``FailedPrecondition`` for an unknown signature, ``InvalidArgument`` for unknown or
        repeated aliases) without running anything."""
        info = self._infos.get(signature_name)
        if info is None:
            raise FailedPrecondition(f'Serving signature key "{signature_name}" not found.')
        info.check_outputs(output_keys)

    def close(self) -> None:
        """Release the runtime and every compiled callable. Idempotent."""
        with self._lock:
            runner, self._runner = self._runner, None
            self._callables.clear()
        if runner is not None:
            runner.close()

    @property
    def closed(self) -> bool:
        """True once :meth:`close` has run."""
        return self._runner is None
