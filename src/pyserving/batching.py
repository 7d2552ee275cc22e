"""Server-side request batching: merge concurrent requests along dimension 0, run once, split.

A :class:`BatchScheduler` sits in front of one ``run(inputs) -> outputs`` function (one
signature of one loaded version). Requests submitted concurrently are queued; batch threads
take queued requests whose inputs are compatible (same input names, dtypes and shapes past
dimension 0), concatenate them, pad the batch up to the next ``allowed_batch_sizes`` entry
(by repeating the first row), run once, and hand each request its slice of every output.

Semantics (TF Serving's BatchingParameters):

* ``max_batch_size``: rows per batch. A request with more rows than this runs on its own,
  unbatched.
* ``batch_timeout_micros``: how long a batch that is not full waits for more rows once a
  batch thread is free for it (0: run what is queued at once).
* ``max_enqueued_batches``: queue bound, in batches; a request that does not fit is refused
  at once with UNAVAILABLE (``The batch scheduling queue ... is full``) instead of waiting.
* ``num_batch_threads``: batches run concurrently.
* ``allowed_batch_sizes``: increasing, the last equal to ``max_batch_size``.
* ``pad_variable_length_inputs``: requests whose inputs differ past dimension 0 only in
  size are padded with zeros to the largest and batched together (else they batch apart).

Outputs must have the batch on dimension 0; a signature whose outputs do not is an error for
every request in the batch. Thread-safe; ``close`` stops the threads and fails queued work.

Two ways in: :meth:`BatchScheduler.submit` blocks the calling thread until its batch has
run; :meth:`BatchScheduler.submit_future` returns a ``concurrent.futures.Future`` at once, so
a caller on an event loop can await the answer without a thread waiting for it.

:class:`BatchingServable` puts a scheduler in front of each signature of a servable, and
:class:`BatchingLoader` wraps any Loader so the servable it hands out is batched.
"""

from __future__ import annotations

import collections
import concurrent.futures
import itertools
import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from pyserving.core.loader import Loader, ResourceEstimate
from pyserving.errors import Internal, InvalidArgument, ServingError, Unavailable

log = logging.getLogger(__name__)

Tensors = dict[str, np.ndarray]
RunFn = Callable[[Tensors], Tensors]


@dataclass(frozen=True)
class BatchingOptions:
    """Batching parameters; defaults are TF Serving's."""

    max_batch_size: int = 1000
    batch_timeout_micros: int = 0
    max_enqueued_batches: int = 10
    num_batch_threads: int = 4
    allowed_batch_sizes: tuple[int, ...] = ()
    pad_variable_length_inputs: bool = False

    def __post_init__(self) -> None:
        if self.max_batch_size < 1:
            raise InvalidArgument("max_batch_size must be positive")
        if self.num_batch_threads < 1:
            raise InvalidArgument("num_batch_threads must be positive")
        if self.max_enqueued_batches < 1:
            raise InvalidArgument("max_enqueued_batches must be positive")
        if self.batch_timeout_micros < 0:
            raise InvalidArgument("batch_timeout_micros must not be negative")
        sizes = self.allowed_batch_sizes
        if sizes:
            if any(b <= a for a, b in itertools.pairwise(sizes)) or sizes[0] < 1:
                raise InvalidArgument("allowed_batch_sizes entries must be positive and increasing")
            if sizes[-1] != self.max_batch_size:
                raise InvalidArgument(
                    "The last entry in allowed_batch_sizes must match max_batch_size; last "
                    f"entry was {sizes[-1]}; expected {self.max_batch_size}"
                )

    @classmethod
    def from_proto(cls, params: Any) -> BatchingOptions:
        """From a ``tensorflow.serving.BatchingParameters`` message (unset fields default)."""
        d = cls()

        def pick(field: str, default: int) -> int:
            return int(getattr(params, field).value) if params.HasField(field) else default

        return cls(
            max_batch_size=pick("max_batch_size", d.max_batch_size),
            batch_timeout_micros=pick("batch_timeout_micros", d.batch_timeout_micros),
            max_enqueued_batches=pick("max_enqueued_batches", d.max_enqueued_batches),
            num_batch_threads=pick("num_batch_threads", d.num_batch_threads),
            allowed_batch_sizes=tuple(int(s) for s in params.allowed_batch_sizes),
            pad_variable_length_inputs=bool(params.pad_variable_length_inputs),
        )

    def padded_size(self, rows: int) -> int:
        """The batch size ``rows`` rows are padded to."""
        for size in self.allowed_batch_sizes:
            if size >= rows:
                return size
        return rows


