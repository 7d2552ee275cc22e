"""The batch scheduler with a NumPy run function: merging, splitting, padding, back-pressure."""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import Iterator

import numpy as np
import pytest
from google.protobuf import text_format

from pyserving.batching import BatchingOptions, BatchScheduler, settled_future
from pyserving.errors import FailedPrecondition, Internal, InvalidArgument, Unavailable
from pyserving.protos import BatchingParameters


class Recorder:
    """``y = 0.5 x + 2`` that records each batch size and can be held shut by a gate."""

    def __init__(self) -> None:
        self.batches: list[int] = []
        self.gate = threading.Event()
        self.gate.set()
        self.entered = threading.Event()

    def __call__(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        self.entered.set()
        assert self.gate.wait(30)
        self.batches.append(int(inputs["x"].shape[0]))
        return {"y": inputs["x"] * 0.5 + 2}


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


def scheduler(recorder: Recorder, **kw: object) -> BatchScheduler:
    return BatchScheduler(recorder, BatchingOptions(**kw))  # type: ignore[arg-type]


@pytest.fixture
def held(recorder: Recorder) -> Iterator[BatchScheduler]:
    s = scheduler(recorder, max_batch_size=8, num_batch_threads=1, max_enqueued_batches=4)
    yield s
    recorder.gate.set()
    s.close()


def test_single_request(recorder: Recorder) -> None:
    s = scheduler(recorder)
    try:
        out = s.submit({"x": np.array([[2.0], [3.0]], np.float32)})
        np.testing.assert_allclose(out["y"], [[3.0], [3.5]])
    finally:
        s.close()


def test_concurrent_requests_are_merged_and_split_back(
    recorder: Recorder, held: BatchScheduler
) -> None:
    # Hold the only batch thread on a first request so the next ones queue up together.
    recorder.gate.clear()
    first = threading.Thread(target=held.submit, args=({"x": np.zeros((1, 1), np.float32)},))
    first.start()
    assert recorder.entered.wait(30)
    inputs = [np.full((i + 1, 1), float(i), np.float32) for i in range(3)]  # 1 + 2 + 3 rows
    results: list = [None] * 3

    def call(i: int) -> None:
        results[i] = held.submit({"x": inputs[i]})["y"]

    threads = [threading.Thread(target=call, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    while held._queued_rows < 6:  # all three are queued behind the held batch
        threading.Event().wait(0.005)
    recorder.gate.set()
    for t in [*threads, first]:
        t.join(30)
    assert recorder.batches == [1, 6]
    for x, y in zip(inputs, results, strict=True):
        np.testing.assert_allclose(y, x * 0.5 + 2)


def test_padding_to_allowed_batch_sizes(recorder: Recorder) -> None:
    s = scheduler(recorder, max_batch_size=8, allowed_batch_sizes=(2, 4, 8))
    try:
        out = s.submit({"x": np.ones((3, 1), np.float32)})
        assert out["y"].shape == (3, 1)
        assert recorder.batches == [4]
    finally:
        s.close()


def test_full_queue_answers_unavailable_at_once(recorder: Recorder, held: BatchScheduler) -> None:
    recorder.gate.clear()
    blocker = threading.Thread(target=held.submit, args=({"x": np.zeros((1, 1), np.float32)},))
    blocker.start()
    assert recorder.entered.wait(30)
    # Capacity is 4 batches x 8 rows = 32 rows queued.
    waiting = [
        threading.Thread(target=held.submit, args=({"x": np.zeros((8, 1), np.float32)},))
        for _ in range(4)
    ]
    for t in waiting:
        t.start()
    while held._queued_rows < 32:
        threading.Event().wait(0.005)
    with pytest.raises(Unavailable, match="queue to which this task was submitted is full"):
        held.submit({"x": np.zeros((1, 1), np.float32)})
    recorder.gate.set()
    for t in [*waiting, blocker]:
        t.join(30)


def test_request_larger_than_max_batch_runs_alone(recorder: Recorder) -> None:
    s = scheduler(recorder, max_batch_size=4)
    try:
        out = s.submit({"x": np.ones((10, 1), np.float32)})
        assert out["y"].shape == (10, 1)
        assert recorder.batches == [10]
    finally:
        s.close()


def test_incompatible_shapes_batch_apart(recorder: Recorder, held: BatchScheduler) -> None:
    recorder.gate.clear()
    blocker = threading.Thread(target=held.submit, args=({"x": np.zeros((1, 1), np.float32)},))
    blocker.start()
    assert recorder.entered.wait(30)
    results: list = [None, None]

    def call(i: int, x: np.ndarray) -> None:
        results[i] = held.submit({"x": x})["y"]

    a = threading.Thread(target=call, args=(0, np.ones((2, 1), np.float32)))
    b = threading.Thread(target=call, args=(1, np.ones((2, 3), np.float32)))
    a.start()
    b.start()
    while held._queued_rows < 4:
        threading.Event().wait(0.005)
    recorder.gate.set()
    for t in (a, b, blocker):
        t.join(30)
    assert sorted(recorder.batches) == [1, 2, 2]
    assert results[0].shape == (2, 1) and results[1].shape == (2, 3)


def test_pad_variable_length_inputs(recorder: Recorder) -> None:
    s = scheduler(recorder, pad_variable_length_inputs=True, num_batch_threads=1)
    try:
        out = s.submit({"x": np.ones((2, 3), np.float32)})
        assert out["y"].shape == (2, 3)
    finally:
        s.close()


@pytest.mark.parametrize(
    ("output", "message"),
    [
        (np.ones(()), r"^Batched output tensor has 0 dimensions \(output y\)$"),
        (
            np.ones((1, 2)),
            r"^Batched output tensor's 0th dimension does not equal the sum of the 0th "
            r"dimension sizes of the input tensors \(output y has shape \[1, 2\], the batch 2 "
            r"rows\)$",
        ),
    ],
)
def test_output_without_batch_dimension_is_an_error(output: np.ndarray, message: str) -> None:
    """TF Serving's FAILED_PRECONDITION (BatchingSession), naming the output."""
    s = BatchScheduler(lambda x: {"y": output}, BatchingOptions())
    try:
        with pytest.raises(FailedPrecondition, match=message):
            s.submit({"x": np.ones((2, 1), np.float32)})
    finally:
        s.close()


def test_close_fails_queued_and_refuses_new(recorder: Recorder) -> None:
    s = scheduler(recorder)
    s.close()
    s.close()
    with pytest.raises(Unavailable):
        s.submit({"x": np.ones((1, 1), np.float32)})


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"max_batch_size": 0}, "max_batch_size"),
        ({"max_batch_size": 8, "allowed_batch_sizes": (4, 2, 8)}, "increasing"),
        ({"max_batch_size": 8, "allowed_batch_sizes": (2, 4)}, "must match max_batch_size"),
        ({"num_batch_threads": 0}, "num_batch_threads"),
    ],
)
def test_options_validation(kw: dict, message: str) -> None:
    with pytest.raises(InvalidArgument, match=message):
        BatchingOptions(**kw)


