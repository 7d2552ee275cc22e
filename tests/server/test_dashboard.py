"""The dashboard's server side, in process: series arithmetic, load records, "try it"
requests, and the routes on a real RestHandler over a real ServerCore.

The page itself is tested in a browser against the real server: tests/e2e/test_dashboard.py.
"""

from __future__ import annotations

import json
import pathlib
import shutil
import threading
from collections.abc import Iterator

import orjson
import pytest

from pyserving.config import ModelServerConfig, parse_text_proto
from pyserving.core.clock import ManualClock
from pyserving.core.loader import ResourceEstimate
from pyserving.core.manager import ManagerOptions
from pyserving.core.monitor import ManagerState, ServableState
from pyserving.core.source import ServableId
from pyserving.errors import Internal
from pyserving.server.core import ServerCore, ServerCoreOptions
from pyserving.server.dashboard import Dashboard, ServerInfo, install_dashboard_routes
from pyserving.server.dashboard.loads import LoadRecorder
from pyserving.server.dashboard.routes import CONTENT_SECURITY_POLICY, STATIC_FILES, read_static
from pyserving.server.dashboard.series import RequestSeries, SeriesOptions, quantile_us
from pyserving.server.dashboard.snapshot import CONTENT_TTL
from pyserving.server.metrics import LATENCY_BUCKETS_US, ModelTotals, ServerMetrics
from pyserving.server.rest import RestHandler
from pyserving.server.service import ModelServing
from tests.core.fakes import FakeLoader
from tests.server.test_warmup import predict_log, write_warmup

BUCKETS = len(LATENCY_BUCKETS_US) + 1


def counts(**by_bucket: int) -> list[int]:
    """Histogram counts with ``b<i>=n`` requests in bucket i."""
    out = [0] * BUCKETS
    for key, value in by_bucket.items():
        out[int(key[1:])] = value
    return out


# ---------------------------------------------------------------------------- quantiles


@pytest.mark.parametrize(
    ("histogram", "q", "expected"),
    [
        (counts(), 0.5, None),
        # all in the first bucket [0, 10 us]: interpolated from 0
        (counts(b0=10), 0.5, 5.0),
        (counts(b0=10), 1.0, 10.0),
        # bucket 1 is (10, 18]: half of it
        (counts(b1=4), 0.5, 14.0),
        # 99 fast, 1 slow: p50 among the fast, p99 at the fast bucket's top
        (counts(b0=99, b5=1), 0.5, 10.0 * 0.5 / 0.99),
        (counts(b0=99, b5=1), 0.99, 10.0),
        (
            counts(b0=98, b5=2),
            0.99,
            LATENCY_BUCKETS_US[4] + (LATENCY_BUCKETS_US[5] - LATENCY_BUCKETS_US[4]) * 0.5,
        ),
        # above the last bound: the last bound
        (counts(**{f"b{BUCKETS - 1}": 3}), 0.5, LATENCY_BUCKETS_US[-1]),
    ],
)
def test_quantile_from_bucket_counts(
    histogram: list[int], q: float, expected: float | None
) -> None:
    result = quantile_us(histogram, q)
    if expected is None:
        assert result is None
    else:
        assert result == pytest.approx(expected)


# ---------------------------------------------------------------------------- series


class Totals:
    """Counters a test sets by hand, read by the series as it would read ServerMetrics."""

    def __init__(self) -> None:
        self.values: dict[str, ModelTotals] = {}

    def add(
        self,
        name: str,
        requests: int,
        errors: int = 0,
        bucket: int = 3,
        batches: int = 0,
        rows: float = 0.0,
    ) -> None:
        old = self.values.get(name, ModelTotals(0, 0, (0,) * BUCKETS))
        latency = list(old.latency_counts)
        latency[bucket] += requests
        self.values[name] = ModelTotals(
            old.requests + requests,
            old.errors + errors,
            tuple(latency),
            old.batches + batches,
            old.batch_rows + rows,
        )

    def __call__(self) -> dict[str, ModelTotals]:
        return dict(self.values)


