"""Memory across reloads: load and unload N versions of a model through the real ServerCore and
report the process's resident memory (RSS) after each cycle.

Each cycle publishes version i+1 (a copy of the model, renamed into place), deletes version i,
polls, waits until i+1 is AVAILABLE and i has ended (unloaded), runs a few predictions on the
new version, collects garbage and reads VmRSS from /proc/self/status. Growth is measured from
the end of the first cycle (when TensorFlow's one-off allocations are done) to the end of the
last; a leak shows as steady growth per cycle.

    python -m benchmarks.reliability_memory [--cycles=50] [--model=PATH | --variables-mib=N]
                                            [--json=out.json]

PATH is a SavedModel version directory (default: saved_model_half_plus_two_cpu, 24 KB: TF
Serving's when its test models are present, see ``benchmarks.models.TESTDATA``, else the
equivalent exported for this run). ``--variables-mib=N`` exports instead a model that answers
like half_plus_two but carries an N MiB variable, so that a leak of model memory would show.
The exit status is 1 when RSS grew by 10% or more after the first cycle.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import pathlib
import sys
import tempfile
import time
from typing import Any


def rss_bytes() -> int:
    """This process's resident set size, from /proc/self/status (Linux)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("VmRSS not found in /proc/self/status")


def export_big_model(path: pathlib.Path, variables_mib: int) -> pathlib.Path:
    """A SavedModel (y = x / 2 + 2, input ``x`` [-1, 1] float) holding a variable of
    ``variables_mib`` MiB that every prediction reads."""
    import tensorflow as tf

    class Big(tf.Module):
        def __init__(self) -> None:
            self.w = tf.Variable(tf.zeros([variables_mib * (1 << 20) // 4], tf.float32))

        @tf.function(input_signature=[tf.TensorSpec([None, 1], tf.float32, name="x")])
        def serve(self, x: tf.Tensor) -> dict[str, tf.Tensor]:
            return {"y": x * 0.5 + 2.0 + self.w[0]}

    module = Big()
    tf.saved_model.save(module, str(path), signatures={"serving_default": module.serve})
    return path


def run(cycles: int, model: pathlib.Path, requests_per_cycle: int = 20) -> dict[str, Any]:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import numpy as np

    from benchmarks.versions import publish, swap_version
    from pyserving.config import single_model_config
    from pyserving.core.manager import ManagerOptions
    from pyserving.server.app import freeze_startup_objects
    from pyserving.server.core import ServerCore, ServerCoreOptions
    from pyserving.server.service import ModelServing, ModelSpec

    freeze_startup_objects()  # as the server does before loading models
    samples: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="pyserving-memory-") as tmp:
        base = pathlib.Path(tmp) / "model"
        base.mkdir()
        publish(model, base, 1)
        options = ServerCoreOptions(
            manager=ManagerOptions(num_load_threads=1, num_unload_threads=1),
            file_system_poll_wait_seconds=0,  # polls at start-up and on each reload_config
            settle_timeout=120,
        )
        config = single_model_config("m", str(base))
        with ServerCore(options) as core:
            serving = ModelServing(core)
            core.reload_config(config)
            baseline = rss_bytes()
            inputs = {"x": np.array([[1.0], [2.0], [3.0]], np.float32)}
            for cycle in range(1, cycles + 1):
                old, new = cycle, cycle + 1
                start = time.monotonic()
                if not swap_version(core, config, model, base, old, new):
                    raise RuntimeError(f"cycle {cycle}: version {new} did not replace {old}")
                for _ in range(requests_per_cycle):
                    with serving.bind(ModelSpec("m")) as bound:
                        bound.predict(inputs).result()
                    del bound  # it holds the version's servable
                seconds = time.monotonic() - start
                gc.collect()
                samples.append({"cycle": cycle, "rss_bytes": rss_bytes(), "seconds": seconds})
                print(
                    f"cycle {cycle:3d}: RSS {samples[-1]['rss_bytes'] / 2**20:8.1f} MiB "
                    f"({seconds:.2f}s)",
                    flush=True,
                )
    first = samples[0]["rss_bytes"]
    last = samples[-1]["rss_bytes"]
    peak = max(s["rss_bytes"] for s in samples)
    middle = samples[len(samples) // 2]
    return {
        "model": str(model),
        "cycles": cycles,
        "rss_before_first_cycle_bytes": baseline,
        "rss_after_first_cycle_bytes": first,
        "rss_after_last_cycle_bytes": last,
        "rss_peak_bytes": peak,
        "growth_after_first_cycle": (last - first) / first,
        "growth_per_cycle_bytes": (last - first) / max(1, cycles - 1),
        # The second half alone: allocator high-water marks are reached early; a leak keeps
        # growing.
        "growth_per_cycle_second_half_bytes": (last - middle["rss_bytes"])
        / max(1, cycles - middle["cycle"]),
        "samples": samples,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cycles", type=int, default=50)
    parser.add_argument("--model", type=pathlib.Path, default=None)
    parser.add_argument("--variables-mib", type=int, default=0)
    parser.add_argument("--requests-per-cycle", type=int, default=20)
    parser.add_argument("--json", type=pathlib.Path, default=None, help="write the result here")
    args = parser.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    with tempfile.TemporaryDirectory(prefix="pyserving-memory-model-") as tmp:
        model = args.model
        if args.variables_mib > 0:
            model = export_big_model(pathlib.Path(tmp) / "big", args.variables_mib)
        elif model is None:
            from benchmarks.models import half_plus_two_base

            model = half_plus_two_base(pathlib.Path(tmp)) / "00000123"
        result = run(args.cycles, model, args.requests_per_cycle)
    result["variables_mib"] = args.variables_mib
    mib = 2**20
    print(
        f"RSS before the first cycle {result['rss_before_first_cycle_bytes'] / mib:.1f} MiB, "
        f"after it {result['rss_after_first_cycle_bytes'] / mib:.1f} MiB, after cycle "
        f"{args.cycles} {result['rss_after_last_cycle_bytes'] / mib:.1f} MiB "
        f"(peak {result['rss_peak_bytes'] / mib:.1f} MiB): growth after the first cycle "
        f"{result['growth_after_first_cycle']:+.1%} "
        f"({result['growth_per_cycle_bytes'] / 1024:+.1f} KiB per cycle; over the second half "
        f"{result['growth_per_cycle_second_half_bytes'] / 1024:+.1f} KiB per cycle)"
    )
    if args.json is not None:
        args.json.write_text(json.dumps(result, indent=2))
    return 0 if result["growth_after_first_cycle"] < 0.10 else 1


if __name__ == "__main__":
    sys.exit(main())
