"""The ``pytorch`` platform: ``model.pt2`` (``torch.export``) or ``model.pt`` (TorchScript),
run on CPU in inference mode (extra ``[torch]``).

Signature ``serving_default`` (method predict):

* ``model.pt2``: inputs are the exported program's user inputs by name, with the dtypes and
  shapes it was exported with (dynamic dimensions as -1); outputs are ``output`` for a single
  tensor, ``output_0``, ``output_1``... for a tuple or list, or the keys of a dict.
* ``model.pt``: inputs are ``forward``'s arguments by name; the output is ``output`` (a
  module returning a tuple or a dict: ``output_0``... or its keys, to be declared).
  TorchScript keeps no dtypes or shapes, so unless they are declared each input takes the
  dtype and shape the request gives (int64, int32, float64, bool...: ``DT_INVALID`` in
  metadata; over REST JSON, the dtype the values read as: integers int64, any float float32,
  booleans bool) and ``output`` has no declared dtype. Declare them with a JSON signature
  ``{"inputs": {name: {"dtype": "int64", "shape": [-1, 8]}}, "outputs": {...}}`` (the Python
  platform's ``signature`` format; ``outputs`` optional), saved inside the module with
  ``torch.jit.save(module, "model.pt", _extra_files={"signature.json": text})`` or as
  ``signature.json`` beside it. Declared inputs must have the declared dtype.

Inputs are passed positionally in the program's order; arrays are converted with
``torch.from_numpy`` (no copy). Errors PyTorch raises about the request (a shape or dtype the
program cannot take, raised as ``RuntimeError``/``ValueError``/``AssertionError``... by
``torch.export``'s guards) are INVALID_ARGUMENT with PyTorch's message.

Threads: ``--tensorflow_intra_op_parallelism`` (or ``--tensorflow_session_parallelism``),
when set, is passed to ``torch.set_num_threads`` (process-wide).

RAM estimate: 1.2 x the model file's size plus a fixed overhead measured on the example model.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any

import numpy as np

from pyserving.core.loader import Loader
from pyserving.platforms.generic_estimate import MIB, estimate
from pyserving.platforms.registry import Platform, PlatformOptions

#: RAM a loaded version takes beyond its files' size (the example model's first load grew
#: the process by 97.7 MB, mostly what ``torch.export.load`` imports and initializes once;
#: see docs/configuration.md, Model platforms).
OVERHEAD = 100 * MIB

EXPORTED_FILE = "model.pt2"
TORCHSCRIPT_FILE = "model.pt"
#: A TorchScript module's declared signature (inside ``model.pt`` or beside it).
SIGNATURE_FILE = "signature.json"


def _numpy_dtype(torch: Any, dtype: Any) -> Any:
    return torch.empty((), dtype=dtype).numpy().dtype


def _spec_of(torch: Any, value: Any) -> Any:
    from pyserving.platforms.generic import TensorSpec

    shape = tuple(int(d) if isinstance(d, int) else -1 for d in value.shape)
    return TensorSpec(_numpy_dtype(torch, value.dtype), shape)


def _output_names(structure: Any) -> list[str]:
    if isinstance(structure, Mapping):
        return [str(k) for k in structure]
    if isinstance(structure, (tuple, list)):
        return [f"output_{i}" for i in range(len(structure))]
    return ["output"]


def _outputs(result: Any) -> dict[str, Any]:
    if isinstance(result, Mapping):
        items = [(str(k), v) for k, v in result.items()]
    elif isinstance(result, (tuple, list)):
        items = [(f"output_{i}", v) for i, v in enumerate(result)]
    else:
        items = [("output", result)]
    return {k: v.detach().cpu().numpy() if hasattr(v, "detach") else v for k, v in items}


def _torchscript(torch: Any, path: str) -> tuple[Any, list[str], dict[str, Any], dict[str, Any]]:
    """A TorchScript module, its input names in ``forward``'s order, and its input and
    output specs (see the module docstring)."""
    from pyserving.platforms.generic import TensorSpec, signature_spec

    extra = {SIGNATURE_FILE: ""}
    module = torch.jit.load(
        os.path.join(path, TORCHSCRIPT_FILE), map_location="cpu", _extra_files=extra
    )
    module.eval()
    text: str | bytes = extra[SIGNATURE_FILE]
    beside = os.path.join(path, SIGNATURE_FILE)
    if not text and os.path.isfile(beside):
        with open(beside, "rb") as f:
            text = f.read()
    arguments = module.forward.schema.arguments[1:]
    names = [a.name for a in arguments]
    inputs: dict[str, Any] = {name: TensorSpec(None) for name in names}
    outputs: dict[str, Any] = {"output": TensorSpec(None)}
    if text:
        try:
            declared = json.loads(text)
            spec = signature_spec({"inputs": {}, "outputs": outputs, **declared})
        except (ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"{SIGNATURE_FILE} is not a valid signature: {exc}") from None
        unknown = sorted(set(spec.inputs) - set(names))
        if unknown:
            raise ValueError(
                f"{SIGNATURE_FILE} declares inputs {unknown} that forward does not take "
                f"(its tensor arguments: {names})"
            )
        inputs.update(spec.inputs)
        outputs = dict(spec.outputs)
    return module, names, inputs, outputs


def torch_servable(path: str, options: PlatformOptions) -> Any:
    """Load the version directory ``path`` (see the module docstring)."""
    from pyserving.errors import InvalidArgument
    from pyserving.platforms.generic import ModelServable, SignatureSpec, TensorSpec, require

    torch = require("torch", "torch")
    if options.intra_op_threads > 0:
        torch.set_num_threads(options.intra_op_threads)
    exported = os.path.join(path, EXPORTED_FILE)
    if os.path.isfile(exported):
        program = torch.export.load(exported)
        module = program.module()
        # The module's pre-hook checks on every call that the arguments have the program's
        # input structure (a pytree walk, ~25 us of a 60 us call for a small model); they
        # always do here (one tensor per user input, in order), and the shape guards run
        # inside the module's forward regardless.
        module.validate_inputs = False
        placeholders = {n.name: n for n in program.graph.nodes if n.op == "placeholder"}
        names = [
            spec.arg.name
            for spec in program.graph_signature.input_specs
            if spec.kind == torch.export.graph_signature.InputKind.USER_INPUT
        ]
        inputs = {name: _spec_of(torch, placeholders[name].meta["val"]) for name in names}
        output_node = next(n for n in program.graph.nodes if n.op == "output")
        user_outputs = [
            spec.arg.name
            for spec in program.graph_signature.output_specs
            if spec.kind == torch.export.graph_signature.OutputKind.USER_OUTPUT
        ]
        values = {a.name: a.meta.get("val") for a in output_node.args[0] if hasattr(a, "name")}
        out_spec = program.call_spec.out_spec
        structure: Any = None
        if out_spec is not None and out_spec.type is dict:
            structure = dict.fromkeys(out_spec.context)
        elif out_spec is not None and out_spec.type in (tuple, list):
            structure = [None] * len(user_outputs)
        out_names = _output_names(structure)
        outputs = {
            alias: _spec_of(torch, values[node])
            if values.get(node) is not None
            else TensorSpec(np.float32)
            for alias, node in zip(out_names, user_outputs, strict=True)
        }
    else:
        module, names, inputs, outputs = _torchscript(torch, path)

    def run(feeds: dict[str, np.ndarray]) -> dict[str, Any]:
        tensors = []
        for name in names:
            array = np.ascontiguousarray(feeds[name])
            try:
                tensors.append(torch.from_numpy(array))
            except TypeError:  # strings, objects: no PyTorch tensor holds them
                raise InvalidArgument(
                    f"Input '{name}' holds {_numpy_kind(array)}, which PyTorch tensors cannot"
                ) from None
        try:
            with torch.inference_mode():
                result = module(*tensors)
        except (RuntimeError, ValueError, AssertionError, TypeError, IndexError) as exc:
            raise InvalidArgument(" ".join(str(exc).split()) or type(exc).__name__) from None
        return _outputs(result)

    return ModelServable(
        path,
        {"serving_default": SignatureSpec(inputs, outputs)},
        {"serving_default": run},
        backend="pytorch",
    )


def _numpy_kind(array: np.ndarray) -> str:
    return "strings" if array.dtype.kind in "OSU" else f"{array.dtype.name} values"


class PyTorchPlatform(Platform):
    """PyTorch programs (``torch.export``) and TorchScript modules."""

    name = "pytorch"
    markers = (EXPORTED_FILE, TORCHSCRIPT_FILE)
    priority = 30

    def loader(self, path: str, options: PlatformOptions) -> Loader:
        from pyserving.platforms.generic import ModelLoader

        return ModelLoader(path, lambda: torch_servable(path, options), estimate(path, OVERHEAD))
