"""Measure each platform's RAM estimate against the resident-set growth of loading its example.

Usage: ``python -m benchmarks.platform_ram [--repeat N] [--later] [DIR]``: exports the
example models (``examples/platforms.py``, and the bundled flowers SavedModel for the
``tensorflow`` platform) under DIR (a temporary directory by default), then, for each, in a
fresh process (``--repeat`` times): imports the platform's runtime, reads the loader's
estimate, loads the model, and prints the estimate, the growth of the resident set over the
load, and their ratio (estimate / growth; the target band is 0.75-1.25). ``--later`` also
loads the model a second and third time in the same process (new loaders) and prints what
those loads grew the process by: the runtime's one-time costs are paid by the first load.

The resident set is read from ``/proc/self/statm`` after ``gc.collect()`` and glibc's
``malloc_trim(0)`` (freed heap pages are returned first, so the growth is memory the loaded
model holds rather than the allocator's free lists).
``tests/platforms/test_ram_estimates.py`` runs :func:`measure` for every platform and fails
when an estimate leaves the band.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import shutil
import statistics
import subprocess
import sys
import tempfile
from dataclasses import dataclass

ROOT = pathlib.Path(__file__).resolve().parents[1]

#: model -> modules imported before measuring (the runtime's import is not part of a load).
MODELS = {
    "iris_sklearn": "sklearn,joblib",
    "iris_onnx": "onnxruntime",
    "iris_xgboost": "xgboost",
    "iris_lightgbm": "lightgbm",
    "iris_torch": "torch",
    "iris_keras": "keras,tensorflow",
    "flowers_python": "tensorflow",
    "flowers_tensorflow": "tensorflow",
}

#: The band an estimate must stay in: estimate / measured growth.
BAND = (0.75, 1.25)

_CHILD = """
import ctypes, gc, importlib, json, os, sys
from pyserving.platforms.registry import PlatformOptions, detect_platform

libc = ctypes.CDLL("libc.so.6")

def rss():
    gc.collect()
    libc.malloc_trim(0)
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

path, modules, loads = sys.argv[1], sys.argv[2], int(sys.argv[3])
for module in modules.split(","):
    importlib.import_module(module)
platform = detect_platform(path, PlatformOptions())
estimates, growths, loaders = [], [], []
for _ in range(loads):
    loader = platform.loader(path, PlatformOptions())
    estimates.append(loader.estimate_resources().ram_bytes)
    before = rss()
    loader.load()
    growths.append(rss() - before)
    loaders.append(loader)
print(json.dumps({"platform": platform.name, "estimates": estimates, "growths": growths}))
"""


@dataclass(frozen=True)
class Measurement:
    """One fresh process's loads of one model: the estimate before the first load, the
    resident-set growth of the first load, and of the later loads (``--later``)."""

    model: str
    platform: str
    estimate: int
    growth: int
    later: tuple[int, ...] = ()

    @property
    def ratio(self) -> float:
        return self.estimate / self.growth if self.growth > 0 else float("inf")


def export(base: pathlib.Path) -> pathlib.Path:
    """Every example model under ``base`` (skipping those already there); returns ``base``."""
    sys.path.insert(0, str(ROOT / "examples"))
    try:
        import platforms  # type: ignore[import-not-found]
    finally:
        sys.path.remove(str(ROOT / "examples"))
    for name, write in platforms.EXPORTS.items():
        if not (base / name / "1").is_dir():
            write(base / name)
    tensorflow = base / "flowers_tensorflow" / "1"
    if not tensorflow.is_dir():
        shutil.copytree(ROOT / "examples" / "flowers" / "1", tensorflow)
    return base


def measure(base: pathlib.Path, model: str, loads: int = 1) -> Measurement:
    """Load ``base/model/1`` ``loads`` times in a fresh process (see the module docstring)."""
    env_path = str(ROOT / "src")
    done = subprocess.run(
        [sys.executable, "-c", _CHILD, str(base / model / "1"), MODELS[model], str(loads)],
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "PYTHONPATH": env_path, "TF_CPP_MIN_LOG_LEVEL": "3"},
        timeout=600,
    )
    if done.returncode != 0:
        raise RuntimeError(f"measuring {model} failed:\n{done.stderr[-3000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    growths = result["growths"]
    return Measurement(
        model, result["platform"], result["estimates"][0], growths[0], tuple(growths[1:])
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.platform_ram")
    parser.add_argument("dir", nargs="?", type=pathlib.Path, default=None)
    parser.add_argument("--repeat", type=int, default=1, help="fresh processes per model")
    parser.add_argument("--later", action="store_true", help="also load twice more")
    args = parser.parse_args(argv)
    base = (args.dir or pathlib.Path(tempfile.mkdtemp())).resolve()
    export(base)
    print(
        f"{'model':18s} {'platform':10s} {'estimate':>11s} {'growth (median)':>16s} "
        f"{'min-max':>21s} {'ratio':>6s}  {'in band':7s} {'later loads':s}"
    )
    for model in MODELS:
        runs = [measure(base, model, 3 if args.later else 1) for _ in range(args.repeat)]
        growths = [r.growth for r in runs]
        median = int(statistics.median(growths))
        ratio = runs[0].estimate / median if median > 0 else float("inf")
        ok = "yes" if BAND[0] <= ratio <= BAND[1] else "NO"
        later = " ".join(f"{g / 1e6:.2f}" for r in runs for g in r.later)
        print(
            f"{model:18s} {runs[0].platform:10s} {runs[0].estimate:>11,d} {median:>16,d} "
            f"{min(growths):>10,d}-{max(growths):>10,d} {ratio:>6.2f}  {ok:7s} {later}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
