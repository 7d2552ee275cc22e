"""A loaded TFLite model: a bounded pool of ``tf.lite.Interpreter``s behind the SavedModel
servable's interface.

:class:`TfLiteServable` *is* a :class:`~pyserving.platforms.tensorflow.SavedModelServable`
whose runner is :class:`TfLiteRunner`: its ``signature_defs`` and ``meta_graph`` are
SignatureDef protos (dtypes, shapes and tensor names as TF Serving reports them for a TFLite
model), and ``run`` does the same request validation (missing or extra inputs, input dtypes,
unknown or repeated output aliases, with TF Serving's messages). Everything above the servable
(metadata, REST and gRPC predict, batching, warmup) therefore treats both platforms alike.

Execution
---------
A ``tf.lite.Interpreter`` runs one invocation at a time and keeps state (its tensors) between
calls, so the runner owns an :class:`InterpreterPool` of ``size`` interpreters. A call borrows
one interpreter (waiting while all are busy), resizes its input tensors when the request's
shapes differ from the ones the interpreter last ran with (then re-allocates its tensors),
copies the inputs in, invokes, copies the requested outputs out and returns the interpreter.
At most ``size`` calls therefore run at once; ``invoke`` releases the GIL, so they run in
parallel. Each interpreter uses one thread, as TF Serving's do.

An interpreter whose call failed (a shape the model cannot take, a failed invocation) is
resized back to its initial input shapes before it serves again, or, if even that fails,
replaced by a fresh one built from the same model bytes.
"""

from __future__ import annotations

import logging
import threading
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np
from tensorflow.core.protobuf import meta_graph_pb2

from pyserving.errors import FailedPrecondition, Internal, InvalidArgument
from pyserving.platforms.tensorflow.servable import RunFn, SavedModelServable

_log = logging.getLogger(__name__)

#: TensorFlow 2.21 still ships tf.lite.Interpreter and warns on each construction that it will
#: move to the ai_edge_litert package; the warning says nothing a server operator acts on.
_DEPRECATION = r"\s*Warning: tf\.lite\.Interpreter is deprecated"

#: Builds one ready interpreter (tensors allocated). Raises what ``tf.lite.Interpreter`` does.
InterpreterFactory = Callable[[], Any]


def new_interpreter(model: bytes) -> Any:
    """A single-threaded ``tf.lite.Interpreter`` over ``model`` with its tensors allocated.

    Raises ``ValueError`` (the model does not parse, or uses an op the interpreter lacks) or
    ``RuntimeError`` (tensors cannot be allocated), as ``tf.lite.Interpreter`` does.
    """
    from tensorflow.lite.python.interpreter import Interpreter

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=_DEPRECATION, category=UserWarning)
        interpreter = Interpreter(model_content=model, num_threads=1)
    interpreter.allocate_tensors()
    return interpreter


class _Slot:
    """One interpreter of a pool and the input shapes it is currently allocated for."""

    def __init__(self, interpreter: Any) -> None:
        self.interpreter = interpreter
        #: The input shapes the interpreter was built with.
        self.initial: dict[int, tuple[int, ...]] = {
            int(d["index"]): tuple(int(n) for n in d["shape"])
            for d in interpreter.get_input_details()
        }
        self.shapes = dict(self.initial)

    def reset(self) -> None:
        """Resize every input back to its initial shape and re-allocate (after a failed call
        that may have left the interpreter half resized). Raises what the interpreter does."""
        self.shapes.clear()
        for index, shape in self.initial.items():
            self.interpreter.resize_tensor_input(index, list(shape), strict=False)
        self.interpreter.allocate_tensors()
        self.shapes.update(self.initial)

    def run(
        self, feeds: Sequence[int], values: Sequence[np.ndarray], fetches: Sequence[int]
    ) -> list[np.ndarray]:
        """Resize (when needed), set, invoke, read. Raises ``ServingError`` only."""
        interpreter = self.interpreter
        resized = False
        for index, value in zip(feeds, values, strict=True):
            shape = tuple(value.shape)
            if self.shapes.get(index) != shape:
                self.shapes.pop(index, None)
                try:
                    interpreter.resize_tensor_input(index, list(shape), strict=False)
                except (ValueError, RuntimeError) as exc:
                    raise InvalidArgument(
                        f"Failed to resize input tensor {_name(interpreter, index)} to "
                        f"{_shape_text(shape)}: {_text(exc)}"
                    ) from None
                self.shapes[index] = shape
                resized = True
        if resized:
            try:
                interpreter.allocate_tensors()
            except (ValueError, RuntimeError) as exc:
                raise InvalidArgument(
                    "Failed to allocate the TFLite interpreter's tensors for input shapes "
                    f"{', '.join(_shape_text(v.shape) for v in values)}: {_text(exc)}"
                ) from None
        for index, value in zip(feeds, values, strict=True):
            try:
                interpreter.set_tensor(index, np.ascontiguousarray(value))
            except (ValueError, RuntimeError) as exc:
                raise InvalidArgument(_text(exc)) from None
        try:
            interpreter.invoke()
        except (ValueError, RuntimeError) as exc:
            raise Internal(f"Failed to invoke TfLite interpreter: {_text(exc)}") from None
        return [interpreter.get_tensor(index) for index in fetches]


def _name(interpreter: Any, index: int) -> str:
    try:
        return str(interpreter._get_tensor_details(index, 0)["name"])
    except Exception:
        return f"#{index}"


def _shape_text(shape: Sequence[int]) -> str:
    return "[" + ",".join(str(d) for d in shape) + "]"


def _text(exc: BaseException) -> str:
    return " ".join(str(exc).split())


