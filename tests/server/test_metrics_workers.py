"""ServerMetrics across workers: each writes prometheus-client's multiprocess files, any
renders the aggregate with the single-process names, types and labels."""

from __future__ import annotations

import pathlib
from collections.abc import Iterator

import pytest
from prometheus_client.multiprocess import mark_process_dead

from pyserving.core.monitor import ManagerState, ServableState
from pyserving.core.source import ServableId
from pyserving.server.metrics import ServerMetrics

REQUESTS = [
    ("half_plus_two", "predict", "REST", "OK", 0.000120),
    ("half_plus_two", "predict", "GRPC", "OK", 0.003),
    ("half_plus_two", "predict", "REST", "INVALID_ARGUMENT", 0.00002),
    ("other", "classify", "GRPC", "OK", 2.5),
    ("half_plus_two", "predict", "REST", "OK", 40.0),
]


def _families(text: bytes) -> dict[str, list[str]]:
    """Lines of each family (its HELP, TYPE and samples), by family name."""
    out: dict[str, list[str]] = {}
    name = ""
    for line in text.decode().splitlines():
        if line.startswith("# HELP "):
            name = line.split()[2]
        out.setdefault(name, []).append(line)
    return out


def _state(name: str, version: int, state: ManagerState) -> ServableState:
    return ServableState(ServableId(name, version), state)


@pytest.fixture
def closing() -> Iterator[list[ServerMetrics]]:
    """ServerMetrics appended here are closed after the test."""
    made: list[ServerMetrics] = []
    yield made
    for metrics in made:
        metrics.close()


def test_two_workers_render_what_one_process_would(
    tmp_path: pathlib.Path, closing: list[ServerMetrics]
) -> None:
    directory = str(tmp_path)
    workers = [ServerMetrics(directory, i, process_id=1000 + i) for i in range(2)]
    closing.extend(workers)
    single = ServerMetrics()
    for i, (model, api, entrypoint, status, seconds) in enumerate(REQUESTS):
        workers[i % 2].observe_request(model, api, entrypoint, status, seconds)
        single.observe_request(model, api, entrypoint, status, seconds)
    for metrics in (*workers, single):
        metrics.observe_batch("half_plus_two", "serving_default", 3, 4, 0.001)
    expected = _families(single.render())
    for metrics in workers:  # whichever worker answers the scrape
        got = _families(metrics.render())
        for name in (
            ":tensorflow:serving:request_count",
            ":tensorflow:serving:request_latency",
        ):
            assert got[name][:2] == expected[name][:2]  # HELP, TYPE
            assert sorted(got[name]) == sorted(expected[name])
        latency = got[":tensorflow:serving:request_latency"]
        for i, line in enumerate(latency):  # per label set: buckets up to +Inf, count, sum
            if 'le="+Inf"' in line:
                assert "_count{" in latency[i + 1]
                assert "_sum{" in latency[i + 2]
        batch = got[":tensorflow:serving:batching_session:processed_batch_size"]
        assert any('le="4.0"' in line and line.endswith(" 2.0") for line in batch)
        assert got["pyserving_worker_request_count"][2:] == [
            'pyserving_worker_request_count{worker="0"} 3.0',
            'pyserving_worker_request_count{worker="1"} 2.0',
        ]
        assert got["pyserving_worker_request_count"][1] == (
            "# TYPE pyserving_worker_request_count counter"
        )


def test_version_state_counts_live_workers(
    tmp_path: pathlib.Path, closing: list[ServerMetrics]
) -> None:
    directory = str(tmp_path)
    a, b = (ServerMetrics(directory, i, process_id=2000 + i) for i in range(2))
    closing.extend((a, b))
    for metrics in (a, b):
        metrics.on_state(_state("m", 1, ManagerState.LOADING))
    a.on_state(_state("m", 1, ManagerState.AVAILABLE))
    lines = _families(a.render())["pyserving_model_version_state"]
    assert 'pyserving_model_version_state{model_name="m",state="AVAILABLE",version="1"} 1.0' in (
        lines
    )
    assert 'pyserving_model_version_state{model_name="m",state="LOADING",version="1"} 1.0' in (
        lines
    )
    b.on_state(_state("m", 1, ManagerState.AVAILABLE))
    lines = _families(b.render())["pyserving_model_version_state"]
    assert 'pyserving_model_version_state{model_name="m",state="AVAILABLE",version="1"} 2.0' in (
        lines
    )
    # A worker that dies leaves the gauge (the supervisor marks it dead), not the counters.
    a.observe_request("m", "predict", "REST", "OK", 0.001)
    mark_process_dead(2000, directory)
    families = _families(b.render())
    assert (
        'pyserving_model_version_state{model_name="m",state="AVAILABLE",version="1"} 1.0'
        in families["pyserving_model_version_state"]
    )
    assert (
        ':tensorflow:serving:request_count{model_name="m",status="OK"} 1.0'
        in (families[":tensorflow:serving:request_count"])
    )


def test_without_a_directory_nothing_is_shared(tmp_path: pathlib.Path) -> None:
    metrics = ServerMetrics()
    metrics.observe_request("m", "predict", "REST", "OK", 0.001)
    assert b"pyserving_worker_request_count" not in metrics.render()
    assert list(tmp_path.iterdir()) == []