def test_series_points_are_interval_deltas() -> None:
    totals = Totals()
    totals.add("a", 100)  # before the series started: not an interval's traffic
    series = RequestSeries(totals, SeriesOptions(step=2.0, points=5))
    series.sample()
    assert series.since(0) == (0, {})
    totals.add("a", 10, errors=2, bucket=0)
    totals.add("b", 4, bucket=1, batches=2, rows=4)
    series.sample()
    seq, points = series.since(0)
    assert seq == 1
    assert points["a"] == [[1, 10, 2, 0.005, 0.01, None]]
    assert points["b"] == [[1, 4, 0, 0.014, 0.018, 2.0]]
    series.sample()  # no traffic: no point
    totals.add("a", 1)
    series.sample()
    seq, points = series.since(1)
    assert seq == 3
    assert [p[0] for p in points["a"]] == [3]
    assert "b" not in points


def test_series_keeps_a_bounded_window() -> None:
    totals = Totals()
    series = RequestSeries(totals, SeriesOptions(step=1.0, points=3))
    series.sample()
    for _ in range(6):
        totals.add("a", 1)
        series.sample()
    seq, points = series.since(0)
    assert seq == 6
    assert [p[0] for p in points["a"]] == [4, 5, 6]
    # A model idle for the whole window is dropped.
    for _ in range(3):
        series.sample()
    assert series.since(0) == (9, {})


def test_series_since_in_the_future_gets_the_whole_window() -> None:
    """A page that polled a previous server process knows a larger sequence number."""
    totals = Totals()
    series = RequestSeries(totals, SeriesOptions(points=10))
    series.sample()
    totals.add("a", 5)
    series.sample()
    assert series.since(1000)[1]["a"][0][0] == 1


def test_model_totals_sum_over_apis_entrypoints_and_statuses() -> None:
    metrics = ServerMetrics()
    metrics.observe_request("m", "predict", "REST", "OK", 5e-6)
    metrics.observe_request("m", "predict", "GRPC", "OK", 15e-6)
    metrics.observe_request("m", "classify", "REST", "INVALID_ARGUMENT", 15e-6)
    metrics.observe_request("n", "predict", "REST", "OK", 1.0)
    metrics.observe_batch("m", "serving_default", 3, 4, 0.001)
    metrics.observe_batch("m", "serving_default", 5, 8, 0.001)
    totals = metrics.model_totals()
    assert totals["m"].requests == 3
    assert totals["m"].errors == 1
    assert totals["m"].latency_counts[0] == 1
    assert totals["m"].latency_counts[1] == 2
    assert totals["m"].batches == 2
    assert totals["m"].batch_rows == 8.0
    assert totals["n"].batches == 0
    assert sum(totals["n"].latency_counts) == 1


# ---------------------------------------------------------------------------- load records


def test_load_recorder_measures_growth_over_each_load() -> None:
    readings = iter([1000, 5000, 7000, 6000, 6000])
    recorder = LoadRecorder(rss=lambda: next(readings))
    a, b = ServableId("a", 1), ServableId("b", 1)
    recorder.on_state(ServableState(a, ManagerState.LOADING))
    recorder.on_state(ServableState(a, ManagerState.AVAILABLE, duration=0.5))
    recorder.on_state(ServableState(b, ManagerState.LOADING))
    recorder.on_state(ServableState(b, ManagerState.AVAILABLE, duration=0.25))
    assert recorder.get(a) is not None and recorder.get(a).growth_bytes == 4000  # type: ignore[union-attr]
    assert recorder.get(a).load_seconds == 0.5  # type: ignore[union-attr]
    assert recorder.get(b).growth_bytes == -1000  # type: ignore[union-attr]
    failed = ServableId("c", 1)
    recorder.on_state(ServableState(failed, ManagerState.LOADING))
    recorder.on_state(ServableState(failed, ManagerState.END, Internal("x")))
    assert recorder.get(failed) is None


