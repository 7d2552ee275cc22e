"""Measure each platform's RAM estimate against the resident-set growth of one load.

Usage: ``python benchmarks/platform_ram.py [DIR]``: exports the example models
(``examples/platforms.py``) under DIR (a temporary directory by default), then, for each, in a
fresh process: imports the platform's runtime, loads the model, and prints the estimate,
the growth of the resident set over the load, and their ratio.
"""

from __future__ import annotations

import pathlib
import subprocess
import sys
import tempfile

ROOT = pathlib.Path(__file__).resolve().parents[1]

#: model -> modules imported before measuring (the runtime is not part of one load's cost).
MODELS = {
    "iris_sklearn": "sklearn,joblib",
    "iris_onnx": "onnxruntime",
    "iris_xgboost": "xgboost",
    "iris_lightgbm": "lightgbm",
    "iris_torch": "torch",
    "iris_keras": "keras,tensorflow",
    "flowers_python": "tensorflow",
}

_CHILD = """
import gc, importlib, os, sys
from pyserving.platforms.registry import PlatformOptions, detect_platform

def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

path, modules = sys.argv[1], sys.argv[2]
for module in modules.split(","):
    importlib.import_module(module)
platform = detect_platform(path, PlatformOptions())
loader = platform.loader(path, PlatformOptions())
estimate = loader.estimate_resources().ram_bytes
gc.collect()
before = rss()
loader.load()
gc.collect()
print(platform.name, estimate, rss() - before)
"""


def main(argv: list[str]) -> None:
    base = pathlib.Path(argv[1]) if len(argv) > 1 else pathlib.Path(tempfile.mkdtemp())
    sys.path.insert(0, str(ROOT / "examples"))
    import platforms  # type: ignore[import-not-found]

    platforms.write_all(base.resolve())
    print(f"{'model':16s} {'platform':10s} {'estimate':>12s} {'growth':>12s} {'ratio':>6s}")
    for name, modules in MODELS.items():
        out = subprocess.run(
            [sys.executable, "-c", _CHILD, str(base / name / "1"), modules],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.split()
        platform, estimate, growth = out[-3], int(out[-2]), int(out[-1])
        ratio = estimate / growth if growth > 0 else float("inf")
        print(f"{name:16s} {platform:10s} {estimate:>12d} {growth:>12d} {ratio:>6.2f}")


if __name__ == "__main__":
    main(sys.argv)
