"""``pyserving inspect PATH``: what a SavedModel holds, as ``saved_model_cli show --all``.

PATH is a SavedModel directory (holding ``saved_model.pb`` or ``saved_model.pbtxt``) or a
model base path whose version sub-directories are each shown. Reads the protos only; nothing
is loaded or run. Exit status 0, or 1 with a message when PATH holds no SavedModel.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from typing import Any, TextIO

from pyserving.sources.filesystem import list_versions


def read_saved_model(path: str) -> Any:
    """The ``SavedModel`` proto of the export at ``path`` (``FileNotFoundError`` if none)."""
    from google.protobuf import text_format
    from tensorflow.core.protobuf import saved_model_pb2

    proto = saved_model_pb2.SavedModel()
    pb = os.path.join(path, "saved_model.pb")
    pbtxt = os.path.join(path, "saved_model.pbtxt")
    if os.path.isfile(pb):
        with open(pb, "rb") as f:
            proto.ParseFromString(f.read())
    elif os.path.isfile(pbtxt):
        with open(pbtxt, encoding="utf-8") as f:
            text_format.Parse(f.read(), proto)
    else:
        raise FileNotFoundError(
            f"Could not find SavedModel .pb or .pbtxt at supplied export directory path: {path}"
        )
    return proto


def _dtype_name(dtype: int) -> str:
    from tensorflow.core.framework import types_pb2

    return str(types_pb2.DataType.Name(dtype))


def _shape(tensor_info: Any) -> str:
    shape = tensor_info.tensor_shape
    if shape.unknown_rank:
        return "unknown_rank"
    dims = [str(d.size) for d in shape.dim]
    if len(dims) == 1:
        return f"({dims[0]})"
    return "(" + ", ".join(dims) + ")"


def _tensor(kind: str, key: str, info: Any, out: TextIO) -> None:
    out.write(f"    {kind}['{key}'] tensor_info:\n")
    out.write(f"        dtype: {_dtype_name(info.dtype)}\n")
    out.write(f"        shape: {_shape(info)}\n")
    if info.WhichOneof("encoding") == "name":
        out.write(f"        name: {info.name}\n")
    else:
        out.write(f"        encoding: {info.WhichOneof('encoding')}\n")


def show_saved_model(path: str, out: TextIO) -> None:
    """Write every tag-set and SignatureDef of the export at ``path``."""
    proto = read_saved_model(path)
    for meta_graph in proto.meta_graphs:
        tags = ", ".join(meta_graph.meta_info_def.tags)
        out.write(f"\nMetaGraphDef with tag-set: '{tags}' contains the following SignatureDefs:\n")
        for name in sorted(meta_graph.signature_def):
            sig = meta_graph.signature_def[name]
            out.write(f"\nsignature_def['{name}']:\n")
            out.write("  The given SavedModel SignatureDef contains the following input(s):\n")
            for key in sorted(sig.inputs):
                _tensor("inputs", key, sig.inputs[key], out)
            out.write("  The given SavedModel SignatureDef contains the following output(s):\n")
            for key in sorted(sig.outputs):
                _tensor("outputs", key, sig.outputs[key], out)
            out.write(f"  Method name is: {sig.method_name}\n")


def main(argv: Sequence[str]) -> int:
    """Entry point of ``pyserving inspect``."""
    if len(argv) != 1 or argv[0].startswith("-"):
        sys.stderr.write("usage: pyserving inspect PATH\n")
        return 2
    path = argv[0]
    try:
        if os.path.isdir(path) and not (
            os.path.isfile(os.path.join(path, "saved_model.pb"))
            or os.path.isfile(os.path.join(path, "saved_model.pbtxt"))
        ):
            versions = list_versions(path)
            if not versions:
                raise FileNotFoundError(
                    f"{path} holds neither a SavedModel nor version sub-directories"
                )
            for version, version_path in sorted(versions.items()):
                sys.stdout.write(f"Version {version} ({version_path}):\n")
                show_saved_model(version_path, sys.stdout)
                sys.stdout.write("\n")
        else:
            show_saved_model(path, sys.stdout)
    except (OSError, ValueError) as exc:
        sys.stderr.write(f"pyserving inspect: {exc}\n")
        return 1
    return 0