# ---------------------------------------------------------------------------- with a core


def make_config(text: str) -> ModelServerConfig:
    config = ModelServerConfig()
    parse_text_proto(text, config, "tensorflow.serving.ModelServerConfig")
    return config


HOSTILE = '<img src=x onerror="alert(1)">'


@pytest.fixture
def fake_core(tmp_path: pathlib.Path) -> Iterator[ServerCore]:
    """Fake loaders: a version directory holding BROKEN fails with an error quoting HTML."""

    def factory(model: object, id: ServableId, path: str) -> FakeLoader:
        fails = 100 if pathlib.Path(path, "BROKEN").exists() else 0
        loader = FakeLoader(id.name, id.version, ram=1000 * id.version, fail_times=fails)
        if fails:

            def load() -> None:
                raise Internal(f"cannot read {HOSTILE} in {path}")

            loader.load = load  # type: ignore[method-assign]
        return loader

    for name, versions in {"alpha": [1, 2], HOSTILE: [3]}.items():
        for v in versions:
            (tmp_path / "repo" / str(abs(hash(name))) / str(v)).mkdir(parents=True)
    options = ServerCoreOptions(
        manager=ManagerOptions(max_num_load_retries=0, resource_budget=ResourceEstimate(10**6)),
        file_system_poll_wait_seconds=0,
        platforms={"tensorflow": factory},
        settle_timeout=30,
    )
    with ServerCore(options) as core:
        yield core


def fake_config(tmp_path: pathlib.Path) -> ModelServerConfig:
    body = "".join(
        f'config {{ name: {json.dumps(n)} base_path: "{tmp_path / "repo" / str(abs(hash(n)))}" '
        f"{'model_version_policy { all {} }' if n == 'alpha' else ''} }}"
        for n in ("alpha", HOSTILE)
    )
    return make_config(f"model_config_list {{ {body} }}")


def test_state_reports_versions_errors_memory_and_transitions(
    fake_core: ServerCore, tmp_path: pathlib.Path
) -> None:
    metrics = ServerMetrics()
    dashboard = Dashboard(
        fake_core,
        metrics,
        ServerInfo(
            grpc_port=1,
            rest_port=2,
            flags=(("port", "1"), ("model_base_path", "s3://key:secret@bucket/m")),
        ),
        wall_clock=lambda: 1_000_000.0,
        rss=lambda: 123,
    )
    # Subscribed after the dashboard, so called after it for each event: once it has seen
    # every version settle, so has the dashboard's load recorder.
    settled: list[ServableState] = []
    all_seen = threading.Event()

    def after_dashboard(state: ServableState) -> None:
        if state.state in (ManagerState.AVAILABLE, ManagerState.END):
            settled.append(state)
            if len(settled) == 3:
                all_seen.set()

    fake_core.manager.bus.subscribe(after_dashboard)
    (tmp_path / "repo" / str(abs(hash(HOSTILE))) / "3" / "BROKEN").touch()
    fake_core.reload_config(fake_config(tmp_path))
    assert all_seen.wait(30)
    state = dashboard.state()
    dashboard.close()
    orjson.dumps(state)  # JSON as it is
    assert state["server"]["ports"] == {"grpc": 1, "rest": 2, "grpc_socket": ""}
    assert state["server"]["worker"] is None
    assert state["server"]["flags"] == [["port", "1"], ["model_base_path", "s3://***@bucket/m"]]
    assert state["server"]["memory"] == {
        "rss_bytes": 123,
        "reserved_bytes": 3000,
        "budget_bytes": 10**6,
    }
    by_name = {m["name"]: m for m in state["models"]}
    assert [m["name"] for m in state["models"]] == sorted(["alpha", HOSTILE])
    alpha = by_name["alpha"]
    assert alpha["status"] == "AVAILABLE"
    assert alpha["version_policy"] == "all"
    assert [(v["version"], v["state"]) for v in alpha["versions"]] == [
        (2, "AVAILABLE"),
        (1, "AVAILABLE"),
    ]
    assert alpha["versions"][0]["ram_estimate_bytes"] == 2000
    assert alpha["versions"][0]["ram_growth_bytes"] == 0  # rss() is constant here
    hostile = by_name[HOSTILE]
    assert hostile["status"] == "ERROR"
    (version,) = hostile["versions"]
    assert version["state"] == "END"
    assert version["error"].startswith("INTERNAL: cannot read " + HOSTILE)
    assert version["ram_estimate_bytes"] is None
    newest = state["transitions"][0]
    assert {t["model"] for t in state["transitions"]} == {"alpha", HOSTILE}
    assert any(t["error"] and HOSTILE in t["error"] for t in state["transitions"])
    assert newest["time"] >= state["server"]["started"] == 1_000_000.0


