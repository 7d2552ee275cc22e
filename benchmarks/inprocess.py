"""The in-process limit: the model called directly, no server, no network, no JSON.

``python -m benchmarks.inprocess --model_base_path PATH --payload FILE --batch 1,32
--duration S --warmup S`` loads the newest version under ``PATH`` and, for each batch size,
calls it in a closed loop on one thread for ``warmup + duration`` seconds (the request's
row repeated ``batch`` times; the duration is split into ``--repeats`` parts and the best
part counts), through two runtimes:

- ``function``: ``tf.saved_model.load(...).signatures["serving_default"]``, the TF function
  a user would call (input passed as ``tf.constant``, output read with ``.numpy()``);
- ``session``: the model as pyserving itself runs it
  (``pyserving.platforms.tensorflow.loader.SavedModelLoader`` with its default runtime,
  ``servable.run``): a C++ ``Session`` callable for TF1 and most TF2 exports; for exports
  restored with ``tf.saved_model.load`` (Keras's) whatever ``FunctionRunner`` does. The
  result names it (``backend``).

With ``--batching_parameters FILE --scheduler_callers N`` it also measures ``scheduler``:
N threads each calling pyserving's batching layer (``BatchingServable`` over the session
servable, with the server's BatchingParameters) with one row in a closed loop. That is the
server's batching path without HTTP, gRPC or JSON: the gap between it and batch-32
``session`` calls is the cost of the batching layer's thread hand-offs; the gap between it
and the server is the front end's.

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

from benchmarks import procstat


def measure(call: Callable[[], Any], duration: float, warmup: float) -> dict[str, Any]:
    """Call ``call`` in a loop for ``warmup`` then ``duration`` seconds; time the second part."""
    end_warmup = time.perf_counter() + warmup
    while time.perf_counter() < end_warmup:
        call()
    latencies = []
    machine = procstat.MachineCpu()
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
    machine_percent = machine.stop()
    ms = np.asarray(latencies) * 1000.0
    p50, p90, p99 = np.percentile(ms, [50, 90, 99])
    return {
        "calls": len(latencies),
        "calls_per_s": len(latencies) / wall,
        "latency_ms": {"p50": float(p50), "p90": float(p90), "p99": float(p99)},
        "cpu_percent": 100.0 * cpu / wall,
        "other_cpu_percent": max(0.0, machine_percent - 100.0 * cpu / wall),
    }


def measure_scheduler(
    servable: Any,
    input_name: str,
    row: np.ndarray,
    callers: int,
    duration: float,
    warmup: float,
) -> dict[str, Any]:
    """``callers`` threads calling ``servable.run`` with one row each, closed loop."""
    import threading

    start = time.perf_counter() + warmup
    end = start + duration
    latencies: list[list[float]] = [[] for _ in range(callers)]

    def caller(index: int) -> None:
        mine = latencies[index]
        while True:
            before = time.perf_counter()
            if before >= end:
                return
            servable.run("serving_default", {input_name: row})
            after = time.perf_counter()
            if start <= after <= end:
                mine.append(after - before)

    threads = [threading.Thread(target=caller, args=(i,)) for i in range(callers)]
    for t in threads:
        t.start()
    time.sleep(max(0.0, start - time.perf_counter()))
    machine = procstat.MachineCpu()
    cpu0 = time.process_time()
    time.sleep(max(0.0, end - time.perf_counter()))
    cpu = time.process_time() - cpu0
    machine_percent = machine.stop()
    for t in threads:
        t.join()
    flat = np.asarray([x for xs in latencies for x in xs]) * 1000.0
    p50, p90, p99 = np.percentile(flat, [50, 90, 99])
    return {
        "calls": int(flat.size),
        "calls_per_s": flat.size / duration,
        "rows_per_s": flat.size / duration,
        "batch": 1,
        "callers": callers,
        "latency_ms": {"p50": float(p50), "p90": float(p90), "p99": float(p99)},
        "cpu_percent": 100.0 * cpu / duration,
        "other_cpu_percent": max(0.0, machine_percent - 100.0 * cpu / duration),
    }


def run_scheduler(
    path: str, args: argparse.Namespace, input_name: str, row: np.ndarray
) -> dict[str, Any]:
    """The ``scheduler`` runtime (see the module docstring), its mean batch size included."""
    from pyserving.batching import BatchingOptions, BatchingServable
    from pyserving.config import read_text_proto
    from pyserving.platforms.tensorflow.loader import SavedModelLoader
    from pyserving.protos import BatchingParameters

    params = read_text_proto(
        args.batching_parameters, BatchingParameters(), "tensorflow.serving.BatchingParameters"
    )
    options = BatchingOptions.from_proto(params)
    sizes: list[int] = []

    def observe(_signature: str, rows: int, _padded: int, _queued: float) -> None:
        sizes.append(rows)

    loader = SavedModelLoader(path)
    loader.load()
    batching = BatchingServable(loader.servable(), options, observe)
    try:
        point = measure_scheduler(
            batching, input_name, row, args.scheduler_callers, args.duration, args.warmup
        )
    finally:
        batching.close()
        loader.unload()
    point["mean_batch_rows"] = float(np.mean(sizes)) if sizes else None
    return point


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
    loader = SavedModelLoader(path)
    loader.load()
    servable = loader.servable()
    runner_path = getattr(getattr(servable, "_runner", None), "path", None)
    backend = servable.backend + (f" ({runner_path})" if runner_path else "")
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
                # The limit is the best of a few repeats: a moment of other load on the
                # machine must not lower the bar the servers are compared with.
                repeats = [
                    measure(call, args.duration / args.repeats, args.warmup if i == 0 else 0.0)
                    for i in range(args.repeats)
                ]
                point = max(repeats, key=lambda p: p["calls_per_s"])
                point["repeats_calls_per_s"] = [p["calls_per_s"] for p in repeats]
                point["batch"] = batch
                point["rows_per_s"] = point["calls_per_s"] * batch
                if name == "session":
                    point["backend"] = backend
                results[name][str(batch)] = point
    finally:
        loader.unload()
    if args.batching_parameters:
        results["scheduler"] = {
            f"c{args.scheduler_callers}": run_scheduler(path, args, input_name, row)
        }
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.inprocess", description=__doc__)
    parser.add_argument("--model_base_path", required=True)
    parser.add_argument("--payload", required=True, help="JSON file (Workload.payload())")
    parser.add_argument("--batch", default="1,32")
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--repeats", type=int, default=3, help="best of N (duration split)")
    parser.add_argument("--batching_parameters", default="", help="also measure `scheduler`")
    parser.add_argument("--scheduler_callers", type=int, default=32)
    args = parser.parse_args(argv)
    args.batch = [int(b) for b in args.batch.split(",")]
    json.dump(run(args), sys.stdout)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
