"""Where a front end runs a model call: on its event loop, or on a worker thread.

The event-loop front ends (gRPC on ``grpc/h2.py`` and ``grpc/aio.py``, REST on
``http1.py``) run a small request for a fast model on the loop itself: handing it to a
worker thread and back costs more than the call. A model is fast when the moving average
of its recent successful calls is under :data:`INLINE_RUN_SECONDS`; a model not measured
yet, or a slow one, runs on a worker, so a slow model does not hold the loop.

A call's duration counts at most twice the threshold (:data:`CLIP_FACTOR`): on a busy
machine a fast model's call is now and then descheduled for milliseconds, and one such call
would otherwise lift the average over the threshold by itself and send the model to the
workers (three calls in a row at the cap do; a slow model's average then sits at the cap,
above the threshold, so it stays slow).

A call on a worker is timed by the wall clock, and under load that includes the time its
thread waited for the interpreter while other workers' calls ran: a model of 80 us, once
measured slow while busy, would stay on workers (whose calls keep measuring slow) however
idle the machine became. So a model measured slow is measured again on the loop now and
then: after :data:`PROBE_AFTER` calls on workers one call runs on the loop; if it is fast
there, the model is fast again (its average restarts from that call); if not, the next
such call comes after twice as many calls, up to :data:`PROBE_AFTER_MAX`. A truly slow
model holds the loop for one call in at most :data:`PROBE_AFTER` at first, and in
:data:`PROBE_AFTER_MAX` once measured slow that many times in a row.
:class:`CallCosts` keeps the averages.
"""

from __future__ import annotations

import time
from collections.abc import Callable

#: A model whose recent calls took less than this (seconds, moving average) runs on the
#: event loop; slower ones, or ones not measured yet, run on a worker thread. A call's
#: measured time includes decoding the request and encoding the answer, and on a busy
#: server the model's own code runs slower than in a loop of calls (other requests' work
#: evicts it from the CPU caches: a 40 us PyTorch call measures 110 us between JSON and
#: TensorFlow calls, and its gRPC call 170 us in the server, up to 210 us under load).
INLINE_RUN_SECONDS = 300e-6
#: Weight of the newest call in the moving average of a model's call time.
_COST_WEIGHT = 0.2
#: A call counts at most this many times the threshold in the average.
CLIP_FACTOR = 2.0
#: Calls of a slow model on workers before one runs on the loop to measure it there.
PROBE_AFTER = 16
#: The longest such interval: it doubles each time the call on the loop measures slow.
PROBE_AFTER_MAX = 4096


class _Cost:
    """One model's measurements (see :class:`CallCosts`)."""

    __slots__ = ("average", "probe_after", "waited")

    def __init__(self, average: float, probe_after: int) -> None:
        self.average = average
        self.waited = 0  # calls sent to workers since one was let onto the loop
        self.probe_after = probe_after


class CallCosts:
    """Each model's moving average of its successful Predict calls' durations, which
    decides where its next small Predict runs (see the module docstring).

    ``timer`` is read once before and once after each measured call; the difference is the
    call's duration in seconds. It defaults to :func:`time.perf_counter`; a test passes a
    clock it advances itself, so what counts as fast does not depend on the machine's speed.
    ``threshold``: a model runs on the loop when its average is below it (seconds).
    ``weight``: the newest call's weight in the average (0 < weight <= 1).
    ``probe_after`` / ``probe_after_max``: calls of a slow model on workers before one runs
    on the loop to be measured there, at first and at most.

    Read and written from the loop and from worker threads without a lock: a race may lose
    one call's measurement or let one more call onto the loop, never corrupt the state. A
    call let onto the loop that fails is not measured; the next comes after the interval.
    """

    def __init__(
        self,
        timer: Callable[[], float] = time.perf_counter,
        threshold: float = INLINE_RUN_SECONDS,
        weight: float = _COST_WEIGHT,
        probe_after: int = PROBE_AFTER,
        probe_after_max: int = PROBE_AFTER_MAX,
    ) -> None:
        if not 0.0 < weight <= 1.0:
            raise ValueError(f"weight must be in (0, 1], got {weight}")
        if not 1 <= probe_after <= probe_after_max:
            raise ValueError("need 1 <= probe_after <= probe_after_max")
        self.timer = timer
        self.threshold = threshold
        self.weight = weight
        self.probe_after = probe_after
        self.probe_after_max = probe_after_max
        self._costs: dict[str, _Cost] = {}

    def runs_inline(self, model: str) -> bool:
        """Whether ``model``'s next call runs on the loop: its calls are measured and their
        average is under the threshold, or it is slow and its turn to be measured on the
        loop has come (a model not measured yet does not: its first call runs on a worker).
        A caller that gets True runs the call on the loop and records it with
        ``on_loop=True``."""
        cost = self._costs.get(model)
        if cost is None:
            return False
        if cost.average < self.threshold:
            return True
        cost.waited += 1
        if cost.waited >= cost.probe_after:
            cost.waited = 0
            return True
        return False

    def record(self, model: str, seconds: float, *, on_loop: bool = False) -> None:
        """Add one successful call of ``model`` that took ``seconds`` (run on the loop when
        ``on_loop``) to its average (the first call sets it; each counts at most
        :data:`CLIP_FACTOR` times the threshold)."""
        seconds = min(seconds, CLIP_FACTOR * self.threshold)
        cost = self._costs.get(model)
        if cost is None:
            self._costs[model] = _Cost(seconds, self.probe_after)
            return
        if on_loop and cost.average >= self.threshold:
            # A slow model measured on the loop: trust it (no other call's wait is in it).
            if seconds < self.threshold:
                cost.average = seconds
                cost.probe_after = self.probe_after
                return
            cost.probe_after = min(2 * cost.probe_after, self.probe_after_max)
        cost.average += self.weight * (seconds - cost.average)

    def average(self, model: str) -> float | None:
        """``model``'s average call duration in seconds; None until one is recorded."""
        cost = self._costs.get(model)
        return None if cost is None else cost.average


__all__ = ["CLIP_FACTOR", "INLINE_RUN_SECONDS", "PROBE_AFTER", "PROBE_AFTER_MAX", "CallCosts"]
