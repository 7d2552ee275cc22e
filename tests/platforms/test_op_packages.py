"""Op packages: the op types a graph uses, importing the packages that register the missing
ones, and the error naming ops and package when that is not enough.

The registry and the import are injected, so these tests need no op library; the table of
TF Text ops is checked against what ``import tensorflow_text`` really registers (in a fresh
interpreter). TF Text models themselves are served end to end in ``tests/e2e/test_tf_text.py``.
"""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys
import textwrap
from types import ModuleType

import pytest
from tensorflow.core.framework import graph_pb2
from tensorflow.core.protobuf import saved_model_pb2

from pyserving.errors import NotFound
from pyserving.platforms.tensorflow import SavedModelLoader
from pyserving.platforms.tensorflow.op_packages import (
    OP_PACKAGES,
    TENSORFLOW_TEXT,
    OpPackage,
    graph_op_types,
    require_ops,
)

TEXT_OPS = OpPackage(
    module="fake_text_ops",
    distribution="fake-text-ops",
    extra="faketext",
    ops=frozenset({"Tokenize", "Normalize"}),
    namespaces=("Fake>",),
)
IMAGE_OPS = OpPackage(
    module="fake_image_ops",
    distribution="fake-image-ops",
    extra=None,
    ops=frozenset({"Resize"}),
)


class FakeTensorFlow:
    """A registry holding TensorFlow's own ops, and packages registering theirs on import."""

    def __init__(self, registers: dict[str, set[str]], *, fails: dict[str, Exception]) -> None:
        self.registered = {"Const", "AddV2", "Placeholder"}
        self.registers = registers
        self.fails = fails
        self.imported: list[str] = []

    def is_registered(self, op: str) -> bool:
        return op in self.registered

    def import_module(self, name: str) -> ModuleType:
        self.imported.append(name)
        if name in self.fails:
            raise self.fails[name]
        if name not in self.registers:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        self.registered |= self.registers[name]
        return ModuleType(name)

    def require(self, ops: set[str]) -> list[str]:
        return require_ops(
            ops,
            packages=(TEXT_OPS, IMAGE_OPS),
            import_module=self.import_module,
            registered=self.is_registered,
        )


def fake_tf(
    registers: dict[str, set[str]] | None = None, *, fails: dict[str, Exception] | None = None
) -> FakeTensorFlow:
    return FakeTensorFlow(registers or {}, fails=fails or {})


# ----------------------------------------------------------------------------- op types


def test_graph_op_types_include_function_bodies_not_function_calls() -> None:
    graph = graph_pb2.GraphDef()
    graph.node.add(name="x", op="Placeholder")
    graph.node.add(name="call", op="StatefulPartitionedCall")
    graph.node.add(name="direct", op="my_function")  # a TF1 graph calling a function by name
    function = graph.library.function.add()
    function.signature.name = "my_function"
    function.node_def.add(name="tokens", op="Tokenize")
    function.node_def.add(name="nested", op="other_function")
    graph.library.function.add().signature.name = "other_function"
    assert graph_op_types(graph) == {"Placeholder", "StatefulPartitionedCall", "Tokenize"}


# ----------------------------------------------------------------------------- require_ops


def test_nothing_missing_imports_nothing() -> None:
    tf = fake_tf({"fake_text_ops": {"Tokenize"}})
    assert tf.require({"Const", "AddV2"}) == []
    assert tf.imported == []


def test_imports_only_the_packages_providing_missing_ops() -> None:
    tf = fake_tf({"fake_text_ops": {"Tokenize", "Normalize"}, "fake_image_ops": {"Resize"}})
    assert tf.require({"Const", "Tokenize"}) == ["fake_text_ops"]
    assert tf.imported == ["fake_text_ops"]
    assert tf.require({"Tokenize", "Resize"}) == ["fake_image_ops"]  # text ops now registered


def test_namespaced_ops_belong_to_their_package() -> None:
    assert TEXT_OPS.provides("Fake>AnythingNew")
    assert not IMAGE_OPS.provides("Fake>AnythingNew")
    assert TENSORFLOW_TEXT.provides("TFText>SomeFutureOp")
    assert TENSORFLOW_TEXT.provides("ConstrainedSequence")
    assert not TENSORFLOW_TEXT.provides("AddV2")


def test_package_not_installed() -> None:
    tf = fake_tf()
    with pytest.raises(NotFound) as info:
        tf.require({"Const", "Tokenize", "Normalize"})
    assert info.value.message == (
        "Op type not registered in TensorFlow: Normalize, Tokenize (from the Python package "
        "fake-text-ops, which is not installed: pip install 'pyserving[faketext]')"
    )
    with pytest.raises(NotFound) as info:
        tf.require({"Resize"})
    assert info.value.message == (
        "Op type not registered in TensorFlow: Resize (from the Python package "
        "fake-image-ops, which is not installed: pip install fake-image-ops)"
    )


