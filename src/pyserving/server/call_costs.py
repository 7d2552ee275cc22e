"""Where a front end runs a model call: on its event loop, or on a worker thread.

The event-loop front ends (gRPC on ``grpc/h2.py`` and ``grpc/aio.py``, REST on
``http1.py``) run a small request for a fast model on the loop itself: handing it to a
worker thread and back costs more than the call. A model is fast when the moving average
of its recent successful calls is under :data:`INLINE_RUN_SECONDS`; a model not measured
yet, or a slow one, runs on a worker, so a slow model never holds the loop.
:class:`CallCosts` keeps the averages.
"""

from __future__ import annotations

import time
from collections.abc import Callable

#: A model whose recent calls took less than this (seconds, moving average) runs on the
#: event loop; slower ones, or ones not measured yet, run on a worker thread.
INLINE_RUN_SECONDS = 200e-6
#: Weight of the newest call in the moving average of a model's call time.
_COST_WEIGHT = 0.2


class CallCosts:
    """Each model's moving average of its successful Predict calls' durations, which
    decides where its next small Predict runs (see the front ends' module docstrings).

    ``timer`` is read once before and once after each measured call; the difference is the
    call's duration in seconds. It defaults to :func:`time.perf_counter`; a test passes a
    clock it advances itself, so what counts as fast does not depend on the machine's speed.
    ``threshold``: a model runs on the loop when its average is below it (seconds).
    ``weight``: the newest call's weight in the average (0 < weight <= 1).

    Read and written from the loop and from worker threads without a lock: each update is
    one dict assignment, so a race may lose one call's measurement, never corrupt the map.
    """

    def __init__(
        self,
        timer: Callable[[], float] = time.perf_counter,
        threshold: float = INLINE_RUN_SECONDS,
        weight: float = _COST_WEIGHT,
    ) -> None:
        if not 0.0 < weight <= 1.0:
            raise ValueError(f"weight must be in (0, 1], got {weight}")
        self.timer = timer
        self.threshold = threshold
        self.weight = weight
        self._averages: dict[str, float] = {}

    def runs_inline(self, model: str) -> bool:
        """Whether ``model``'s calls are measured and their average is under the threshold
        (a model not measured yet is not: its first call runs on a worker)."""
        average = self._averages.get(model)
        return average is not None and average < self.threshold

    def record(self, model: str, seconds: float) -> None:
        """Add one successful call of ``model`` that took ``seconds`` to its average (the
        first call sets it)."""
        previous = self._averages.get(model)
        self._averages[model] = (
            seconds if previous is None else previous + self.weight * (seconds - previous)
        )

    def average(self, model: str) -> float | None:
        """``model``'s average call duration in seconds; None until one is recorded."""
        return self._averages.get(model)


__all__ = ["INLINE_RUN_SECONDS", "CallCosts"]
