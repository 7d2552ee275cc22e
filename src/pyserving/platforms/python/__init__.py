"""The ``python`` platform: a model written in Python, alone or around another platform's.

A version directory holding ``model.py`` is a Python model. ``model.py`` defines a plain
class ``Model`` (no base class), built with no arguments, with:

* ``load(self, path: str) -> None`` (optional): called once with the version directory;
* ``predict(self, inputs: dict[str, numpy.ndarray]) -> dict[str, numpy.ndarray]``: the model,
  when the directory holds no model of another platform;
* ``signature`` (optional class attribute): ``{"inputs": {name: spec}, "outputs": {name:
  spec}}`` where a spec is ``{"dtype": ..., "shape": [...]}`` or a ``(dtype, shape)`` pair
  (-1 for any size): used for metadata, V2 and input checks. Without it, inputs are taken by
  the names the request gives and outputs by the names the model returns.

When the directory also holds a model of another platform (a SavedModel, ``model.onnx``...),
that model is loaded by its own platform, ``predict`` is not needed, and ``preprocess(self,
inputs) -> inputs`` and ``postprocess(self, outputs) -> outputs`` (each optional) run around
its ``run``. Without ``signature`` and without pre/post-processing, the inner model's
signatures are served as they are. With server-side batching, the wrapped model is the one
batched: each request is preprocessed on its own, and batches merge the tensors
``preprocess`` produced (postprocess then sees that request's rows).

Errors: a ``ValueError`` raised by the model's code is INVALID_ARGUMENT with its message, any
other exception INTERNAL with its type and message (logged with its traceback); an error
importing ``model.py`` or in ``load`` fails the version's load and shows in its status.

``model.py`` is code run by the server: only directories the operator configured are read.
RAM estimate: the inner model's estimate (else 1.2 x the directory's size) plus a small fixed
overhead for ``model.py``.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from pyserving.core.loader import Loader, ResourceEstimate, estimate_from_disk
from pyserving.errors import FailedPrecondition, Internal, InvalidArgument, NotFound
from pyserving.platforms.registry import Platform, PlatformOptions, detect_platform

log = logging.getLogger(__name__)

MODEL_FILE = "model.py"
#: RAM ``model.py``'s module and ``Model`` take beyond the wrapped model's (the flowers
#: example's first load grew the process by 65 KB more than its SavedModel's alone).
OVERHEAD = 128 << 10


def import_model_class(path: str) -> type:
    """``Model`` from ``path``/model.py, imported under a module name unique to the path.

    Raises:
        InvalidArgument: the file does not import, or defines no class ``Model``.
    """
    file = os.path.join(path, MODEL_FILE)
    digest = hashlib.blake2b(os.path.abspath(path).encode(), digest_size=8).hexdigest()
    module_name = f"pyserving_python_model_{digest}"
    try:
        spec = importlib.util.spec_from_file_location(module_name, file)
        if spec is None or spec.loader is None:
            raise ImportError(f"cannot import {file}")
        module = importlib.util.module_from_spec(spec)
        sys.modules[module_name] = module
        try:
            spec.loader.exec_module(module)
        finally:
            sys.modules.pop(module_name, None)
    except (Exception, SystemExit) as exc:  # SystemExit: e.g. argparse at import time
        log.exception("Importing %s failed", file)
        raise InvalidArgument(f"Could not import {file}: {type(exc).__name__}: {exc}") from None
    cls = getattr(module, "Model", None)
    if not isinstance(cls, type):
        raise InvalidArgument(f"{file} defines no class Model")
    return cls


class OpenServable:
    """A Python model without a declared signature: ``serving_default`` takes the inputs the
    request gives and returns the outputs ``fn`` returns."""

    def __init__(self, path: str, fn: Any, on_close: Any = None) -> None:
        from tensorflow.core.protobuf import meta_graph_pb2

        from pyserving.platforms.generic import PREDICT_METHOD_NAME

        self.path = path
        self.tags: tuple[str, ...] = ()
        self.backend = "python"
        self.meta_graph = meta_graph_pb2.MetaGraphDef()
        self.meta_graph.signature_def["serving_default"].method_name = PREDICT_METHOD_NAME
        self.signature_defs = dict(self.meta_graph.signature_def)
        self._fn = fn
        self._on_close = on_close

    def run(
        self,
        signature_name: str,
        inputs: Mapping[str, np.ndarray],
        output_keys: Sequence[str] | None = None,
    ) -> dict[str, np.ndarray]:
        """Run the model; see ``SavedModelServable.run``."""
        from pyserving.platforms.generic import as_output, call_user_code

        if signature_name not in self.signature_defs:
            raise FailedPrecondition(f'Serving signature key "{signature_name}" not found.')
        if self._fn is None:
            raise FailedPrecondition("The servable has been unloaded.")
        outputs = call_user_code(self._fn, dict(inputs))
        if not isinstance(outputs, Mapping):
            raise Internal(f"The model returned {type(outputs).__name__}, not a mapping")
        if output_keys is None:
            return {str(k): as_output(v) for k, v in outputs.items()}
        self.check_output_keys(signature_name, output_keys, outputs)
        return {k: as_output(outputs[k]) for k in output_keys}

    def check_output_keys(
        self,
        signature_name: str,
        output_keys: Sequence[str],
        outputs: Mapping[str, Any] | None = None,
    ) -> None:
        """Unknown signatures or repeated aliases raise; names are checked once known."""
        if signature_name not in self.signature_defs:
            raise FailedPrecondition(f'Serving signature key "{signature_name}" not found.')
        if len(set(output_keys)) != len(output_keys):
            raise InvalidArgument("duplicate output tensor alias")
        if outputs is not None:
            for key in output_keys:
                if key not in outputs:
                    raise InvalidArgument(
                        f"output tensor alias not found in signature: {key} Outputs expected "
                        f"to be in the set {{{','.join(sorted(outputs))}}}."
                    )

    def close(self) -> None:
        self._fn = None
        on_close, self._on_close = self._on_close, None
        if on_close is not None:
            on_close()


class PythonLoader(Loader):
    """Loads ``model.py`` (and the model of another platform beside it, if any)."""

    def __init__(self, path: str, options: PlatformOptions) -> None:
        self.path = path
        self.options = options
        try:
            platform = detect_platform(path, options, exclude=("python",))
            self._inner: Loader | None = platform.loader(path, options)
        except NotFound:
            self._inner = None
        self._servable: Any = None

    def wrap_inner(self, wrap: Callable[[Loader], Loader]) -> bool:
        """Replace the wrapped model's loader with ``wrap(loader)`` (the server wraps it in
        batching, so that batches merge the tensors ``preprocess`` produced). False, and
        nothing done, when there is no wrapped model. Only before ``load``."""
        if self._inner is None:
            return False
        self._inner = wrap(self._inner)
        return True

    def estimate_resources(self) -> ResourceEstimate:
        """The wrapped model's estimate (else 1.2 x the directory's files) plus
        :data:`OVERHEAD` for ``model.py``'s module and objects."""
        inner = (
            self._inner.estimate_resources()
            if self._inner is not None
            else estimate_from_disk(self.path)
        )
        return inner + ResourceEstimate(ram_bytes=OVERHEAD)

    def load(self) -> None:
        from pyserving.platforms.generic import call_user_code

        cls = import_model_class(self.path)
        try:
            model = cls()
            if hasattr(model, "load"):
                model.load(self.path)
        except (Exception, SystemExit) as exc:
            log.exception("Loading the Python model at %s failed", self.path)
            raise InvalidArgument(
                f"The Python model at {self.path} failed to load: {type(exc).__name__}: {exc}"
            ) from None
        inner = self._inner
        if inner is None:
            if not callable(getattr(model, "predict", None)):
                raise InvalidArgument(
                    f"{os.path.join(self.path, MODEL_FILE)}: Model has no predict method and "
                    "the directory holds no model of another platform"
                )
            self._servable = self._make(model, model.predict, None, None)
            return
        inner.load()
        try:
            servable = inner.servable()
            pre = getattr(model, "preprocess", None)
            post = getattr(model, "postprocess", None)

            def predict(inputs: dict[str, np.ndarray], key: str = "serving_default") -> Any:
                if pre is not None:
                    inputs = call_user_code(pre, inputs)
                    if not isinstance(inputs, Mapping):
                        raise Internal(
                            f"preprocess returned {type(inputs).__name__}, not a mapping of inputs"
                        )
                    inputs = {k: np.asarray(v) for k, v in inputs.items()}
                outputs: Any = servable.run(key, inputs)
                if post is not None:
                    outputs = call_user_code(post, outputs)
                return outputs

            self._servable = self._make(model, predict, servable, inner)
        except BaseException:
            inner.unload()
            raise

    def _make(self, model: Any, predict: Any, inner_servable: Any, inner: Loader | None) -> Any:
        from pyserving.platforms.generic import ModelServable, signature_def, signature_spec

        on_close = inner.unload if inner is not None else None
        declared = getattr(model, "signature", None)
        if declared is not None:
            try:
                spec = signature_spec(declared)
                signature_def(spec)  # every dtype and shape understood
            except (ValueError, KeyError, TypeError, AttributeError) as exc:
                raise InvalidArgument(
                    f"{os.path.join(self.path, MODEL_FILE)}: Model.signature is not valid "
                    f"({type(exc).__name__}: {exc}); it is {{'inputs': {{name: (dtype, shape)}}, "
                    "'outputs': {...}}"
                ) from None
            return ModelServable(
                self.path,
                {"serving_default": spec},
                {"serving_default": predict},
                backend="python",
                on_close=on_close,
                check_outputs=True,
            )
        has_hooks = hasattr(model, "preprocess") or hasattr(model, "postprocess")
        if inner_servable is not None and not has_hooks:
            signatures = dict(inner_servable.signature_defs)

            def bind(key: str) -> Any:
                return lambda inputs: predict(inputs, key)

            return ModelServable(
                self.path,
                signatures,
                {k: bind(k) for k in signatures},
                backend="python",
                on_close=on_close,
            )
        return OpenServable(self.path, predict, on_close)

    def unload(self) -> None:
        servable, self._servable = self._servable, None
        if servable is not None:
            try:
                servable.close()
            except Exception:
                log.exception("Closing %s failed", self.path)

    def servable(self) -> Any:
        if self._servable is None:
            raise FailedPrecondition("The servable is not loaded")
        return self._servable


class PythonPlatform(Platform):
    """Models in ``model.py`` (see the module docstring)."""

    name = "python"
    markers = (MODEL_FILE,)
    priority = 0

    def loader(self, path: str, options: PlatformOptions) -> Loader:
        return PythonLoader(path, options)
