"""The cost of writing float tensors as TF Serving's JSON, against another source tree's.

``python -m benchmarks.float_text [--reference DIR] [--rounds 7] [--number 200]``

Times ``orjson.dumps({"predictions": float_value(array)})`` (what a predict answer's floats
cost) for typical answers: ``half_plus_two``'s one float, small batches, a 512-float row (the
MLP's answer) with ordinary values and with values spread over the whole range, and doubles.
With ``--reference DIR`` (a directory holding another version's ``pyserving`` package, e.g.
an older commit's ``src``), its ``codec/tf_json.py`` is timed the same way in the same
process, rounds interleaved, and the output is checked to be the same bytes. Each figure is
the fastest round (the least disturbed by other processes), in microseconds per answer.
"""

from __future__ import annotations

import argparse
import importlib.util
import pathlib
import sys
import timeit
from collections.abc import Callable
from types import ModuleType
from typing import Any

import numpy as np
import orjson

from pyserving.codec import tf_json


def cases() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    spread = rng.standard_normal((1, 512)) * 10.0 ** rng.integers(-20, 20, (1, 512))
    return {
        "half_plus_two [[3.0]] f32": np.array([[3.0]], np.float32),
        "8x1 f32": rng.standard_normal((8, 1)).astype(np.float32),
        "32x10 f32": rng.standard_normal((32, 10)).astype(np.float32),
        "1x512 f32 (MLP row)": rng.standard_normal((1, 512)).astype(np.float32),
        "1x512 f32 spread 1e-20..1e20": spread.astype(np.float32),
        "1x16 f64": rng.standard_normal((1, 16)),
        "1x512 f64": rng.standard_normal((1, 512)),
    }


def load_reference(directory: pathlib.Path) -> ModuleType:
    """``pyserving/codec/tf_json.py`` of ``directory`` as a module of its own."""
    path = directory / "pyserving" / "codec" / "tf_json.py"
    spec = importlib.util.spec_from_file_location("reference_tf_json", path)
    if spec is None or spec.loader is None:
        raise SystemExit(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def writer(module: Any, array: np.ndarray) -> Callable[[], bytes]:
    def write() -> bytes:
        value = module.float_value(array)
        return orjson.dumps({"predictions": value}, option=orjson.OPT_SERIALIZE_NUMPY)

    return write


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.float_text", description=__doc__)
    parser.add_argument("--reference", type=pathlib.Path, default=None)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--number", type=int, default=200)
    args = parser.parse_args(argv)
    modules: dict[str, Any] = {"current": tf_json}
    if args.reference is not None:
        modules = {"reference": load_reference(args.reference.resolve()), **modules}
    names = list(modules)
    header = ["answer", *(f"{n} us" for n in names)]
    if len(names) == 2:
        header.append("current/reference")
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for label, array in cases().items():
        writers = {n: writer(m, array) for n, m in modules.items()}
        outputs = {n: w() for n, w in writers.items()}
        if len(set(outputs.values())) != 1:
            raise SystemExit(f"{label}: the writers' outputs differ")
        best = {n: float("inf") for n in names}
        for _ in range(args.rounds):
            for n in names:
                seconds = timeit.timeit(writers[n], number=args.number) / args.number
                best[n] = min(best[n], seconds)
        cells = [label, *(f"{best[n] * 1e6:.1f}" for n in names)]
        if len(names) == 2:
            cells.append(f"{best['current'] / best['reference']:.2f}")
        print("| " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
