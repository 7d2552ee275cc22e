"""Per-model request time series for the dashboard, sampled from the metrics' own counters.

Every ``step`` seconds :meth:`RequestSeries.sample` reads :meth:`ServerMetrics.model_totals`
(the counters ``/monitoring/prometheus/metrics`` renders) and keeps, per model, one point
for the interval since the previous sample: requests, errors, p50 and p99 latency (from the
latency histogram's bucket deltas, interpolated within a bucket, as Prometheus'
``histogram_quantile`` does) and the mean batch size when batches ran. Points are numbered
by a sequence that grows by one per sample; only intervals with traffic are stored, and only
the last ``points`` samples are kept, so memory is bounded by models x points.

Readers ask for the points after a sequence number they already have
(:meth:`RequestSeries.since`), so a page polling once a second receives each point once.
Thread-safe: sampling and reading may run on different threads.
"""

from __future__ import annotations

import collections
import logging
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pyserving.server.metrics import LATENCY_BUCKETS_US, ModelTotals

log = logging.getLogger(__name__)

#: One interval of one model: ``[seq, requests, errors, p50_ms, p99_ms, mean_batch]``
#: (``mean_batch`` is None when no batch ran in the interval).
Point = list[Any]


def quantile_us(
    counts: Sequence[int], q: float, bounds: Sequence[float] = LATENCY_BUCKETS_US
) -> float | None:
    """The ``q`` quantile (0..1) of a histogram given as per-bucket counts (``len(bounds)+1``
    buckets, the last one above ``bounds[-1]``), interpolated linearly within its bucket;
    None for an empty histogram. A value in the overflow bucket is reported as the last
    bound (nothing more is known of it)."""
    total = sum(counts)
    if total <= 0:
        return None
    target = q * total
    cumulative = 0.0
    for i, count in enumerate(counts):
        if count <= 0:
            continue
        if cumulative + count >= target:
            if i >= len(bounds):
                return float(bounds[-1])
            lower = float(bounds[i - 1]) if i > 0 else 0.0
            upper = float(bounds[i])
            fraction = (target - cumulative) / count
            return lower + (upper - lower) * max(0.0, min(1.0, fraction))
        cumulative += count
    return float(bounds[-1])


@dataclass(frozen=True)
class SeriesOptions:
    """``step``: seconds between samples. ``points``: samples kept (the window is
    ``step * points`` seconds: 2 s x 150 = the last 5 minutes by default)."""

    step: float = 2.0
    points: int = 150


class RequestSeries:
    """Ring buffers of per-model points; :meth:`sample` is called every ``options.step``
    seconds (by :meth:`start`'s thread, or by hand in tests)."""

    def __init__(
        self,
        totals: Callable[[], Mapping[str, ModelTotals]],
        options: SeriesOptions | None = None,
    ) -> None:
        self.options = options or SeriesOptions()
        self._totals = totals
        self._lock = threading.Lock()
        self._seq = 0
        self._previous: dict[str, ModelTotals] = {}
        self._points: dict[str, collections.deque[Point]] = {}
        self._primed = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def seq(self) -> int:
        """The sequence number of the newest sample (0 before the first)."""
        with self._lock:
            return self._seq

    def sample(self) -> None:
        """Close the current interval: one point per model that had requests in it."""
        current = dict(self._totals())
        with self._lock:
            if not self._primed:
                # The first reading only sets the baseline: counts from before the series
                # started are not one interval's traffic.
                self._primed = True
                self._previous = current
                return
            self._seq += 1
            seq = self._seq
            for name, now in current.items():
                before = self._previous.get(name)
                point = _point(seq, before, now)
                if point is not None:
                    ring = self._points.get(name)
                    if ring is None:
                        ring = self._points[name] = collections.deque(maxlen=self.options.points)
                    ring.append(point)
            self._previous = current
            oldest = seq - self.options.points
            for name in [n for n, ring in self._points.items() if ring[-1][0] <= oldest]:
                del self._points[name]  # nothing left inside the window

    def since(self, seq: int) -> tuple[int, dict[str, list[Point]]]:
        """``(newest seq, {model: points with a sequence number above seq})``, limited to
        the window; a ``seq`` that is 0, older than the window or in the future (the server
        restarted) gets the whole window."""
        with self._lock:
            newest = self._seq
            oldest = newest - self.options.points
            if seq > newest or seq < oldest:
                seq = oldest
            out: dict[str, list[Point]] = {}
            for name, ring in self._points.items():
                if ring[-1][0] <= seq:
                    continue
                points = [p for p in ring if p[0] > seq]
                if points:
                    out[name] = points
            return newest, out

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        """Sample every ``options.step`` seconds on a daemon thread until :meth:`close`."""
        if self._thread is not None:
            return
        self.sample()
        self._thread = threading.Thread(target=self._loop, name="pyserving-dashboard", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.wait(self.options.step):
            try:
                self.sample()
            except Exception:  # a bug here must not stop the charts for good, nor serving
                log.exception("dashboard: sampling the request counters failed")

    def close(self) -> None:
        """Stop sampling (idempotent)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)


def _point(seq: int, before: ModelTotals | None, now: ModelTotals) -> Point | None:
    requests = now.requests - (before.requests if before else 0)
    if requests <= 0:
        return None
    errors = now.errors - (before.errors if before else 0)
    if before is None:
        deltas: Sequence[int] = now.latency_counts
    else:
        deltas = [a - b for a, b in zip(now.latency_counts, before.latency_counts, strict=True)]
    p50 = quantile_us(deltas, 0.5)
    p99 = quantile_us(deltas, 0.99)
    batches = now.batches - (before.batches if before else 0)
    mean_batch = None
    if batches > 0:
        rows = now.batch_rows - (before.batch_rows if before else 0.0)
        mean_batch = round(rows / batches, 2)
    return [
        seq,
        requests,
        errors,
        None if p50 is None else round(p50 / 1000.0, 3),
        None if p99 is None else round(p99 / 1000.0, 3),
        mean_batch,
    ]
