"""The batch scheduler with a NumPy run function: merging, splitting, padding, back-pressure."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import numpy as np
import pytest
from google.protobuf import text_format

from pyserving.batching import BatchingOptions, BatchScheduler
from pyserving.errors import Internal, InvalidArgument, Unavailable
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


def test_output_without_batch_dimension_is_an_error() -> None:
    s = BatchScheduler(lambda x: {"y": np.float32(1.0) * np.ones(())}, BatchingOptions())
    try:
        with pytest.raises(Internal, match="dimension 0 must be the batch size"):
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