def test_options_from_tf_serving_file(testdata) -> None:  # type: ignore[no-untyped-def]
    params = text_format.Parse((testdata / "batching_config.txt").read_text(), BatchingParameters())
    options = BatchingOptions.from_proto(params)
    assert options == BatchingOptions(
        max_batch_size=128,
        batch_timeout_micros=0,
        max_enqueued_batches=1000000,
        num_batch_threads=8,
    )


def test_submit_future_queues_without_waiting(recorder: Recorder, held: BatchScheduler) -> None:
    recorder.gate.clear()
    first = held.submit_future({"x": np.array([[0.0]], np.float32)})
    assert recorder.entered.wait(10)  # the batch thread is now held inside the run
    futures = [held.submit_future({"x": np.array([[float(i)]], np.float32)}) for i in range(1, 5)]
    assert not any(f.done() for f in futures)  # queued, and this thread was not held
    recorder.gate.set()
    np.testing.assert_allclose(first.result(10)["y"], [[2.0]])
    for i, future in enumerate(futures, 1):
        np.testing.assert_allclose(future.result(10)["y"], [[0.5 * i + 2]])
    assert recorder.batches == [1, 4]


def test_cancelled_future_is_dropped_and_the_rest_of_its_batch_runs(
    recorder: Recorder, held: BatchScheduler
) -> None:
    recorder.gate.clear()
    first = held.submit_future({"x": np.array([[0.0]], np.float32)})
    assert recorder.entered.wait(10)
    kept = held.submit_future({"x": np.array([[1.0]], np.float32)})
    dropped = held.submit_future({"x": np.array([[2.0]], np.float32)})
    assert dropped.cancel()
    recorder.gate.set()
    first.result(10)
    np.testing.assert_allclose(kept.result(10)["y"], [[2.5]])
    assert dropped.cancelled()
    assert recorder.batches == [1, 1]
    np.testing.assert_allclose(held.submit({"x": np.array([[4.0]], np.float32)})["y"], [[4.0]])


