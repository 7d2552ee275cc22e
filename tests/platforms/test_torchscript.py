"""TorchScript modules (``model.pt``): inputs named as ``forward``'s arguments, of the dtype
the request gives unless a signature is declared, one ``output``; a shape or dtype the
module cannot take is INVALID_ARGUMENT."""

from __future__ import annotations

import json
import pathlib
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

from pyserving.errors import InvalidArgument
from pyserving.platforms.registry import PlatformOptions, detect_platform

torch = pytest.importorskip("torch")

# TorchScript is deprecated in favour of torch.export; its modules are still served.
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


class Affine(torch.nn.Module):
    def forward(self, features: torch.Tensor, offset: torch.Tensor) -> torch.Tensor:
        return features @ torch.ones(3, 2) + offset


class Lookup(torch.nn.Module):
    """Token ids (any integer dtype) and a boolean mask in; the masked sum of the ids'
    embeddings (float32) out. Float ids are refused by ``embedding``."""

    def __init__(self) -> None:
        super().__init__()
        self.table = torch.nn.Embedding(10, 2)
        with torch.no_grad():
            self.table.weight.copy_(torch.arange(20, dtype=torch.float32).reshape(10, 2))

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return (self.table(ids) * mask.unsqueeze(-1).to(torch.float32)).sum(dim=1)


def _load(version: pathlib.Path) -> Iterator[Any]:
    platform = detect_platform(str(version), PlatformOptions())
    assert platform.name == "pytorch"
    loader = platform.loader(str(version), PlatformOptions())
    loader.load()
    try:
        yield loader.servable()
    finally:
        loader.unload()


@pytest.fixture
def affine(tmp_path: pathlib.Path) -> Iterator[Any]:
    version = tmp_path / "1"
    version.mkdir()
    torch.jit.save(torch.jit.script(Affine()), str(version / "model.pt"))
    yield from _load(version)


def test_torchscript_module(affine: Any) -> None:
    signature = affine.signature_defs["serving_default"]
    assert set(signature.inputs) == {"features", "offset"}
    assert list(signature.outputs) == ["output"]
    assert signature.inputs["features"].dtype == 0  # DT_INVALID: the request's dtype
    assert signature.inputs["features"].tensor_shape.unknown_rank
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    out = affine.run("serving_default", {"features": x, "offset": np.ones(2, np.float32)})
    assert out["output"].tolist() == [[4.0, 4.0], [13.0, 13.0]]
    assert out["output"].dtype == np.float32
    with pytest.raises(InvalidArgument):
        affine.run(
            "serving_default",
            {"features": np.ones((2, 5), np.float32), "offset": np.ones(2, np.float32)},
        )
    # float64 in: the matmul with float32 weights is a dtype error PyTorch reports.
    with pytest.raises(InvalidArgument, match=r"dtype|type"):
        affine.run("serving_default", {"features": x.astype(np.float64), "offset": x[0, :2]})


@pytest.mark.parametrize("id_dtype", [np.int64, np.int32])
def test_inputs_take_the_dtype_the_request_gives(tmp_path: pathlib.Path, id_dtype: Any) -> None:
    version = tmp_path / "1"
    version.mkdir()
    torch.jit.save(torch.jit.script(Lookup()), str(version / "model.pt"))
    for servable in _load(version):
        ids = np.array([[1, 2, 3], [4, 5, 6]], dtype=id_dtype)
        mask = np.array([[True, True, False], [True, False, False]])
        out = servable.run("serving_default", {"ids": ids, "mask": mask})["output"]
        assert out.dtype == np.float32
        assert out.tolist() == [[2 + 4, 3 + 5], [8, 9]]
        with pytest.raises(InvalidArgument):  # embedding takes integer ids only
            servable.run("serving_default", {"ids": ids.astype(np.float32), "mask": mask})


class Twice(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * 2


@pytest.mark.parametrize("dtype", [np.float64, np.float16, np.int16, np.bool_])
def test_the_output_keeps_the_dtype_the_module_computes(tmp_path: pathlib.Path, dtype: Any) -> None:
    version = tmp_path / "1"
    version.mkdir()
    torch.jit.save(torch.jit.script(Twice()), str(version / "model.pt"))
    for servable in _load(version):
        x = np.array([[1, 0], [1, 1]], dtype=dtype)
        out = servable.run("serving_default", {"x": x})["output"]
        expected = torch.from_numpy(x) * 2
        assert out.dtype == expected.numpy().dtype
        assert out.tolist() == expected.tolist()


def test_a_declared_signature_gives_dtypes_and_shapes(tmp_path: pathlib.Path) -> None:
    declared = {
        "inputs": {
            "ids": {"dtype": "int64", "shape": [-1, 3]},
            "mask": {"dtype": "bool", "shape": [-1, 3]},
        },
        "outputs": {"output": {"dtype": "float32", "shape": [-1, 2]}},
    }
    inside = tmp_path / "inside" / "1"
    inside.mkdir(parents=True)
    torch.jit.save(
        torch.jit.script(Lookup()),
        str(inside / "model.pt"),
        _extra_files={"signature.json": json.dumps(declared)},
    )
    beside = tmp_path / "beside" / "1"
    beside.mkdir(parents=True)
    torch.jit.save(torch.jit.script(Lookup()), str(beside / "model.pt"))
    (beside / "signature.json").write_text(json.dumps({"inputs": declared["inputs"]}))
    for version, output_dtype in ((inside, 1), (beside, 0)):
        for servable in _load(version):
            signature = servable.signature_defs["serving_default"]
            assert signature.inputs["ids"].dtype == 9  # DT_INT64
            assert signature.inputs["mask"].dtype == 10  # DT_BOOL
            assert [d.size for d in signature.inputs["ids"].tensor_shape.dim] == [-1, 3]
            assert signature.outputs["output"].dtype == output_dtype
            ids = np.array([[1, 2, 3]], dtype=np.int64)
            mask = np.ones((1, 3), dtype=bool)
            out = servable.run("serving_default", {"ids": ids, "mask": mask})["output"]
            assert out.tolist() == [[2 + 4 + 6, 3 + 5 + 7]]
            with pytest.raises(InvalidArgument, match="Expects arg"):  # declared: int64 only
                servable.run("serving_default", {"ids": ids.astype(np.int32), "mask": mask})


def test_a_bad_declared_signature_fails_the_load(tmp_path: pathlib.Path) -> None:
    version = tmp_path / "1"
    version.mkdir()
    torch.jit.save(torch.jit.script(Lookup()), str(version / "model.pt"))
    (version / "signature.json").write_text(json.dumps({"inputs": {"tokens": "int64"}}))
    loader = detect_platform(str(version), PlatformOptions()).loader(
        str(version), PlatformOptions()
    )
    with pytest.raises(InvalidArgument, match=r"declares inputs \['tokens'\]"):
        loader.load()