class InterpreterPool:
    """A fixed number of interpreters, each lent to one caller at a time.

    Args:
        factory: builds one interpreter; called ``size`` times here (its exceptions
            propagate: a pool is complete or not made) and again to replace an interpreter
            a failed call may have left broken.
        size: the number of interpreters, at least 1.

    Thread-safe. :meth:`borrow` blocks while every interpreter is lent out. After
    :meth:`close`, :meth:`borrow` raises ``FailedPrecondition``.
    """

    def __init__(self, factory: InterpreterFactory, size: int) -> None:
        if size < 1:
            raise ValueError(f"an interpreter pool needs at least one interpreter, not {size}")
        self._factory = factory
        self.size = size
        self._free: list[_Slot] = [_Slot(factory()) for _ in range(size)]
        self._cond = threading.Condition()
        self._closed = False
        self._waiting = 0

    @property
    def available(self) -> int:
        """Interpreters not lent out right now."""
        with self._cond:
            return len(self._free)

    @property
    def waiting(self) -> int:
        """Callers blocked in :meth:`borrow` right now, waiting for an interpreter."""
        with self._cond:
            return self._waiting

    @contextmanager
    def borrow(self) -> Iterator[_Slot]:
        """Lend an interpreter for the ``with`` block; it returns to the pool afterwards.

        If the block raises, the interpreter is reset to its initial input shapes before it
        serves again, or replaced by a new one when that fails.
        """
        with self._cond:
            while not self._free:
                if self._closed:
                    break
                self._waiting += 1
                try:
                    self._cond.wait()
                finally:
                    self._waiting -= 1
            if self._closed:
                raise FailedPrecondition("The servable has been unloaded.")
            slot = self._free.pop()
        try:
            yield slot
        except BaseException:
            slot = self._renew(slot)
            raise
        finally:
            with self._cond:
                if not self._closed:
                    self._free.append(slot)
                self._cond.notify()

    def _renew(self, slot: _Slot) -> _Slot:
        try:
            slot.reset()
            return slot
        except Exception:
            pass
        try:
            return _Slot(self._factory())
        except Exception:
            _log.exception("Could not rebuild a TFLite interpreter; keeping the old one")
            slot.shapes.clear()
            return slot

    def run(
        self, feeds: Sequence[int], values: Sequence[np.ndarray], fetches: Sequence[int]
    ) -> list[np.ndarray]:
        """Feed ``values`` to the input tensors ``feeds`` (tensor indices), invoke, return the
        output tensors ``fetches`` (copies). Raises ``ServingError`` only."""
        with self.borrow() as slot:
            return slot.run(feeds, values, fetches)

    def close(self) -> None:
        """Drop every interpreter (those lent out when they come back). Idempotent; wakes
        every caller waiting in :meth:`borrow`."""
        with self._cond:
            self._closed = True
            self._free.clear()
            self._cond.notify_all()


class TfLiteRunner:
    """The :class:`~pyserving.platforms.tensorflow.servable.Runner` of a TFLite model.

    Args:
        pool: the interpreters.
        inputs / outputs: tensor name -> tensor index of the model's input / output tensors;
            every SignatureDef the servable is given names its tensors by these names.
    """

    def __init__(
        self, pool: InterpreterPool, inputs: Mapping[str, int], outputs: Mapping[str, int]
    ) -> None:
        self._pool: InterpreterPool | None = pool
        self._inputs = dict(inputs)
        self._outputs = dict(outputs)

    def make_callable(
        self,
        signature_name: str,
        signature: meta_graph_pb2.SignatureDef,
        feed_aliases: Sequence[str],
        fetch_aliases: Sequence[str],
    ) -> RunFn:
        """A function taking one array per ``feed_aliases`` entry and returning one array per
        ``fetch_aliases`` entry (raises ``ServingError``; ``FailedPrecondition`` once closed)."""
        pool = self._pool
        if pool is None:
            raise FailedPrecondition("The servable has been unloaded.")
        try:
            feeds = [self._inputs[signature.inputs[a].name] for a in feed_aliases]
            fetches = [self._outputs[signature.outputs[a].name] for a in fetch_aliases]
        except KeyError as exc:
            raise Internal(
                f"Signature {signature_name!r} names a tensor the model lacks: {exc}"
            ) from None

        def run(*args: np.ndarray) -> list[np.ndarray]:
            return pool.run(feeds, args, fetches)

        return run

    def close(self) -> None:
        """Close the pool (idempotent)."""
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.close()


class TfLiteServable(SavedModelServable):
    """One loaded ``model.tflite``: a ``SavedModelServable`` running on a TFLite runner.

    Attributes (beyond the base class's):
        model_path: the ``model.tflite`` file it was loaded from.
        pool: the interpreters (``pool.size`` of them).

    ``tags`` is empty and ``backend`` is ``"tflite"``. ``meta_graph`` holds only the
    ``signature_def`` map, as TF Serving's TFLite bundle does.
    """

    def __init__(
        self,
        path: str,
        model_path: str,
        signature_defs: Mapping[str, meta_graph_pb2.SignatureDef],
        pool: InterpreterPool,
        inputs: Mapping[str, int],
        outputs: Mapping[str, int],
    ) -> None:
        meta_graph = meta_graph_pb2.MetaGraphDef()
        for key, signature in signature_defs.items():
            meta_graph.signature_def[key].CopyFrom(signature)
        super().__init__(
            path, (), meta_graph, TfLiteRunner(pool, inputs, outputs), backend="tflite"
        )
        self.model_path = model_path
        self.pool = pool

    def __repr__(self) -> str:
        return f"TfLiteServable(path={self.path!r}, interpreters={self.pool.size})"