def test_import_blocked_counts_as_not_installed() -> None:
    # what `import` raises when sys.modules[name] is None
    blocked = ModuleNotFoundError("import of fake_text_ops halted", name="fake_text_ops")
    tf = fake_tf(fails={"fake_text_ops": blocked})
    with pytest.raises(NotFound, match=r"fake-text-ops, which is not installed"):
        tf.require({"Tokenize"})


def test_package_whose_import_fails() -> None:
    broken = ImportError("undefined symbol: _ZN10tensorflow8OpKernel")
    tf = fake_tf(fails={"fake_text_ops": broken})
    with pytest.raises(NotFound) as info:
        tf.require({"Tokenize"})
    assert info.value.message == (
        "Op type not registered in TensorFlow: Tokenize (from the Python package fake-text-ops, "
        "whose import failed: ImportError: undefined symbol: _ZN10tensorflow8OpKernel; "
        "pip install 'pyserving[faketext]' installs the release built for this TensorFlow)"
    )
    dependency = ModuleNotFoundError("No module named 'sentencepiece'", name="sentencepiece")
    tf = fake_tf(fails={"fake_text_ops": dependency})
    with pytest.raises(NotFound, match=r"whose import failed: ModuleNotFoundError: No module"):
        tf.require({"Tokenize"})


def test_installed_release_lacks_an_op() -> None:
    tf = fake_tf({"fake_text_ops": {"Tokenize"}})
    with pytest.raises(NotFound) as info:
        tf.require({"Tokenize", "Normalize"})
    assert info.value.message.startswith(
        "Op type not registered in TensorFlow: Normalize (not registered by the installed "
        "fake-text-ops "
    )
    assert info.value.message.endswith(
        "install the release built for this TensorFlow: pip install 'pyserving[faketext]')"
    )


def test_op_no_package_provides() -> None:
    tf = fake_tf({"fake_text_ops": {"Tokenize"}})
    with pytest.raises(NotFound) as info:
        tf.require({"MyCustomOp", "Tokenize", "Resize"})
    assert info.value.message == (
        "Op type not registered in TensorFlow: Resize (from the Python package fake-image-ops, "
        "which is not installed: pip install fake-image-ops); MyCustomOp (no op package "
        "pyserving knows provides them; known packages: fake-text-ops, fake-image-ops)"
    )
    assert tf.imported == ["fake_text_ops", "fake_image_ops"]


# ----------------------------------------------------------------------------- the loader


def _saved_model_with_op(path: pathlib.Path, op: str) -> pathlib.Path:
    """A SavedModel whose graph has one node of type ``op``."""
    proto = saved_model_pb2.SavedModel()
    meta_graph = proto.meta_graphs.add()
    meta_graph.meta_info_def.tags.append("serve")
    meta_graph.graph_def.node.add(name="x", op="Placeholder")
    meta_graph.graph_def.node.add(name="y", op=op).input.append("x")
    path.mkdir(parents=True)
    (path / "saved_model.pb").write_bytes(proto.SerializeToString())
    return path


def test_loader_names_the_missing_op_and_package(tmp_path: pathlib.Path) -> None:
    path = _saved_model_with_op(tmp_path / "1", "PyservingTestOnlyTokenize")
    absent = OpPackage(
        module="pyserving_test_absent_module",
        distribution="pyserving-test-ops",
        extra="testops",
        ops=frozenset({"PyservingTestOnlyTokenize"}),
    )
    loader = SavedModelLoader(str(path), op_packages=[absent])
    with pytest.raises(NotFound) as info:
        loader.load()
    assert info.value.message == (
        "Op type not registered in TensorFlow: PyservingTestOnlyTokenize (from the Python "
        "package pyserving-test-ops, which is not installed: pip install 'pyserving[testops]')"
    )
    with pytest.raises(NotFound, match=r"known packages: tensorflow-text\)$"):
        SavedModelLoader(str(path)).load()


# ----------------------------------------------------------------------------- the table


def test_tensorflow_text_table_matches_the_installed_package() -> None:
    """``TENSORFLOW_TEXT.ops`` is what importing ``tensorflow_text`` registers (checked in a
    fresh interpreter, where nothing has imported it yet)."""
    script = textwrap.dedent(
        """
        import json
        from tensorflow.core.framework import op_def_pb2
        from tensorflow.python.client import pywrap_tf_session as c_api

        def registered():
            ops = op_def_pb2.OpList()
            ops.ParseFromString(c_api.TF_GetBuffer(c_api.TF_GetAllOpList()))
            return {op.name for op in ops.op}

        before = registered()
        import tensorflow_text  # noqa: F401
        print(json.dumps(sorted(registered() - before)))
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr
    assert set(json.loads(result.stdout.splitlines()[-1])) == TENSORFLOW_TEXT.ops
    assert OP_PACKAGES[0] is TENSORFLOW_TEXT
