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

Where a batch runs: on a batch thread, or, for a fast model, on the event loop that
submitted its requests. Once the scheduler has measured its batches' runs (a moving average
of their durations) under :data:`LOOP_BATCH_SECONDS`, requests submitted from a thread
running an asyncio event loop (the front ends answer small requests of fast models on their
loops) are batched on that loop: queued there, and run there when the batch is full or its
oldest request has waited ``batch_timeout_micros`` (0: at the end of the loop's current
turn), so requests that arrive together run together without a thread hand-off either way.
A slow model's batches, and requests from other threads, go to the batch threads.

:class:`BatchingServable` puts a scheduler in front of each signature of a servable, and
:class:`BatchingLoader` wraps any Loader so the servable it hands out is batched.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import itertools
import logging
import queue
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np

from pyserving.core.loader import Loader, ResourceEstimate
from pyserving.errors import (
    CancelledError,
    FailedPrecondition,
    Internal,
    InvalidArgument,
    ServingError,
    Unavailable,
)

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


_PENDING = concurrent.futures._base.PENDING
_RUNNING = concurrent.futures._base.RUNNING
_CANCELLED = concurrent.futures._base.CANCELLED
_CANCELLED_AND_NOTIFIED = concurrent.futures._base.CANCELLED_AND_NOTIFIED
_FINISHED = concurrent.futures._base.FINISHED
_DONE = frozenset((_CANCELLED, _CANCELLED_AND_NOTIFIED, _FINISHED))
_CANCELLED_STATES = frozenset((_CANCELLED, _CANCELLED_AND_NOTIFIED))
#: The lock of every settled future: one that is done never waits on it.
_SETTLED = threading.Condition()

T = TypeVar("T")


def settled_future(
    result: T | None = None, exception: BaseException | None = None
) -> concurrent.futures.Future[T]:
    """A ``concurrent.futures.Future`` already finished with ``result`` (or ``exception``).

    ``Future()`` makes a ``Condition`` (and its lock) per future, then ``set_result``
    notifies it: ~2.1-2.5 us for an answer already in hand. A settled future shares one
    condition and is created done (~0.8 us); every ``Future`` method works on it as on any
    finished future (``result``, ``exception``, ``add_done_callback`` calls at once,
    ``cancel`` returns False, ``concurrent.futures.wait`` returns it as done).
    """
    future: concurrent.futures.Future[T] = concurrent.futures.Future.__new__(
        concurrent.futures.Future
    )
    future._condition = _SETTLED
    future._state = _FINISHED
    future._result = result
    future._exception = exception
    future._waiters = []
    future._done_callbacks = []  # type: ignore[attr-defined]
    return future


class _Task(concurrent.futures.Future[Tensors]):
    """One queued request, and the future its caller holds: a ``concurrent.futures.Future``
    whose state is guarded by its scheduler's lock (one per scheduler, not one per request),
    so the batch thread marks a whole batch running, and resolves it, under one acquisition.

    Every ``Future`` method works as usual (``cancel``, callbacks, ``asyncio.wrap_future``,
    ``concurrent.futures.wait``); ``result``/``exception`` with a pending state block on a
    lock of their own (created only then), released when the task is done, so a batch's
    completion wakes only the threads waiting for it.

    ``wrap`` (optional) turns the request's outputs into the future's result, under the
    scheduler's lock as the result is set; ``on_done`` (optional) is called with the task's
    error (``None`` on success, :class:`~pyserving.errors.CancelledError` when cancelled)
    once it is done, before its callbacks run. A caller that would otherwise chain a second
    future onto the task (to reshape its result and account for it) uses these instead.
    """

    def __init__(
        self,
        condition: threading.Condition,
        inputs: Tensors,
        rows: int,
        keys: Sequence[str] | None,
        enqueued: float,
        wrap: Callable[[Tensors], Any] | None = None,
        on_done: Callable[[BaseException | None], None] | None = None,
    ) -> None:
        # No Future.__init__: it would make a Condition (and its lock) per request.
        self._condition = condition
        self._state = _PENDING
        self._result = None
        self._exception = None
        self._waiters = []
        self._done_callbacks: list[Callable[[concurrent.futures.Future[Tensors]], object]] = []
        self._gate: threading.Lock | None = None
        self.inputs = inputs
        self.rows = rows
        self.keys = keys
        self.enqueued = enqueued
        self.wrap = wrap
        self.on_done = on_done

    def _invoke_callbacks(self) -> None:
        # Every transition to a done state (cancel, set_result, set_exception, a batch's
        # resolution) ends here, after the state was set under the lock.
        on_done = self.on_done
        if on_done is not None:
            self.on_done = None
            error = (
                CancelledError("Cancelled") if self._state in _CANCELLED_STATES else self._exception
            )
            try:
                on_done(error)
            except Exception:
                log.exception("on_done of a batched request failed")
        gate = self._gate
        if gate is not None:
            gate.release()
        super()._invoke_callbacks()  # type: ignore[misc]

    def _wait(self, timeout: float | None) -> None:
        with self._condition:
            if self._state in _DONE:
                return
            gate = self._gate
            if gate is None:
                gate = self._gate = threading.Lock()
                gate.acquire()
        if gate.acquire(timeout=-1 if timeout is None else max(timeout, 0.0)):
            gate.release()  # let any other thread waiting on this task through

    def result(self, timeout: float | None = None) -> Tensors:
        if self._state not in _DONE:
            self._wait(timeout)
        return super().result(0)

    def exception(self, timeout: float | None = None) -> BaseException | None:
        if self._state not in _DONE:
            self._wait(timeout)
        return super().exception(0)


