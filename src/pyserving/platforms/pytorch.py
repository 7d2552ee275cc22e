"""The ``pytorch`` platform: ``model.pt2`` (``torch.export``) or ``model.pt`` (TorchScript),
run on CPU in inference mode (extra ``[torch]``).

Signature ``serving_default`` (method predict):

* ``model.pt2``: inputs are the exported program's user inputs by name, with the dtypes and
  shapes it was exported with (dynamic dimensions as -1); outputs are ``output`` for a single
  tensor, ``output_0``, ``output_1``... for a tuple or list, or the keys of a dict.
* ``model.pt``: TorchScript keeps no dtypes: inputs are ``forward``'s arguments by name,
  float32 of any shape; the single output is ``output`` (float32, any shape).

Inputs are passed positionally in the program's order; arrays are converted with
``torch.from_numpy`` (no copy). Errors PyTorch raises about the request (a shape or dtype the
program cannot take, raised as ``RuntimeError``/``ValueError``/``AssertionError``... by
``torch.export``'s guards) are INVALID_ARGUMENT with PyTorch's message.

Threads: ``--tensorflow_intra_op_parallelism`` (or ``--tensorflow_session_parallelism``),
when set, is passed to ``torch.set_num_threads`` (process-wide).

RAM estimate: 1.2 x the model file's size plus a fixed overhead measured on the example model.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import numpy as np

from pyserving.core.loader import Loader
from pyserving.platforms.generic_estimate import MIB, estimate
from pyserving.platforms.registry import Platform, PlatformOptions

#: RAM a loaded version takes beyond its files' size (the example model's load grew
#: the process by 95 MB; see docs/configuration.md, Model platforms).
OVERHEAD = 100 * MIB

EXPORTED_FILE = "model.pt2"
TORCHSCRIPT_FILE = "model.pt"


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
        module = torch.jit.load(os.path.join(path, TORCHSCRIPT_FILE), map_location="cpu")
        module.eval()
        arguments = module.forward.schema.arguments[1:]
        names = [a.name for a in arguments]
        inputs = {name: TensorSpec(np.float32) for name in names}
        outputs = {"output": TensorSpec(np.float32)}

    def run(feeds: dict[str, np.ndarray]) -> dict[str, Any]:
        tensors = [torch.from_numpy(np.ascontiguousarray(feeds[name])) for name in names]
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


class PyTorchPlatform(Platform):
    """PyTorch programs (``torch.export``) and TorchScript modules."""

    name = "pytorch"
    markers = (EXPORTED_FILE, TORCHSCRIPT_FILE)
    priority = 30

    def loader(self, path: str, options: PlatformOptions) -> Loader:
        from pyserving.platforms.generic import ModelLoader

        return ModelLoader(path, lambda: torch_servable(path, options), estimate(path, OVERHEAD))