class _Task:
    __slots__ = ("future", "inputs", "rows")

    def __init__(self, inputs: Tensors, rows: int) -> None:
        self.inputs = inputs
        self.rows = rows
        self.future: concurrent.futures.Future[Tensors] = concurrent.futures.Future()


BatchObserver = Callable[[int, int, float], None]
"""``observer(rows, padded_size, queueing_seconds_of_oldest_task)`` per batch run."""


class BatchScheduler:
    """Batches concurrent calls of one run function. See the module docstring."""

    def __init__(
        self,
        run: RunFn,
        options: BatchingOptions,
        name: str = "batch",
        observer: BatchObserver | None = None,
    ) -> None:
        self._run = run
        self.options = options
        self._observer = observer
        self._queues: dict[tuple[Any, ...], collections.deque[tuple[_Task, float]]] = {}
        self._rows_by_key: dict[tuple[Any, ...], int] = {}
        self._queued_rows = 0
        self._cond = threading.Condition()
        self._closed = False
        self._threads = [
            threading.Thread(target=self._worker, name=f"pyserving-{name}-{i}", daemon=True)
            for i in range(options.num_batch_threads)
        ]
        for t in self._threads:
            t.start()

    @property
    def capacity_rows(self) -> int:
        return self.options.max_enqueued_batches * self.options.max_batch_size

    def submit(self, inputs: Mapping[str, np.ndarray]) -> Tensors:
        """Run ``inputs`` as part of a batch and return this request's outputs (blocking)."""
        return self.submit_future(inputs).result()

    def submit_future(self, inputs: Mapping[str, np.ndarray]) -> concurrent.futures.Future[Tensors]:
        """Queue ``inputs`` for a batch; the future resolves to this request's outputs.

        Raises ``Unavailable`` at once when the queue is full or the scheduler is closed. A
        request that cannot be batched (more rows than ``max_batch_size``, or inputs without
        a common dimension 0) runs here, in the calling thread, and comes back done (failed
        with its ``ServingError``; any other exception is raised here). A queued request's
        future fails with its batch's ``ServingError`` (other exceptions of the batch become
        ``Internal``); its callbacks run on a batch thread.
        """
        tensors = {k: np.asarray(v) for k, v in inputs.items()}
        rows = _rows(tensors)
        if rows is None or rows > self.options.max_batch_size:
            done: concurrent.futures.Future[Tensors] = concurrent.futures.Future()
            try:
                done.set_result(self._run(tensors))
            except ServingError as exc:
                done.set_exception(exc)
            return done
        key = self._key(tensors)
        task = _Task(tensors, rows)
        with self._cond:
            if self._closed:
                raise Unavailable("The batch scheduler is shutting down")
            if self._queued_rows + rows > self.capacity_rows:
                raise Unavailable(
                    "The batch scheduling queue to which this task was submitted is full"
                )
            queue = self._queues.setdefault(key, collections.deque())
            queue.append((task, time.monotonic()))
            self._queued_rows += rows
            key_rows = self._rows_by_key.get(key, 0) + rows
            self._rows_by_key[key] = key_rows
            # Wake a batch thread only when there is news for it: new work, or a full batch.
            # (Waking on every request costs a GIL hand-off and a rescan per request.)
            if len(queue) == 1 or key_rows >= self.options.max_batch_size:
                self._cond.notify()
        return task.future

    def _key(self, tensors: Tensors) -> tuple[Any, ...]:
        if self.options.pad_variable_length_inputs:
            return tuple(sorted((k, v.dtype.str, v.ndim) for k, v in tensors.items()))
        return tuple(sorted((k, v.dtype.str, v.shape[1:]) for k, v in tensors.items()))

    def _take_batch(self) -> tuple[list[_Task], float] | None:
        """Wait for work; return the tasks of one batch and the oldest task's enqueue time."""
        opts = self.options
        timeout = opts.batch_timeout_micros / 1e6
        with self._cond:
            while True:
                if self._closed:
                    return None
                ready = [(q[0][1], k) for k, q in self._queues.items() if q]
                if not ready:
                    self._cond.wait()
                    continue
                oldest, key = min(ready)
                queue = self._queues[key]
                rows = self._rows_by_key[key]
                wait = oldest + timeout - time.monotonic()
                if rows < opts.max_batch_size and wait > 0:
                    self._cond.wait(wait)
                    continue
                batch: list[_Task] = []
                size = 0
                while queue and size + queue[0][0].rows <= opts.max_batch_size:
                    task, _ = queue.popleft()
                    size += task.rows
                    if task.future.set_running_or_notify_cancel():  # else: cancelled
                        batch.append(task)
                self._queued_rows -= size
                self._rows_by_key[key] -= size
                if not queue:
                    del self._queues[key]
                    del self._rows_by_key[key]
                if any(self._queues.values()):
                    self._cond.notify()  # more work is waiting: hand it to another thread
                return batch, oldest

    def _worker(self) -> None:
        while True:
            taken = self._take_batch()
            if taken is None:
                return
            batch, oldest = taken
            if batch:
                self._execute(batch, time.monotonic() - oldest)

    def _execute(self, batch: Sequence[_Task], queued: float) -> None:
        rows = sum(t.rows for t in batch)
        padded = self.options.padded_size(rows)
        error: ServingError | None = None
        results: list[Tensors] = []
        try:
            merged = _merge([t.inputs for t in batch], padded - rows)
            if self._observer is not None:
                self._observer(rows, padded, queued)
            outputs = self._run(merged)
            offset = 0
            for task in batch:
                results.append(_slice(outputs, offset, task.rows, padded))
                offset += task.rows
        except ServingError as exc:
            error = exc
        except Exception as exc:
            log.exception("batch of %d rows failed", rows)
            error = Internal(f"{type(exc).__name__}: {exc}")
        if error is not None:
            for task in batch:
                task.future.set_exception(error)
        else:
            for task, result in zip(batch, results, strict=True):
                task.future.set_result(result)

    def close(self) -> None:
        """Stop the batch threads; queued requests fail with UNAVAILABLE. Idempotent."""
        with self._cond:
            if self._closed:
                return
            self._closed = True
            pending = [t for q in self._queues.values() for t, _ in q]
            self._queues.clear()
            self._rows_by_key.clear()
            self._cond.notify_all()
        for task in pending:
            if task.future.set_running_or_notify_cancel():
                task.future.set_exception(Unavailable("The batch scheduler is shutting down"))
        for t in self._threads:
            t.join(timeout=10)


