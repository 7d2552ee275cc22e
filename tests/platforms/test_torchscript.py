"""TorchScript modules (``model.pt``): inputs named as ``forward``'s arguments, float32, one
``output``; a shape the module cannot take is INVALID_ARGUMENT."""

from __future__ import annotations

import pathlib

import numpy as np
import pytest

from pyserving.errors import InvalidArgument
from pyserving.platforms.registry import PlatformOptions, detect_platform

torch = pytest.importorskip("torch")


# TorchScript is deprecated in favour of torch.export; its modules are still served.
@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_torchscript_module(tmp_path: pathlib.Path) -> None:
    class Affine(torch.nn.Module):
        def forward(self, features: torch.Tensor, offset: torch.Tensor) -> torch.Tensor:
            return features @ torch.ones(3, 2) + offset

    version = tmp_path / "1"
    version.mkdir()
    torch.jit.save(torch.jit.script(Affine()), str(version / "model.pt"))
    platform = detect_platform(str(version), PlatformOptions())
    assert platform.name == "pytorch"
    loader = platform.loader(str(version), PlatformOptions())
    loader.load()
    try:
        servable = loader.servable()
        signature = servable.signature_defs["serving_default"]
        assert set(signature.inputs) == {"features", "offset"}
        assert list(signature.outputs) == ["output"]
        x = np.arange(6, dtype=np.float32).reshape(2, 3)
        out = servable.run("serving_default", {"features": x, "offset": np.ones(2, np.float32)})
        assert out["output"].tolist() == [[4.0, 4.0], [13.0, 13.0]]
        with pytest.raises(InvalidArgument):
            servable.run(
                "serving_default",
                {"features": np.ones((2, 5), np.float32), "offset": np.ones(2, np.float32)},
            )
    finally:
        loader.unload()