class TwoOutputs:
    """A servable with one signature, ``x -> {a: x, b: 2x}``, that records each run."""

    def __init__(self) -> None:
        self.runs: list[tuple[int, list[str] | None]] = []
        self.gate = threading.Event()
        self.gate.set()
        self.entered = threading.Event()

    def check_output_keys(self, signature_name: str, output_keys: list[str]) -> None:
        unknown = [k for k in output_keys if k not in ("a", "b")]
        if signature_name != "s" or unknown or len(set(output_keys)) != len(output_keys):
            raise InvalidArgument(f"bad outputs {output_keys}")

    def run(
        self, signature_name: str, inputs: dict[str, np.ndarray], keys: list[str] | None
    ) -> dict[str, np.ndarray]:
        self.entered.set()
        assert self.gate.wait(30)
        self.runs.append((int(inputs["x"].shape[0]), keys))
        return {"a": inputs["x"], "b": inputs["x"] * 2}


def test_output_filters_share_one_scheduler_per_signature() -> None:
    from pyserving.batching import BatchingServable

    inner = TwoOutputs()
    options = BatchingOptions(max_batch_size=8, num_batch_threads=1, max_enqueued_batches=4)
    servable = BatchingServable(inner, options)
    before = {t.name for t in threading.enumerate()}
    try:
        inner.gate.clear()
        first = servable.run_future("s", {"x": np.array([[0.0]], np.float32)})
        assert inner.entered.wait(10)
        filters = [None, ["a"], ["b"], ["b", "a"]]
        futures = [
            servable.run_future("s", {"x": np.array([[float(i)]], np.float32)}, keys)
            for i, keys in enumerate(filters, 1)
        ]
        inner.gate.set()
        first.result(10)
        answers = [f.result(10) for f in futures]
        assert [list(a) for a in answers] == [["a", "b"], ["a"], ["b"], ["b", "a"]]
        np.testing.assert_allclose(answers[3]["b"], [[8.0]])
        # Different output selections ran in one batch, with every output computed...
        assert inner.runs == [(1, None), (4, None)]
        # ...on one scheduler: however many selections arrive, the threads stay bounded.
        for i in range(20):
            keys = ["a"] if i % 2 else ["b", "a"]
            servable.run("s", {"x": np.array([[1.0]], np.float32)}, keys)
        new_threads = {t.name for t in threading.enumerate()} - before
        # (the batch threads and the one completion thread of the signature's scheduler)
        assert len(new_threads) == options.num_batch_threads + 1, new_threads
        with pytest.raises(InvalidArgument):
            servable.run_future("s", {"x": np.array([[1.0]], np.float32)}, ["c"])
        with pytest.raises(InvalidArgument):
            servable.run("s", {"x": np.array([[1.0]], np.float32)}, ["a", "a"])
    finally:
        inner.gate.set()
        servable.close()


def test_cancelling_a_filtered_answer_takes_the_request_out_of_its_batch() -> None:
    from pyserving.batching import BatchingServable

    inner = TwoOutputs()
    options = BatchingOptions(max_batch_size=8, num_batch_threads=1, max_enqueued_batches=4)
    servable = BatchingServable(inner, options)
    try:
        inner.gate.clear()
        first = servable.run_future("s", {"x": np.array([[0.0]], np.float32)})
        assert inner.entered.wait(10)
        kept = servable.run_future("s", {"x": np.array([[1.0]], np.float32)}, ["a"])
        dropped = servable.run_future("s", {"x": np.array([[2.0]], np.float32)}, ["b"])
        assert dropped.cancel()
        inner.gate.set()
        first.result(10)
        np.testing.assert_allclose(kept.result(10)["a"], [[1.0]])
        assert [rows for rows, _ in inner.runs] == [1, 1]
    finally:
        inner.gate.set()
        servable.close()


# ------------------------------------------------- futures, merge, pipelining, timeout