def _rows(tensors: Tensors) -> int | None:
    """The common dimension-0 size of every input, or None when they have none in common."""
    sizes = {v.shape[0] if v.ndim else None for v in tensors.values()}
    if len(sizes) != 1:
        return None
    (size,) = sizes
    return size if size else None


def _merge(inputs: Sequence[Tensors], pad_rows: int) -> Tensors:
    merged: Tensors = {}
    for name in inputs[0]:
        parts = [x[name] for x in inputs]
        shapes = {p.shape[1:] for p in parts}
        if len(shapes) > 1:  # pad_variable_length_inputs: zero-pad to the largest shape
            target = tuple(max(dims) for dims in zip(*shapes, strict=True))
            parts = [_pad_to(p, target) for p in parts]
        if pad_rows:
            parts.append(np.repeat(parts[0][:1], pad_rows, axis=0))
        merged[name] = parts[0] if len(parts) == 1 else np.concatenate(parts, axis=0)
    return merged


def _pad_to(array: np.ndarray, target: tuple[int, ...]) -> np.ndarray:
    widths = [(0, 0)] + [(0, t - s) for s, t in zip(array.shape[1:], target, strict=True)]
    return np.pad(array, widths)


def _slice(outputs: Tensors, offset: int, rows: int, batch: int) -> Tensors:
    out: Tensors = {}
    for name, value in outputs.items():
        if value.ndim == 0 or value.shape[0] != batch:
            raise Internal(
                f"Batched output {name} has shape {list(value.shape)}; its dimension 0 must be "
                f"the batch size {batch}"
            )
        out[name] = value[offset : offset + rows]
    return out