#: A scheduler whose batches took less than this to run (seconds, moving average) batches
#: requests submitted on an event loop on that loop (see the module docstring). Handing a
#: batch of 20-32 requests to a batch thread and back costs ~20-30 us per request (futures,
#: thread wake-ups, the GIL changing hands), more than a batch this short holds the loop;
#: and a model whose run is mostly Python (a ``torch.export`` program, ~0.27 ms per batch of
#: the iris-sized perceptron in the server) gains nothing from running beside the loop,
#: since it holds the GIL. (At 0.2 ms that model's average hovered about the threshold and
#: its batches moved between the loop and the threads: 5,000-9,000 requests/s run to run.)
LOOP_BATCH_SECONDS = 500e-6
#: Weight of the newest batch in the moving average of batch run durations.
_BATCH_COST_WEIGHT = 0.2

BatchObserver = Callable[[int, int, float], None]
"""``observer(rows, padded_size, queueing_seconds_of_oldest_task)`` per batch run."""

_Completion = tuple[list[_Task], "Tensors | None", int, "ServingError | None"]


class _LoopQueue:
    """The requests one event loop submitted and that wait for their batch on that loop.
    Only that loop's thread touches it."""

    __slots__ = ("handles", "loop", "queues", "rows", "total_rows")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.queues: dict[tuple[Any, ...], collections.deque[_Task]] = {}
        self.rows: dict[tuple[Any, ...], int] = {}
        # The callback that runs a key's batch, and whether it waits for the timeout.
        self.handles: dict[tuple[Any, ...], tuple[asyncio.Handle, bool]] = {}
        self.total_rows = 0