class FakeClock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_queued_futures_work_with_asyncio_and_concurrent_wait(
    recorder: Recorder, held: BatchScheduler
) -> None:
    import asyncio
    import concurrent.futures

    recorder.gate.clear()
    first = held.submit_future({"x": np.array([[0.0]], np.float32)})
    assert recorder.entered.wait(10)
    queued = [held.submit_future({"x": np.array([[float(i)]], np.float32)}) for i in (1, 2)]
    waiter = threading.Thread(
        target=concurrent.futures.wait, args=(queued,), kwargs={"timeout": 30}
    )
    waiter.start()
    recorder.gate.set()

    async def answers() -> list[np.ndarray]:
        done = await asyncio.gather(*(asyncio.wrap_future(f) for f in queued))
        return [d["y"] for d in done]

    assert [float(y[0, 0]) for y in asyncio.run(answers())] == [2.5, 3.0]
    waiter.join(30)
    assert not waiter.is_alive()
    done, not_done = concurrent.futures.wait([first, *queued], timeout=30)
    assert len(done) == 3 and not not_done
    assert recorder.batches == [1, 2]


def test_an_answered_batch_is_completed_while_the_next_one_runs(recorder: Recorder) -> None:
    # The first request's callback (completion) waits until the model runs the second
    # batch: with completion on the batch thread this could never happen.
    s = scheduler(recorder, max_batch_size=8, num_batch_threads=1)
    try:
        second_runs = threading.Event()
        overlapped: list[bool] = []
        recorder.gate.clear()
        first = s.submit_future({"x": np.array([[1.0]], np.float32)})
        assert recorder.entered.wait(10)
        recorder.entered.clear()
        first_thread: list[str] = []

        first_done = threading.Event()

        def on_first(_f: object) -> None:
            first_thread.append(threading.current_thread().name)
            overlapped.append(second_runs.wait(30))
            first_done.set()

        first.add_done_callback(on_first)
        second = s.submit_future({"x": np.array([[2.0]], np.float32)})
        recorder.gate.set()  # the first batch finishes...
        assert recorder.entered.wait(30)  # ...and the second one enters the model
        second_runs.set()
        np.testing.assert_allclose(second.result(30)["y"], [[3.0]])
        np.testing.assert_allclose(first.result(30)["y"], [[2.5]])
        assert first_done.wait(30)  # (result() may return before the callbacks ran)
        assert overlapped == [True]
        assert first_thread == ["pyserving-batch-done"]
    finally:
        recorder.gate.set()
        s.close()


def test_a_batch_with_nothing_queued_behind_it_is_answered_on_its_batch_thread(
    recorder: Recorder,
) -> None:
    s = BatchScheduler(recorder, BatchingOptions(max_batch_size=8, num_batch_threads=1), "solo")
    try:
        threads: list[str] = []
        future = s.submit_future({"x": np.array([[1.0]], np.float32)})
        future.add_done_callback(lambda _f: threads.append(threading.current_thread().name))
        future.result(30)
        # The batch thread ran the first request's callbacks before taking the second.
        s.submit({"x": np.array([[2.0]], np.float32)})
        assert threads in (["pyserving-solo-0"], ["MainThread"])  # (done before it was added)
    finally:
        s.close()


def test_batch_timeout_is_measured_by_the_scheduler_clock(recorder: Recorder) -> None:
    clock = FakeClock()
    options = BatchingOptions(
        max_batch_size=8, batch_timeout_micros=10_000_000, num_batch_threads=1
    )
    s = BatchScheduler(recorder, options, clock=clock)
    try:
        a = s.submit_future({"x": np.array([[1.0]], np.float32)})
        clock.now = 4.0
        b = s.submit_future({"x": np.array([[2.0]], np.float32)})
        assert not a.done() and not b.done()
        # At 10 s the oldest request's batch is due; a request of another shape (a queue of
        # its own, so the batch thread is woken) makes the thread look at the clock again.
        clock.now = 10.0
        c = s.submit_future({"x": np.array([[3.0, 3.0]], np.float32)})
        np.testing.assert_allclose(a.result(30)["y"], [[2.5]])
        np.testing.assert_allclose(b.result(30)["y"], [[3.0]])
        assert recorder.batches == [2]
        assert not c.done()  # due at 20 s
        clock.now = 20.0
        d = s.submit_future({"x": np.array([[4.0, 4.0, 4.0]], np.float32)})
        np.testing.assert_allclose(c.result(30)["y"], [[3.5, 3.5]])
        assert recorder.batches == [2, 1]
    finally:
        s.close()
    with pytest.raises(Unavailable, match="shutting down"):
        d.result(30)  # still queued at close: failed, never run
    assert recorder.batches == [2, 1]