def test_viewers_share_a_build_until_a_version_changes_or_it_ages(
    fake_core: ServerCore, tmp_path: pathlib.Path
) -> None:
    now = [1000.0]
    dashboard = Dashboard(fake_core, ServerMetrics(), wall_clock=lambda: now[0])
    fake_core.reload_config(fake_config(tmp_path))
    first = dashboard.state()
    alpha = next(m for m in first["models"] if m["name"] == "alpha")
    assert alpha["labels"] == {}
    # Labels change without a version changing state: seen once the build is CONTENT_TTL old.
    fake_core.manager.set_version_labels("alpha", {"stable": 1})
    now[0] += CONTENT_TTL / 2
    assert dashboard.state()["tag"] == first["tag"]
    now[0] += CONTENT_TTL / 2
    second = dashboard.state()
    alpha = next(m for m in second["models"] if m["name"] == "alpha")
    assert alpha["labels"] == {"stable": 1}
    # A version changing state is seen at once.
    (tmp_path / "repo" / str(abs(hash("alpha"))) / "3").mkdir()
    fake_core.reload_config(fake_config(tmp_path))
    fake_core.monitor.wait_until_available(ServableId("alpha", 3), timeout=30)
    third = dashboard.state()
    alpha = next(m for m in third["models"] if m["name"] == "alpha")
    assert [v["version"] for v in alpha["versions"]] == [3, 2, 1]
    dashboard.close()


def test_a_loading_version_shows_how_long_and_its_copy_progress(tmp_path: pathlib.Path) -> None:
    gate, created = threading.Event(), threading.Event()
    loaders: list[FakeLoader] = []

    def factory(model: object, id: ServableId, path: str) -> FakeLoader:
        loaders.append(FakeLoader(id.name, id.version, gate=gate))
        created.set()
        return loaders[-1]

    (tmp_path / "m" / "4").mkdir(parents=True)
    options = ServerCoreOptions(
        manager=ManagerOptions(num_load_threads=1, clock=ManualClock()),
        file_system_poll_wait_seconds=0,
        platforms={"tensorflow": factory},
        settle_timeout=30,
    )

    class Copying:
        """The model cache's progress, as while version 4 is being copied."""

        def progress(self, name: str, version: int) -> tuple[int, int] | None:
            return (250, 1000) if (name, version) == ("m", 4) else None

        def close(self) -> None:
            pass

    with ServerCore(options) as core:
        core.cache = Copying()  # type: ignore[assignment]
        clock = core.manager.options.clock
        assert isinstance(clock, ManualClock)
        dashboard = Dashboard(core, ServerMetrics())
        config = make_config(
            f'model_config_list {{ config {{ name: "m" base_path: "{tmp_path / "m"}" }} }}'
        )
        reload = threading.Thread(target=core.reload_config, args=(config,))
        reload.start()
        try:
            assert created.wait(30)
            assert loaders[0].started.wait(30)
            clock.advance(2.5)
            (model,) = dashboard.state()["models"]
            (version,) = model["versions"]
            assert model["status"] == "LOADING"
            assert version["state"] == "LOADING"
            assert version["loading_s"] == 2.5
            assert version["progress"] == {"done_bytes": 250, "total_bytes": 1000}
        finally:
            gate.set()
            reload.join(30)
        (version,) = dashboard.state()["models"][0]["versions"]
        assert version["state"] == "AVAILABLE"
        assert "progress" not in version
        dashboard.close()