class BatchScheduler:
    """Batches concurrent calls of one run function. See the module docstring.

    Threads: ``num_batch_threads`` batch threads take batches, merge them and run the model,
    and one completion thread. A batch thread that finishes a run while more requests are
    queued hands the batch to the completion thread, which splits its outputs and resolves
    its requests (their callbacks run there), and takes the next batch at once: two batches
    in flight, which pays off when the model releases the GIL (TensorFlow does while it
    computes). With nothing queued it answers the batch itself, saving a thread hand-off.
    ``clock`` (seconds, monotonic) times ``batch_timeout_micros``; tests inject one.

    Batches of a fast model run on the event loop that submitted their requests (see the
    module docstring): ``timer`` is read before and after each batch's run (default
    :func:`time.perf_counter`; tests pass a clock they advance, so where batches run does
    not depend on the machine's speed), ``loop_threshold`` is the average run time (seconds)
    under which they do.
    """

    def __init__(
        self,
        run: RunFn,
        options: BatchingOptions,
        name: str = "batch",
        observer: BatchObserver | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        timer: Callable[[], float] = time.perf_counter,
        loop_threshold: float = LOOP_BATCH_SECONDS,
    ) -> None:
        self._run = run
        self.options = options
        self._observer = observer
        self._clock = clock
        self._timer = timer
        self._loop_threshold = loop_threshold
        self._batch_cost: float | None = None  # moving average of batch run durations
        self._loop_queues: dict[asyncio.AbstractEventLoop, _LoopQueue] = {}
        self._queues: dict[tuple[Any, ...], collections.deque[_Task]] = {}
        self._rows_by_key: dict[tuple[Any, ...], int] = {}
        self._queued_rows = 0
        self._cond = threading.Condition(threading.Lock())
        # Guards the state of every task of this scheduler (re-entrant, as a Future's own:
        # concurrent.futures.wait holds several futures' locks at once).
        self._futures = threading.Condition(threading.RLock())
        self._completions: queue.SimpleQueue[_Completion | None] = queue.SimpleQueue()
        self._closed = False
        self._threads = [
            threading.Thread(target=self._worker, name=f"pyserving-{name}-{i}", daemon=True)
            for i in range(options.num_batch_threads)
        ]
        self._completer = threading.Thread(
            target=self._complete_loop, name=f"pyserving-{name}-done", daemon=True
        )
        self._completer.start()
        for t in self._threads:
            t.start()

    @property
    def capacity_rows(self) -> int:
        return self.options.max_enqueued_batches * self.options.max_batch_size

    @property
    def batches_on_loop(self) -> bool:
        """Whether requests submitted on an event loop are batched on it now (the average
        batch run is measured and under the threshold)."""
        cost = self._batch_cost
        return cost is not None and cost < self._loop_threshold

    def submit(
        self, inputs: Mapping[str, np.ndarray], output_keys: Sequence[str] | None = None
    ) -> Tensors:
        """Run ``inputs`` as part of a batch and return this request's outputs (blocking).

        Called on an event loop's thread (a Python model's code running a batched model it
        wraps, run on the loop), the request still goes to the batch threads: a batch queued
        on the loop could only run once this call returned."""
        return self.submit_future(inputs, output_keys, on_loop=False).result()

    def submit_future(
        self,
        inputs: Mapping[str, np.ndarray],
        output_keys: Sequence[str] | None = None,
        *,
        wrap: Callable[[Tensors], Any] | None = None,
        on_done: Callable[[BaseException | None], None] | None = None,
        on_loop: bool = True,
    ) -> concurrent.futures.Future[Any]:
        """Queue ``inputs`` for a batch; the future resolves to this request's outputs
        (``wrap(outputs)`` with ``wrap``; it must not raise). ``on_loop=False`` queues it
        for the batch threads even when batches run on the caller's event loop (for a
        caller that will block its thread on the future). ``on_done(error)`` is called
        once the future is done, before its callbacks (``error``: ``None``, the request's
        error, or :class:`~pyserving.errors.CancelledError`), whichever way it ends,
        including the refusals raised here (then before raising).

        ``output_keys`` (names of outputs of the run function, checked by the caller)
        selects and orders the outputs this request gets; ``None``: all. The batch still
        computes every output, so requests selecting different outputs share batches.

        Raises ``Unavailable`` at once when the queue is full or the scheduler is closed. A
        request that cannot be batched (more rows than ``max_batch_size``, or inputs without
        a common dimension 0) runs here, in the calling thread, and comes back done (failed
        with its ``ServingError``; any other exception is raised here). A queued request's
        future fails with its batch's ``ServingError`` (other exceptions of the batch become
        ``Internal``); its callbacks run on a batch thread or the completion thread (see the
        class docstring). Cancelling a queued request's future takes it out of its batch.
        """
        try:
            tensors = {
                k: v if type(v) is np.ndarray else np.asarray(v) for k, v in inputs.items()
            }
            rows = _rows(tensors)
            if rows is None or rows > self.options.max_batch_size:
                try:
                    outputs = self._run(tensors)
                    if output_keys is not None:
                        outputs = _select(outputs, output_keys)
                except ServingError as exc:
                    if on_done is not None:
                        on_done(exc)
                    return settled_future(exception=exc)
                if on_done is not None:
                    on_done(None)
                return settled_future(outputs if wrap is None else wrap(outputs))
            key = self._key(tensors)
            if on_loop and self.batches_on_loop:
                loop = asyncio._get_running_loop()
                if loop is not None:
                    return self._submit_on_loop(
                        loop, tensors, rows, key, output_keys, wrap, on_done
                    )
            return self._submit_to_threads(tensors, rows, key, output_keys, wrap, on_done)
        except Exception as exc:
            if on_done is not None:
                on_done(exc)
            raise

    def _submit_to_threads(
        self,
        tensors: Tensors,
        rows: int,
        key: tuple[Any, ...],
        output_keys: Sequence[str] | None,
        wrap: Callable[[Tensors], Any] | None,
        on_done: Callable[[BaseException | None], None] | None,
    ) -> _Task:
        """Queue a request for the batch threads."""
        cond = self._cond
        with cond:
            if self._closed:
                raise Unavailable("The batch scheduler is shutting down")
            if self._queued_rows + rows > self.capacity_rows:
                raise Unavailable(
                    "The batch scheduling queue to which this task was submitted is full"
                )
            task = _Task(
                self._futures, tensors, rows, output_keys, self._clock(), wrap, on_done
            )
            queue_ = self._queues.get(key)
            if queue_ is None:
                queue_ = self._queues[key] = collections.deque()
            queue_.append(task)
            self._queued_rows += rows
            key_rows = self._rows_by_key.get(key, 0) + rows
            self._rows_by_key[key] = key_rows
            # Wake a batch thread only when there is news for it: new work, or a full batch.
            # (Waking on every request costs a GIL hand-off and a rescan per request.)
            if len(queue_) == 1 or key_rows >= self.options.max_batch_size:
                cond.notify()
        return task

    def _submit_on_loop(
        self,
        loop: asyncio.AbstractEventLoop,
        tensors: Tensors,
        rows: int,
        key: tuple[Any, ...],
        output_keys: Sequence[str] | None,
        wrap: Callable[[Tensors], Any] | None = None,
        on_done: Callable[[BaseException | None], None] | None = None,
    ) -> _Task:
        """Queue a request on ``loop`` (the calling thread's): its batch runs there, when
        full or when its oldest request has waited the batch timeout."""
        if self._closed:
            raise Unavailable("The batch scheduler is shutting down")
        waiting = self._loop_queues.get(loop)
        if waiting is None:
            waiting = self._loop_queues[loop] = _LoopQueue(loop)
        if waiting.total_rows + rows > self.capacity_rows:
            raise Unavailable("The batch scheduling queue to which this task was submitted is full")
        task = _Task(self._futures, tensors, rows, output_keys, self._clock(), wrap, on_done)
        queue_ = waiting.queues.get(key)
        if queue_ is None:
            queue_ = waiting.queues[key] = collections.deque()
        queue_.append(task)
        waiting.total_rows += rows
        key_rows = waiting.rows[key] = waiting.rows.get(key, 0) + rows
        scheduled = waiting.handles.get(key)
        timeout = self.options.batch_timeout_micros / 1e6
        if key_rows >= self.options.max_batch_size or timeout <= 0:
            # Full (or no timeout): run at the end of this turn of the loop.
            if scheduled is None or scheduled[1]:
                if scheduled is not None:
                    scheduled[0].cancel()
                waiting.handles[key] = (loop.call_soon(self._run_on_loop, waiting, key), False)
        elif scheduled is None:
            handle = loop.call_later(timeout, self._run_on_loop, waiting, key)
            waiting.handles[key] = (handle, True)
        return task

    def _run_on_loop(self, waiting: _LoopQueue, key: tuple[Any, ...]) -> None:
        """On the loop: run every request queued there under ``key``, in batches of at most
        ``max_batch_size`` rows (a request waits at most the timeout, never longer)."""
        waiting.handles.pop(key, None)
        queue_ = waiting.queues.pop(key, None)
        waiting.total_rows -= waiting.rows.pop(key, 0)
        while queue_:
            taken, _ = _pop_batch(queue_, self.options.max_batch_size)
            batch = self._start(taken)
            if not batch:
                continue
            if self._closed:
                error: ServingError = Unavailable("The batch scheduler is shutting down")
                self._complete(batch, None, 0, error)
                continue
            for done in self._execute(batch, self._clock() - taken[0].enqueued):
                self._complete(*done)

    def _fail_on_loop(self, waiting: _LoopQueue) -> None:
        """On the loop, once the scheduler is closed: fail what waits there."""
        for key in list(waiting.queues):
            scheduled = waiting.handles.get(key)
            if scheduled is not None:
                scheduled[0].cancel()
            self._run_on_loop(waiting, key)

    def _key(self, tensors: Tensors) -> tuple[Any, ...]:
        """Requests with equal keys can share a batch: same input names and dtypes, and
        same shapes past dimension 0 (same ranks with ``pad_variable_length_inputs``)."""
        if self.options.pad_variable_length_inputs:
            return tuple(sorted((k, v.dtype, v.ndim) for k, v in tensors.items()))
        if len(tensors) == 1:
            ((k, v),) = tensors.items()
            return ((k, v.dtype, v.shape[1:]),)
        return tuple(sorted((k, v.dtype, v.shape[1:]) for k, v in tensors.items()))

    def _take_batch(self) -> tuple[list[_Task], float] | None:
        """Wait for work; return the tasks of one batch (marked running; cancelled ones left
        out) and the oldest task's enqueue time."""
        opts = self.options
        timeout = opts.batch_timeout_micros / 1e6
        with self._cond:
            while True:
                if self._closed:
                    return None
                if not self._queues:
                    self._cond.wait()
                    continue
                key, queue_ = min(self._queues.items(), key=lambda item: item[1][0].enqueued)
                oldest = queue_[0].enqueued
                rows = self._rows_by_key[key]
                wait = oldest + timeout - self._clock()
                if rows < opts.max_batch_size and wait > 0:
                    self._cond.wait(wait)
                    continue
                taken, size = _pop_batch(queue_, opts.max_batch_size)
                self._queued_rows -= size
                self._rows_by_key[key] -= size
                if not queue_:
                    del self._queues[key]
                    del self._rows_by_key[key]
                if self._queues:
                    self._cond.notify()  # more work is waiting: hand it to another thread
                break
        return self._start(taken), oldest

    def _start(self, taken: list[_Task]) -> list[_Task]:
        """Mark ``taken`` running, under one lock; the tasks to run (cancelled ones left
        out: Future.set_running_or_notify_cancel, once for the batch)."""
        batch = []
        with self._futures:
            for task in taken:
                if task._state == _PENDING:
                    task._state = _RUNNING
                    batch.append(task)
                else:  # cancelled while queued
                    task._state = _CANCELLED_AND_NOTIFIED
                    for waiter in task._waiters:
                        waiter.add_cancelled(task)
        return batch

    def _worker(self) -> None:
        while True:
            taken = self._take_batch()
            if taken is None:
                return
            batch, oldest = taken
            if not batch:
                continue
            for done in self._execute(batch, self._clock() - oldest):
                if self._queues:
                    # More work is waiting: the completion thread answers this batch while
                    # this thread runs the next one (two batches in flight).
                    self._completions.put(done)
                else:
                    # Nothing to overlap with: answering here saves a thread hand-off.
                    self._complete(*done)

    def _execute(self, batch: list[_Task], queued: float) -> list[_Completion]:
        """Merge and run one batch; what answers its requests. A batch of several requests
        that fails with ``InvalidArgument`` (a request's bad value: a model's ``ValueError``,
        an op refusing one row) is split in halves and each half run again, down to the
        requests at fault (about 2 log2(n) runs for one bad request among n), so that only
        they get the error, not every request that shared their batch."""
        done = self._execute_batch(batch, queued)
        if len(batch) > 1 and isinstance(done[3], InvalidArgument):
            log.info(
                "A batch of %d requests failed (%s); running its halves again",
                len(batch),
                done[3].message,
            )
            return self._isolate(batch, queued)
        return [done]

    def _isolate(self, batch: list[_Task], queued: float) -> list[_Completion]:
        """Run each half of a failed ``batch`` again, recursing into halves that fail with
        ``InvalidArgument`` (not measured: see :meth:`_execute_batch`)."""
        done: list[_Completion] = []
        half = len(batch) // 2
        for part in (batch[:half], batch[half:]):
            ran = self._execute_batch(part, queued, measure=False)
            if len(part) > 1 and isinstance(ran[3], InvalidArgument):
                done.extend(self._isolate(part, queued))
            else:
                done.append(ran)
        return done

    def _execute_batch(
        self, batch: list[_Task], queued: float, measure: bool = True
    ) -> _Completion:
        """Merge and run one batch (on a batch thread or the loop); ``measure=False`` (part
        of a failed batch run again) leaves the batch cost and the observer out."""
        rows = 0
        for task in batch:
            rows += task.rows
        padded = self.options.padded_size(rows)
        try:
            merged = _merge(batch, rows, padded)
            if not measure:
                return batch, self._run(merged), padded, None
            if self._observer is not None:
                self._observer(rows, padded, queued)
            timer = self._timer
            start = timer()
            outputs = self._run(merged)
            elapsed = timer() - start
            cost = self._batch_cost
            self._batch_cost = (
                elapsed if cost is None else cost + _BATCH_COST_WEIGHT * (elapsed - cost)
            )
            return batch, outputs, padded, None
        except ServingError as exc:
            return batch, None, padded, exc
        except Exception as exc:
            log.exception("batch of %d rows failed", rows)
            return batch, None, padded, Internal(f"{type(exc).__name__}: {exc}")

    def _complete_loop(self) -> None:
        while True:
            item = self._completions.get()
            if item is None:
                return
            self._complete(*item)

    def _complete(
        self, batch: list[_Task], outputs: Tensors | None, padded: int, error: ServingError | None
    ) -> None:
        """Split a batch's outputs by views and resolve its tasks under one lock."""
        results: list[Tensors] = []
        if error is None:
            assert outputs is not None
            try:
                _check_batched(outputs, padded)
            except ServingError as exc:
                error = exc
            else:
                offset = 0
                for task in batch:
                    end = offset + task.rows
                    keys = task.keys
                    if keys is None:
                        results.append({name: v[offset:end] for name, v in outputs.items()})
                    else:
                        results.append({name: outputs[name][offset:end] for name in keys})
                    offset = end
        with self._futures:
            if error is None:
                for task, result in zip(batch, results, strict=True):
                    wrap = task.wrap
                    task._result = result if wrap is None else wrap(result)
                    task._state = _FINISHED
                    if task._waiters:  # concurrent.futures.wait
                        for waiter in task._waiters:
                            waiter.add_result(task)
            else:
                for task in batch:
                    task._exception = error
                    task._state = _FINISHED
                    if task._waiters:
                        for waiter in task._waiters:
                            waiter.add_exception(task)
            self._futures.notify_all()
        for task in batch:
            task.inputs = _NO_INPUTS  # drop the request's arrays now, not with the future
            task._invoke_callbacks()

    def close(self) -> None:
        """Stop the threads; queued requests fail with UNAVAILABLE, batches already run are
        answered. Idempotent."""
        with self._cond:
            if self._closed:
                return
            self._closed = True
            pending = [t for q in self._queues.values() for t in q]
            self._queues.clear()
            self._rows_by_key.clear()
            self._queued_rows = 0
            self._cond.notify_all()
        for waiting in list(self._loop_queues.values()):
            try:
                waiting.loop.call_soon_threadsafe(self._fail_on_loop, waiting)
            except RuntimeError:  # that loop is closed: nothing runs there any more
                pending.extend(t for tasks in waiting.queues.values() for t in tasks)
        for task in pending:
            if task.set_running_or_notify_cancel():
                task.set_exception(Unavailable("The batch scheduler is shutting down"))
        current = threading.current_thread()
        for t in self._threads:
            if t is not current:
                t.join(timeout=10)
        self._completions.put(None)
        if self._completer is not current:
            self._completer.join(timeout=10)


