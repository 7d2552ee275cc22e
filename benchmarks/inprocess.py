"""The in-process limit: the model called directly, no server, no network, no JSON.

``python -m benchmarks.inprocess --model_base_path PATH --payload FILE --batch 1,32
--duration S --warmup S`` loads the newest version under ``PATH`` and, for each batch size,
calls it in a closed loop on one thread for ``warmup + duration`` seconds (the request's
row repeated ``batch`` times), through two runtimes:

- ``function``: ``tf.saved_model.load(...).signatures["serving_default"]``, the TF function
  a user would call (input passed as ``tf.constant``, output read with ``.numpy()``);
- ``session``: the C++ ``Session`` callable pyserving itself runs
  (``pyserving.platforms.tensorflow.loader.SavedModelLoader``, ``servable.run``).

Prints one JSON document: per runtime and batch size, calls/s, rows/s, latency percentiles
and this process's CPU use. Batch 1 is the unbatched limit of a request; batch 32 is the
throughput limit batching can approach.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable
from typing import Any

import numpy as np


def measure(call: Callable[[], Any], duration: float, warmup: float) -> dict[str, Any]:
    """Call ``call`` in a loop for ``warmup`` then ``duration`` seconds; time the second part."""
    end_warmup = time.perf_counter() + warmup
    while time.perf_counter() < end_warmup:
        call()
    latencies = []
    cpu0 = time.process_time()
    start = time.perf_counter()
    end = start + duration
    now = start
    while now < end:
        call()
        after = time.perf_counter()
        latencies.append(after - now)
        now = after
    wall = now - start
    cpu = time.process_time() - cpu0
    ms = np.asarray(latencies) * 1000.0
    p50, p90, p99 = np.percentile(ms, [50, 90, 99])
    return {
        "calls": len(latencies),
        "calls_per_s": len(latencies) / wall,
        "latency_ms": {"p50": float(p50), "p90": float(p90), "p99": float(p99)},
        "cpu_percent": 100.0 * cpu / wall,
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Measure both runtimes at each batch size; see the module docstring."""
    import tensorflow as tf

    from pyserving.platforms.tensorflow.loader import SavedModelLoader

    with open(args.payload) as f:
        payload = json.load(f)
    row = np.asarray(payload["rows"], np.float32)
    input_name, output_name = payload["input_name"], payload["output_name"]
    versions = sorted((p for p in os.listdir(args.model_base_path) if p.isdigit()), key=int)
    path = os.path.join(args.model_base_path, versions[-1])

    function = tf.saved_model.load(path).signatures["serving_default"]
    loader = SavedModelLoader(path, runtime="session")
    loader.load()
    servable = loader.servable()
    expected = np.asarray(payload["expected"], np.float32)

    results: dict[str, Any] = {"function": {}, "session": {}}
    try:
        for batch in args.batch:
            x = np.repeat(row, batch, axis=0)
            want = np.repeat(expected, batch, axis=0)

            def call_function(x: np.ndarray = x) -> np.ndarray:
                out: np.ndarray = function(**{input_name: tf.constant(x)})[output_name].numpy()
                return out

            def call_session(x: np.ndarray = x) -> np.ndarray:
                out: np.ndarray = servable.run("serving_default", {input_name: x})[output_name]
                return out

            for name, call in (("function", call_function), ("session", call_session)):
                got = call()
                if not np.allclose(
                    got, want, rtol=payload.get("rtol", 1e-5), atol=payload.get("atol", 1e-5)
                ):
                    raise SystemExit(f"{name} runtime gives a wrong answer at batch {batch}")
                point = measure(call, args.duration, args.warmup)
                point["batch"] = batch
                point["rows_per_s"] = point["calls_per_s"] * batch
                results[name][str(batch)] = point
    finally:
        loader.unload()
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.inprocess", description=__doc__)
    parser.add_argument("--model_base_path", required=True)
    parser.add_argument("--payload", required=True, help="JSON file (Workload.payload())")
    parser.add_argument("--batch", default="1,32")
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--warmup", type=float, default=2.0)
    args = parser.parse_args(argv)
    args.batch = [int(b) for b in args.batch.split(",")]
    json.dump(run(args), sys.stdout)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