@pytest.fixture(scope="module")
def served(
    testdata: pathlib.Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[RestHandler, Dashboard, pathlib.Path]]:
    tmp = tmp_path_factory.mktemp("dashboard")
    shutil.copytree(testdata / "saved_model_half_plus_two_cpu", tmp / "two")
    shutil.copytree(testdata / "saved_model_half_plus_two_cpu", tmp / "warm")
    write_warmup(tmp / "warm" / "00000123", [predict_log(x=7.0)])
    metrics = ServerMetrics()
    options = ServerCoreOptions(
        manager=ManagerOptions(run_manager_loop=True), file_system_poll_wait_seconds=0
    )
    with ServerCore(options, metrics) as core:
        metrics_sub = core.manager.bus.subscribe(metrics.on_state)
        dashboard = Dashboard(core, metrics, ServerInfo(rest_port=8501))
        available = threading.Semaphore(0)  # released after the dashboard saw each AVAILABLE
        core.manager.bus.subscribe(
            lambda s: available.release() if s.state is ManagerState.AVAILABLE else None
        )
        core.reload_config(
            make_config(
                f'model_config_list {{ config {{ name: "two" base_path: "{tmp / "two"}" }} '
                f'config {{ name: "warm" base_path: "{tmp / "warm"}" }} }}'
            )
        )
        assert available.acquire(timeout=30) and available.acquire(timeout=30)
        handler = RestHandler(ModelServing(core, metrics=metrics))
        install_dashboard_routes(handler, dashboard)
        yield handler, dashboard, tmp
        dashboard.close()
        metrics_sub()


def test_page_and_assets_carry_the_content_security_policy(
    served: tuple[RestHandler, Dashboard, pathlib.Path],
) -> None:
    handler, _, _ = served
    redirect = handler.handle("GET", "/dashboard", {}, b"")
    assert redirect.status == 302
    assert (b"location", b"dashboard/") in redirect.headers
    for path, name in [
        ("/dashboard/", "index.html"),
        ("/dashboard/static/dashboard.js", "dashboard.js"),
        ("/dashboard/static/dashboard.css", "dashboard.css"),
    ]:
        response = handler.handle("GET", path, {}, b"")
        assert response.status == 200
        assert response.body == read_static(name)
        assert response.content_type == STATIC_FILES[name]
        headers = dict(response.headers)
        assert headers[b"content-security-policy"] == CONTENT_SECURITY_POLICY
        assert headers[b"x-content-type-options"] == b"nosniff"
    assert handler.handle("GET", "/dashboard/static/nope.js", {}, b"").status == 404
    assert handler.handle("GET", "/dashboard/static/../rest.py", {}, b"").status == 404


def test_page_has_no_inline_script_or_style_and_no_external_asset() -> None:
    html = read_static("index.html").decode()
    assert "<style" not in html and " style=" not in html
    assert "<script>" not in html and "on" + "load=" not in html
    for name in STATIC_FILES:
        text = read_static(name).decode()
        assert "http://" not in text.replace("http://www.w3.org/2000/svg", "")
        assert "https://" not in text
    assert "innerHTML" not in read_static("dashboard.js").decode()
    assert "insertAdjacentHTML" not in read_static("dashboard.js").decode()


