"""Each platform's RAM estimate stays within 25% of what loading its example model costs.

The cost is measured as ``benchmarks/platform_ram.py`` does: in a fresh process per model,
with the runtime imported, the growth of the resident set over the first load (after
``gc.collect()`` and ``malloc_trim``, which make it repeatable to about 1% between runs; see
docs/configuration.md for the figures). A platform whose loading cost changes (a new runtime
version, a change to the loader) fails here until its overhead is measured again.
"""

from __future__ import annotations

import pathlib

import pytest
from benchmarks import platform_ram

pytestmark = pytest.mark.slow

for module in ("sklearn", "skl2onnx", "onnxruntime", "xgboost", "lightgbm", "torch", "keras"):
    pytest.importorskip(module)


@pytest.fixture(scope="module")
def examples(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    return platform_ram.export(tmp_path_factory.mktemp("ram_examples"))


@pytest.mark.parametrize("model", list(platform_ram.MODELS))
def test_the_estimate_is_within_25_percent_of_the_load(examples: pathlib.Path, model: str) -> None:
    measured = platform_ram.measure(examples, model)
    low, high = platform_ram.BAND
    assert low <= measured.ratio <= high, (
        f"{model} ({measured.platform}): estimate {measured.estimate:,} bytes, a load grew "
        f"the process by {measured.growth:,} bytes (ratio {measured.ratio:.2f})"
    )