def test_merge_writes_each_input_and_pads_rows_and_lengths() -> None:
    seen: list[dict[str, np.ndarray]] = []
    gate = threading.Event()
    entered = threading.Event()

    def run(inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        entered.set()
        assert gate.wait(30)
        seen.append({k: v.copy() for k, v in inputs.items()})
        return {"sum": inputs["x"].sum(axis=1), "ids": inputs["ids"] * 10}

    options = BatchingOptions(
        max_batch_size=8,
        allowed_batch_sizes=(4, 8),
        pad_variable_length_inputs=True,
        num_batch_threads=1,
    )
    s = BatchScheduler(run, options)
    try:
        first = s.submit_future({"x": np.ones((1, 1), np.float32), "ids": np.zeros(1, np.int64)})
        assert entered.wait(10)
        a = s.submit_future(
            {"x": np.array([[1.0, 2.0]], np.float32), "ids": np.array([7], np.int64)}
        )
        b = s.submit_future(
            {"x": np.array([[3.0, 4.0, 5.0], [6.0, 7.0, 8.0]], np.float32), "ids": np.array([8, 9])}
        )
        gate.set()
        first.result(30)
        np.testing.assert_allclose(a.result(30)["sum"], [3.0])
        np.testing.assert_allclose(b.result(30)["sum"], [12.0, 21.0])
        np.testing.assert_array_equal(b.result(30)["ids"], [80, 90])
        merged = seen[1]
        np.testing.assert_array_equal(
            merged["x"],
            [[1, 2, 0], [3, 4, 5], [6, 7, 8], [1, 2, 0]],  # padded to 4 rows with row 0
        )
        np.testing.assert_array_equal(merged["ids"], [7, 8, 9, 7])
        assert merged["x"].dtype == np.float32 and merged["ids"].dtype == np.int64
    finally:
        gate.set()
        s.close()


def test_a_failing_batch_fails_only_its_own_requests() -> None:
    gate = threading.Event()
    entered = threading.Event()

    def run(inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        entered.set()
        assert gate.wait(30)
        x = inputs["x"]
        if x.shape[1] == 2:
            raise InvalidArgument("two columns")
        if x.shape[1] == 3:
            raise RuntimeError("three columns")
        return {"y": x + 1}

    s = BatchScheduler(run, BatchingOptions(max_batch_size=8, num_batch_threads=1))
    try:
        first = s.submit_future({"x": np.zeros((1, 1), np.float32)})
        assert entered.wait(10)
        bad = [s.submit_future({"x": np.zeros((1, 2), np.float32)}) for _ in range(2)]
        broken = s.submit_future({"x": np.zeros((1, 3), np.float32)})
        good = [s.submit_future({"x": np.full((1, 1), float(i), np.float32)}) for i in range(2)]
        gate.set()
        first.result(30)
        for future in bad:
            with pytest.raises(InvalidArgument, match="two columns"):
                future.result(30)
        with pytest.raises(Internal, match="RuntimeError: three columns"):
            broken.result(30)
        assert [float(f.result(30)["y"][0, 0]) for f in good] == [1.0, 2.0]
    finally:
        gate.set()
        s.close()


class SteppingTimer:
    """A timer that advances ``step`` seconds each time it is read: every batch run then
    measures ``step`` seconds, whatever the machine's speed."""

    def __init__(self, step: float) -> None:
        self.step = step
        self.now = 0.0

    def __call__(self) -> float:
        self.now += self.step
        return self.now


class ThreadRecorder(Recorder):
    """A :class:`Recorder` that also records the thread each batch ran on."""

    def __init__(self) -> None:
        super().__init__()
        self.threads: list[str] = []

    def __call__(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        self.threads.append(threading.current_thread().name)
        return super().__call__(inputs)


def loop_scheduler(recorder: Recorder, step: float, **kw: object) -> BatchScheduler:
    """A scheduler whose batches measure ``step`` seconds each, its first batch run (a full
    one, from this thread, so on a batch thread at once) already measured."""
    options = BatchingOptions(**kw)  # type: ignore[arg-type]
    s = BatchScheduler(recorder, options, "t", timer=SteppingTimer(step), loop_threshold=0.5)
    s.submit({"x": np.zeros((options.max_batch_size, 1), np.float32)})
    return s


def submit_in_one_turn(s: BatchScheduler, values: list[float]) -> tuple[list[np.ndarray], str]:
    """Submit one row per value from one callback of a running event loop; wait for the
    answers there. Returns the outputs and the loop thread's name."""

    async def scenario() -> list[np.ndarray]:
        futures = [
            asyncio.wrap_future(s.submit_future({"x": np.array([[v]], np.float32)})) for v in values
        ]
        return [(await f)["y"] for f in futures]

    results: list[list[np.ndarray]] = []

    def run() -> None:
        results.append(asyncio.run(scenario()))

    thread = threading.Thread(target=run, name="a-loop")
    thread.start()
    thread.join(30)
    assert not thread.is_alive()
    return results[0], thread.name


def test_fast_batches_run_on_the_submitting_loop_merged_by_turn() -> None:
    recorder = ThreadRecorder()
    s = loop_scheduler(recorder, 0.001, max_batch_size=8, num_batch_threads=1)
    try:
        assert s.batches_on_loop
        outputs, loop_thread = submit_in_one_turn(s, [1.0, 2.0, 3.0])
        assert [float(y[0, 0]) for y in outputs] == [2.5, 3.0, 3.5]
        # The first batch ran on a batch thread; the three requests of one loop turn then
        # ran as one batch on the loop's own thread (timeout 0: at the end of the turn).
        assert recorder.batches == [8, 3]
        assert recorder.threads == ["pyserving-t-0", loop_thread]
    finally:
        s.close()


def test_full_batches_on_the_loop_do_not_wait_for_the_timeout() -> None:
    recorder = ThreadRecorder()
    s = loop_scheduler(
        recorder, 0.001, max_batch_size=4, batch_timeout_micros=600_000_000, num_batch_threads=1
    )
    try:
        # Ten minutes of timeout: only full batches can run before the test's own limit.
        outputs, _ = submit_in_one_turn(s, [float(i) for i in range(8)])
        assert [float(y[0, 0]) for y in outputs] == [0.5 * i + 2 for i in range(8)]
        assert recorder.batches == [4, 4, 4]
    finally:
        s.close()


def test_a_blocking_submit_on_a_loop_runs_its_batch_on_a_batch_thread() -> None:
    """Code running on an event loop that waits for a batch (a Python model wrapping a
    batched model, run on the loop) gets its answer from a batch thread: were its request
    queued on the loop, its batch could only run once the wait ended (a deadlock)."""
    recorder = ThreadRecorder()
    s = loop_scheduler(recorder, 0.001, max_batch_size=8, num_batch_threads=1)
    try:
        assert s.batches_on_loop
        results: list[np.ndarray] = []

        async def scenario() -> None:
            results.append(s.submit({"x": np.array([[4.0]], np.float32)})["y"])

        thread = threading.Thread(target=lambda: asyncio.run(scenario()), name="a-loop")
        thread.start()
        thread.join(30)
        assert not thread.is_alive()
        assert [float(y[0, 0]) for y in results] == [4.0]
        assert recorder.threads == ["pyserving-t-0", "pyserving-t-0"]
    finally:
        s.close()


def test_slow_batches_stay_on_batch_threads() -> None:
    recorder = ThreadRecorder()
    s = loop_scheduler(recorder, 1.0, max_batch_size=8, num_batch_threads=1)
    try:
        assert not s.batches_on_loop
        outputs, loop_thread = submit_in_one_turn(s, [1.0, 2.0])
        assert [float(y[0, 0]) for y in outputs] == [2.5, 3.0]
        assert loop_thread not in recorder.threads
        assert set(recorder.threads) == {"pyserving-t-0"}
    finally:
        s.close()


def test_close_fails_requests_waiting_on_a_loop() -> None:
    recorder = ThreadRecorder()
    s = loop_scheduler(
        recorder, 0.001, max_batch_size=8, batch_timeout_micros=600_000_000, num_batch_threads=1
    )
    queued = threading.Event()

    async def scenario() -> BaseException | None:
        future = s.submit_future({"x": np.array([[1.0]], np.float32)})
        queued.set()
        try:
            await asyncio.wrap_future(future)
        except Unavailable as exc:
            return exc
        return None

    results: list[BaseException | None] = []
    thread = threading.Thread(target=lambda: results.append(asyncio.run(scenario())))
    thread.start()
    assert queued.wait(30)
    s.close()
    thread.join(30)
    assert not thread.is_alive()
    assert isinstance(results[0], Unavailable)
    assert recorder.batches == [8]  # the waiting request never ran


def test_a_request_cancelled_while_waiting_on_the_loop_leaves_its_batch() -> None:
    recorder = ThreadRecorder()
    s = loop_scheduler(recorder, 0.001, max_batch_size=8, num_batch_threads=1)

    async def scenario() -> list[float]:
        futures = [s.submit_future({"x": np.array([[v]], np.float32)}) for v in (1.0, 2.0, 3.0)]
        assert futures[1].cancel()
        kept = [futures[0], futures[2]]
        return [float((await asyncio.wrap_future(f))["y"][0, 0]) for f in kept]

    try:
        assert asyncio.run(scenario()) == [2.5, 3.5]
        assert recorder.batches == [8, 2]
    finally:
        s.close()


def test_a_settled_future_behaves_as_a_finished_one() -> None:
    done = settled_future({"y": 1})
    failed: concurrent.futures.Future[int] = settled_future(exception=InvalidArgument("bad"))
    for future in (done, failed):
        assert future.done() and not future.running() and not future.cancelled()
        assert not future.cancel()
        seen: list[object] = []
        future.add_done_callback(seen.append)  # called at once
        assert seen == [future]
        finished, pending = concurrent.futures.wait([future], timeout=0)
        assert finished == {future} and not pending
    assert done.result(timeout=0) == {"y": 1} and done.exception() is None
    assert isinstance(failed.exception(timeout=0), InvalidArgument)
    with pytest.raises(InvalidArgument, match="bad"):
        failed.result()

    async def awaited() -> object:
        return await asyncio.wrap_future(done)

    assert asyncio.run(awaited()) == {"y": 1}


class Accounting:
    """``wrap`` and ``on_done`` for a submission: records what each saw and when."""

    def __init__(self) -> None:
        self.errors: list[BaseException | None] = []
        self.callbacks_before_done = 0
        self.callbacks = 0

    def wrap(self, outputs: dict[str, np.ndarray]) -> tuple[str, float]:
        return ("wrapped", float(outputs["y"].ravel()[0]))

    def on_done(self, error: BaseException | None) -> None:
        self.callbacks_before_done = self.callbacks
        self.errors.append(error)

    def callback(self, _future: object) -> None:
        self.callbacks += 1


def test_wrap_and_on_done_on_the_batch_threads(recorder: Recorder, held: BatchScheduler) -> None:
    recorder.gate.clear()
    first = held.submit_future({"x": np.array([[0.0]], np.float32)})
    assert recorder.entered.wait(10)
    ok, cancelled = Accounting(), Accounting()
    kept = held.submit_future(
        {"x": np.array([[2.0]], np.float32)}, wrap=ok.wrap, on_done=ok.on_done
    )
    kept.add_done_callback(ok.callback)
    dropped = held.submit_future(
        {"x": np.array([[4.0]], np.float32)}, wrap=cancelled.wrap, on_done=cancelled.on_done
    )
    assert ok.errors == [] and cancelled.errors == []  # queued: nothing called yet
    assert dropped.cancel()
    assert len(cancelled.errors) == 1 and type(cancelled.errors[0]).__name__ == "CancelledError"
    assert cancelled.errors[0].code.name == "CANCELLED"  # type: ignore[union-attr]
    recorder.gate.set()
    first.result(10)
    assert kept.result(10) == ("wrapped", 3.0)
    assert ok.errors == [None]  # once, before the future's callbacks
    assert ok.callbacks_before_done == 0 and ok.callbacks == 1
    assert recorder.batches == [1, 1]  # the cancelled request left its batch


def test_on_done_sees_a_failed_batch_and_refusals() -> None:
    def failing(inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        raise InvalidArgument("bad batch")

    s = BatchScheduler(failing, BatchingOptions(max_batch_size=4, num_batch_threads=1))
    try:
        acct = Accounting()
        future = s.submit_future({"x": np.ones((1, 1))}, wrap=acct.wrap, on_done=acct.on_done)
        with pytest.raises(InvalidArgument, match="bad batch"):
            future.result(10)
        assert len(acct.errors) == 1 and isinstance(acct.errors[0], InvalidArgument)
        # A request too large to batch runs at once: its future comes back done.
        alone = Accounting()
        done = s.submit_future({"x": np.ones((9, 1))}, wrap=alone.wrap, on_done=alone.on_done)
        assert done.done() and isinstance(alone.errors[0], InvalidArgument)
    finally:
        s.close()
    refused = Accounting()
    with pytest.raises(Unavailable):
        s.submit_future({"x": np.ones((1, 1))}, wrap=refused.wrap, on_done=refused.on_done)
    assert len(refused.errors) == 1 and isinstance(refused.errors[0], Unavailable)


def test_wrap_applies_to_unbatched_and_loop_batched_requests() -> None:
    recorder = ThreadRecorder()
    s = loop_scheduler(recorder, 0.001, max_batch_size=4, num_batch_threads=1)
    try:
        alone = Accounting()
        out = s.submit_future({"x": np.ones((6, 1))}, wrap=alone.wrap, on_done=alone.on_done)
        assert out.result(0) == ("wrapped", 2.5) and alone.errors == [None]
        accts = [Accounting() for _ in range(3)]

        async def scenario() -> list[object]:
            futures = [
                s.submit_future(
                    {"x": np.array([[float(i)]], np.float32)}, wrap=a.wrap, on_done=a.on_done
                )
                for i, a in enumerate(accts)
            ]
            return [await asyncio.wrap_future(f) for f in futures]

        assert asyncio.run(scenario()) == [("wrapped", 2.0), ("wrapped", 2.5), ("wrapped", 3.0)]
        assert [a.errors for a in accts] == [[None]] * 3
        assert recorder.batches == [4, 6, 3]  # the three ran as one batch on the loop
    finally:
        s.close()


class RefusesNegatives(Recorder):
    """A model that refuses any batch holding a negative value (INVALID_ARGUMENT), or, with
    ``internal``, fails it with INTERNAL."""

    def __init__(self, internal: bool = False) -> None:
        super().__init__()
        self.internal = internal

    def __call__(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if (inputs["x"] < 0).any():
            self.batches.append(-int(inputs["x"].shape[0]))
            if self.internal:
                raise Internal("the model broke")
            raise InvalidArgument("x must not be negative")
        return super().__call__(inputs)


def test_a_bad_request_fails_alone_not_its_batch() -> None:
    """A batch refused with INVALID_ARGUMENT runs again in halves, down to the request at
    fault: it gets the error, the others that shared its batch their answers."""
    model = RefusesNegatives()
    s = scheduler(model, max_batch_size=3, batch_timeout_micros=600_000_000)
    try:
        futures = [s.submit_future({"x": np.array([[v]], np.float32)}) for v in (1.0, -1.0, 3.0)]
        assert float(futures[0].result(30)["y"][0, 0]) == 2.5
        with pytest.raises(InvalidArgument, match="x must not be negative"):
            futures[1].result(30)
        assert float(futures[2].result(30)["y"][0, 0]) == 3.5
        # The batch; its halves [1] and [-1, 3]; the failed half's halves [-1] and [3].
        assert model.batches == [-3, 1, -2, -1, 1]
    finally:
        s.close()


def test_one_bad_request_among_many_costs_a_few_runs_not_one_each() -> None:
    model = RefusesNegatives()
    values = [float(v) for v in range(1, 17)]
    values[11] = -1.0
    s = scheduler(model, max_batch_size=16, batch_timeout_micros=600_000_000)
    try:
        futures = [s.submit_future({"x": np.array([[v]], np.float32)}) for v in values]
        for v, future in zip(values, futures, strict=True):
            if v < 0:
                with pytest.raises(InvalidArgument):
                    future.result(30)
            else:
                assert float(future.result(30)["y"][0, 0]) == 0.5 * v + 2
        # 1 + 2 log2(16) runs instead of 1 + 16.
        assert len(model.batches) == 9
        assert sum(n for n in model.batches if n > 0) == 15
    finally:
        s.close()


def test_a_batch_failing_otherwise_fails_every_request_once() -> None:
    model = RefusesNegatives(internal=True)
    s = scheduler(model, max_batch_size=2, batch_timeout_micros=600_000_000)
    try:
        futures = [s.submit_future({"x": np.array([[v]], np.float32)}) for v in (1.0, -1.0)]
        for future in futures:
            with pytest.raises(Internal, match="the model broke"):
                future.result(30)
        assert model.batches == [-2]  # not run again
    finally:
        s.close()