_NO_INPUTS: Tensors = {}


def _pop_batch(queue_: collections.deque[_Task], limit: int) -> tuple[list[_Task], int]:
    """Take tasks from the front of ``queue_`` while their rows fit in ``limit``; the tasks
    and their rows. (A task has at most ``max_batch_size`` rows, so one always fits.)"""
    taken: list[_Task] = []
    size = 0
    while queue_ and size + queue_[0].rows <= limit:
        task = queue_.popleft()
        size += task.rows
        taken.append(task)
    return taken, size


def _rows(tensors: Tensors) -> int | None:
    """The common dimension-0 size of every input, or None when they have none in common."""
    size = None
    for v in tensors.values():
        if not v.ndim:
            return None
        if size is None:
            size = v.shape[0]
        elif v.shape[0] != size:
            return None
    return size or None


def _merge(batch: Sequence[_Task], rows: int, padded: int) -> Tensors:
    """The batch's inputs: each input's rows written in order into one preallocated array
    of ``padded`` rows (zero-padded past dimension 0 to the largest shape when shapes
    differ), the padding rows copies of the first row. A batch of one request unpadded is
    that request's arrays."""
    first = batch[0].inputs
    if len(batch) == 1 and padded == rows:
        return first
    merged: Tensors = {}
    for name, x0 in first.items():
        tail = x0.shape[1:]
        out = np.empty((padded, *tail), x0.dtype)
        offset = 0
        for task in batch:
            x = task.inputs[name]
            if x.shape[1:] != tail:  # pad_variable_length_inputs: shapes differ
                out = _merge_padded(batch, name, padded)
                break
            end = offset + task.rows
            out[offset:end] = x
            offset = end
        if padded > rows:
            out[rows:] = out[:1]
        merged[name] = out
    return merged


