"""The batching layer's own cost per row, in process, with a model that costs nothing.

``python -m benchmarks.batching_overhead [--rounds 1000] [--batch 32] [--repeats 5]``

A ``BatchingServable`` (the server's batching parameters: ``max_batch_size 32``,
``batch_timeout_micros 2000``, one batch thread) over a servable whose ``run`` returns its
input, so everything measured is the scheduler: queueing a request and its future, taking
the batch, merging rows, splitting the answer, resolving the futures. Two ways in:

- ``futures``: one thread submits ``--batch`` one-row requests with ``run_future`` (as the
  server's front ends do) and waits for all of them, ``--rounds`` times: every batch is full;
- ``futures-filter``: the same, each request selecting its output (``output_filter``);
- ``threads``: ``--batch`` threads each calling the blocking ``run`` ``--rounds`` times (the
  ``scheduler`` runtime of ``benchmarks.inprocess``, which the earlier 38 us figure came
  from): thread wake-ups included.

Prints one JSON document: per mode, rows/s and this process's CPU time per row (all its
threads), the best of ``--repeats``. Run it with another ``pyserving`` first on
``PYTHONPATH`` to compare trees.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from typing import Any

import numpy as np


class _Echo:
    """A servable whose only signature returns its input as ``y``."""

    def run(
        self, signature_name: str, inputs: dict[str, np.ndarray], keys: Any = None
    ) -> dict[str, np.ndarray]:
        return {"y": inputs["x"]}

    def check_output_keys(self, signature_name: str, output_keys: Any) -> None:
        pass


def _futures(servable: Any, rounds: int, batch: int, keys: list[str] | None) -> float:
    x = {"x": np.ones((1, 4), np.float32)}
    for _ in range(rounds):
        pending = [servable.run_future("serving_default", x, keys) for _ in range(batch)]
        for future in pending:
            future.result()
    return float(rounds * batch)


def _threads(servable: Any, rounds: int, batch: int) -> float:
    x = {"x": np.ones((1, 4), np.float32)}

    def call() -> None:
        for _ in range(rounds):
            servable.run("serving_default", x)

    threads = [threading.Thread(target=call) for _ in range(batch)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return float(rounds * batch)


def measure(mode: str, rounds: int, batch: int) -> dict[str, float]:
    from pyserving.batching import BatchingOptions, BatchingServable

    options = BatchingOptions(
        max_batch_size=batch,
        batch_timeout_micros=2000,
        max_enqueued_batches=100,
        num_batch_threads=1,
    )
    servable = BatchingServable(_Echo(), options)
    try:
        _futures(servable, max(1, rounds // 10), batch, None)  # warm-up
        wall0, cpu0 = time.perf_counter(), time.process_time()
        if mode == "threads":
            rows = _threads(servable, rounds, batch)
        else:
            rows = _futures(servable, rounds, batch, ["y"] if mode == "futures-filter" else None)
        wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    finally:
        servable.close()
    return {"rows_per_s": rows / wall, "cpu_us_per_row": 1e6 * cpu / rows}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.batching_overhead")
    parser.add_argument("--rounds", type=int, default=1000)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    out: dict[str, Any] = {}
    for mode in ("futures", "futures-filter", "threads"):
        points = [measure(mode, args.rounds, args.batch) for _ in range(args.repeats)]
        best = min(points, key=lambda p: p["cpu_us_per_row"])
        out[mode] = {**best, "repeats_cpu_us_per_row": [p["cpu_us_per_row"] for p in points]}
    json.dump(out, sys.stdout)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