class BatchingServable:
    """A servable whose ``run`` goes through one :class:`BatchScheduler` per signature.

    Everything else (``signature_defs``, ``meta_graph``, ...) is the wrapped servable's.
    A scheduler is created on first use of a signature, so a model has at most one per
    signature (its threads included), whatever outputs requests select: a batch computes
    every output of its signature, and each request gets the outputs it asked for.
    """

    def __init__(
        self,
        inner: Any,
        options: BatchingOptions,
        observer: Callable[[str, int, int, float], None] | None = None,
    ) -> None:
        self.inner = inner
        self.options = options
        self._observer = observer
        self._schedulers: dict[str, BatchScheduler] = {}
        self._lock = threading.Lock()
        self._closed = False

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def _scheduler(self, signature_name: str) -> BatchScheduler:
        scheduler = self._schedulers.get(signature_name)
        if scheduler is not None:
            return scheduler
        with self._lock:
            scheduler = self._schedulers.get(signature_name)
            if scheduler is None:
                if self._closed:
                    raise Unavailable("The servable is being unloaded")

                def run(inputs: Tensors) -> Tensors:
                    return dict(self.inner.run(signature_name, inputs, None))

                observer = None
                if self._observer is not None:
                    report = self._observer

                    def observer(rows: int, padded: int, queued: float) -> None:
                        report(signature_name, rows, padded, queued)

                scheduler = BatchScheduler(run, self.options, "batch", observer)
                self._schedulers[signature_name] = scheduler
            return scheduler

    def run(
        self,
        signature_name: str,
        inputs: Mapping[str, np.ndarray],
        output_keys: Sequence[str] | None = None,
    ) -> dict[str, np.ndarray]:
        if output_keys is None:
            return self._scheduler(signature_name).submit(inputs)
        self.inner.check_output_keys(signature_name, output_keys)
        return _select(self._scheduler(signature_name).submit(inputs), output_keys)

    def run_future(
        self,
        signature_name: str,
        inputs: Mapping[str, np.ndarray],
        output_keys: Sequence[str] | None = None,
    ) -> concurrent.futures.Future[Tensors]:
        """As :meth:`run`, without waiting: see :meth:`BatchScheduler.submit_future`."""
        if output_keys is None:
            return self._scheduler(signature_name).submit_future(inputs)
        self.inner.check_output_keys(signature_name, output_keys)
        future = self._scheduler(signature_name).submit_future(inputs)
        keys = list(output_keys)
        selected: concurrent.futures.Future[Tensors] = concurrent.futures.Future()
        # Cancelling the answer (a client gone) takes the request out of its batch.
        selected.add_done_callback(lambda f: future.cancel() if f.cancelled() else None)

        def select(done: concurrent.futures.Future[Tensors]) -> None:
            if done.cancelled():
                selected.cancel()
                return
            error = done.exception()
            if error is not None:
                selected.set_exception(error)
            else:
                selected.set_result(_select(done.result(), keys))

        future.add_done_callback(select)
        return selected

    def close(self) -> None:
        """Stop every scheduler (idempotent)."""
        with self._lock:
            self._closed = True
            schedulers = list(self._schedulers.values())
            self._schedulers.clear()
        for scheduler in schedulers:
            scheduler.close()


def _select(outputs: Tensors, keys: Sequence[str]) -> Tensors:
    """The outputs named by ``keys``, in that order (the signature's keys, checked before)."""
    return {key: outputs[key] for key in keys}


class BatchingLoader(Loader):
    """Wraps a Loader; its servable is a :class:`BatchingServable` over the inner one."""

    def __init__(
        self,
        inner: Loader,
        options: BatchingOptions,
        observer: Callable[[str, int, int, float], None] | None = None,
    ) -> None:
        self.inner = inner
        self.options = options
        self._observer = observer
        self._servable: BatchingServable | None = None

    def estimate_resources(self) -> ResourceEstimate:
        return self.inner.estimate_resources()

    def load(self) -> None:
        self.inner.load()
        self._servable = BatchingServable(self.inner.servable(), self.options, self._observer)

    def unload(self) -> None:
        if self._servable is not None:
            self._servable.close()
            self._servable = None
        self.inner.unload()

    def servable(self) -> BatchingServable:
        assert self._servable is not None, "servable() called outside load/unload"
        return self._servable