def _merge_padded(batch: Sequence[_Task], name: str, padded: int) -> np.ndarray:
    """Input ``name`` of the batch, each request's array zero-padded (empty strings for
    object arrays) past dimension 0 to the largest shape."""
    shapes = [task.inputs[name].shape[1:] for task in batch]
    target = tuple(max(dims) for dims in zip(*shapes, strict=True))
    dtype = batch[0].inputs[name].dtype
    out = np.zeros((padded, *target), dtype)
    if dtype.kind == "O":
        out[...] = b""
    offset = 0
    for task in batch:
        x = task.inputs[name]
        end = offset + task.rows
        region = (slice(offset, end), *[slice(0, d) for d in x.shape[1:]])
        out[region] = x
        offset = end
    return out


def _check_batched(outputs: Tensors, batch: int) -> None:
    """TF Serving's check before splitting a batch's outputs (``BatchingSession``), its
    ``FAILED_PRECONDITION`` naming the output and its shape."""
    for name, value in outputs.items():
        if value.ndim == 0:
            raise FailedPrecondition(f"Batched output tensor has 0 dimensions (output {name})")
        if value.shape[0] != batch:
            raise FailedPrecondition(
                "Batched output tensor's 0th dimension does not equal the sum of the 0th "
                f"dimension sizes of the input tensors (output {name} has shape "
                f"{list(value.shape)}, the batch {batch} rows)"
            )


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
        if output_keys is not None:
            self.inner.check_output_keys(signature_name, output_keys)
        return self._scheduler(signature_name).submit(inputs, output_keys)

    def run_future(
        self,
        signature_name: str,
        inputs: Mapping[str, np.ndarray],
        output_keys: Sequence[str] | None = None,
        *,
        wrap: Callable[[Tensors], Any] | None = None,
        on_done: Callable[[BaseException | None], None] | None = None,
    ) -> concurrent.futures.Future[Any]:
        """As :meth:`run`, without waiting: see :meth:`BatchScheduler.submit_future` (also
        for ``wrap`` and ``on_done``). The future is the request's own (one per request,
        whatever ``output_keys``): cancelling it takes the request out of its batch."""
        try:
            if output_keys is not None:
                self.inner.check_output_keys(signature_name, output_keys)
                output_keys = list(output_keys)
            scheduler = self._scheduler(signature_name)
        except Exception as exc:
            if on_done is not None:
                on_done(exc)
            raise
        return scheduler.submit_future(inputs, output_keys, wrap=wrap, on_done=on_done)

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