def test_state_endpoint_sends_each_chart_point_once(
    served: tuple[RestHandler, Dashboard, pathlib.Path],
) -> None:
    handler, dashboard, _ = served
    body = b'{"instances": [1.0, 2.0]}'
    dashboard.series.sample()
    for _ in range(3):
        assert handler.handle("POST", "/v1/models/two:predict", {}, body).status == 200
    dashboard.series.sample()
    first = orjson.loads(handler.handle("GET", "/dashboard/api/state", {}, b"").body)
    seq = first["series"]["seq"]
    (two,) = [m for m in first["models"] if m["name"] == "two"]
    assert first["points"]["two"][-1][0] == seq
    assert first["points"]["two"][-1][1] == 3
    assert two["versions"][0]["state"] == "AVAILABLE"
    assert two["versions"][0]["load_s"] > 0
    assert two["platform"] == "tensorflow"
    again = orjson.loads(handler.handle("GET", f"/dashboard/api/state/{seq}", {}, b"").body)
    assert again["points"] == {}
    assert again["models"] == first["models"]
    assert handler.handle("GET", "/dashboard/api/state/x1", {}, b"").status == 400


def test_state_endpoint_omits_models_the_caller_already_has(
    served: tuple[RestHandler, Dashboard, pathlib.Path],
) -> None:
    handler, _, _ = served
    first = orjson.loads(handler.handle("GET", "/dashboard/api/state", {}, b"").body)
    seq, tag = first["series"]["seq"], first["tag"]
    same = orjson.loads(handler.handle("GET", f"/dashboard/api/state/{seq}/{tag}", {}, b"").body)
    assert same["tag"] == tag
    assert same["models"] is None and same["transitions"] is None
    assert same["server"]["ports"] == first["server"]["ports"]
    other = orjson.loads(handler.handle("GET", f"/dashboard/api/state/{seq}/0", {}, b"").body)
    assert other["models"] == first["models"]


def test_try_it_request_from_the_signature_is_answered(
    served: tuple[RestHandler, Dashboard, pathlib.Path],
) -> None:
    handler, _, _ = served
    response = handler.handle("GET", "/dashboard/api/example/two", {}, b"")
    example = orjson.loads(response.body)
    assert example["source"] == "signature"
    assert example["version"] == 123
    assert example["body"] == {"signature_name": "serving_default", "inputs": {"x": [[1.0]]}}
    answer = handler.handle("POST", "/v1/models/two:predict", {}, orjson.dumps(example["body"]))
    assert answer.status == 200
    assert orjson.loads(answer.body) == {"outputs": [[2.5]]}


def test_try_it_request_from_warmup_records(
    served: tuple[RestHandler, Dashboard, pathlib.Path],
) -> None:
    handler, _, _ = served
    example = orjson.loads(handler.handle("GET", "/dashboard/api/example/warm", {}, b"").body)
    assert example["source"] == "warmup"
    assert example["body"] == {"signature_name": "serving_default", "inputs": {"x": [[7.0]]}}
    answer = handler.handle("POST", "/v1/models/warm:predict", {}, orjson.dumps(example["body"]))
    assert orjson.loads(answer.body) == {"outputs": [[5.5]]}


def test_try_it_for_an_unknown_model_is_not_found(
    served: tuple[RestHandler, Dashboard, pathlib.Path],
) -> None:
    handler, _, _ = served
    response = handler.handle("GET", f"/dashboard/api/example/{HOSTILE}", {}, b"")
    assert response.status == 404
    assert orjson.loads(response.body)["error"] == (
        f"Model {HOSTILE} has no available version to try"
    )


def test_without_the_dashboard_its_paths_are_not_found(
    served: tuple[RestHandler, Dashboard, pathlib.Path],
) -> None:
    handler, _, _ = served
    bare = RestHandler(handler.serving)
    for path in ("/dashboard", "/dashboard/", "/dashboard/api/state", "/dashboard/api/state/1"):
        assert bare.handle("GET", path, {}, b"").status == 404
