"""Smoke test of the benchmark suite: a tiny ``--quick`` run completes and reports its fields.

Only the shape of the results and the absence of errors are checked, never timings.
"""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import pytest

pytestmark = pytest.mark.e2e

ROOT = pathlib.Path(__file__).resolve().parents[1]

POINT_FIELDS = {
    "concurrency",
    "window_s",
    "requests",
    "qps",
    "latency_ms",
    "errors",
    "error_samples",
    "validated",
    "client_cpu_percent",
    "server_cpu_percent",
    "server_cpu_us_per_request",
    "server_peak_rss_mb",
    "server_rss_mb",
}


def test_quick_run_reports_every_field_and_no_errors(
    testdata: pathlib.Path, tmp_path: pathlib.Path
) -> None:
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "benchmarks.run",
            "--quick",
            "--concurrency=1,2",
            "--duration=1",
            f"--out={tmp_path}",
        ],
        cwd=ROOT,
        env=dict(os.environ, PYSERVING_TESTDATA=str(testdata)),
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Targets" in done.stdout

    (results_file,) = tmp_path.glob("bench-*.json")
    results = json.loads(results_file.read_text())
    assert list(tmp_path.glob("bench-*.png")), "no chart written"

    meta = results["meta"]
    assert meta["quick"] is True
    assert meta["concurrency"] == [1, 2]
    assert meta["versions"]["tensorflow"]

    runs = {(r["workload"], r["server"], r["protocol"]): r for r in results["runs"]}
    assert set(runs) == {
        ("half_plus_two", "pyserving", "rest"),
        ("half_plus_two", "pyserving", "grpc"),
        ("half_plus_two", "pyserving", "v2-rest"),
        ("half_plus_two", "pyserving", "v2-grpc"),
    }
    for key, run in runs.items():
        assert [p["concurrency"] for p in run["points"]] == [1, 2], key
        assert run["exit_status"] == 0, key
        for point in run["points"]:
            assert set(point) >= POINT_FIELDS, (key, sorted(POINT_FIELDS - set(point)))
            assert point["errors"] == 0, (key, point["error_samples"])
            assert point["requests"] > 0, key
            assert point["validated"] > 0, key
            assert set(point["latency_ms"]) >= {"p50", "p90", "p99"}, key
            assert point["server_peak_rss_mb"] > 0, key

    targets = {t["id"]: t for t in results["targets"]}
    assert targets["zero_errors"]["met"] is True
    assert targets["rest_p50_vs_grpc"]["ratio"] is not None
    assert targets["rest_cpu_vs_grpc"]["met"] is None  # concurrency 32 is not in a quick run
    assert targets["v2_grpc_p50_vs_predict_c1"]["ratio"] is not None
    assert targets["batched_vs_inprocess_rest"]["met"] is None  # not measured in a quick run


BENCHMARK_COMMANDS = (
    "batching_overhead",
    "compare",
    "dashboard",
    "float_text",
    "h2abuse",
    "inprocess",
    "loadgen",
    "models",
    "platform_ram",
    "platform_targets",
    "reliability_memory",
    "reliability_swaps",
    "report",
    "run",
    "workers",
)


@pytest.mark.parametrize("name", BENCHMARK_COMMANDS)
def test_every_benchmark_command_builds_its_options(
    name: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """``python -m benchmarks.NAME --help`` prints its usage and exits 0: its options are
    consistent (no option defined twice, as a merge of two changes can leave)."""
    import runpy
    import warnings

    monkeypatch.setattr("sys.argv", [f"benchmarks.{name}", "--help"])
    with pytest.raises(SystemExit) as exit_info, warnings.catch_warnings():
        # runpy notes that a benchmark module another one imported runs again as __main__.
        warnings.simplefilter("ignore", RuntimeWarning)
        runpy.run_module(f"benchmarks.{name}", run_name="__main__", alter_sys=False)
    assert exit_info.value.code in (0, None)
    assert "usage" in capsys.readouterr().out


def test_half_plus_two_is_exported_once_when_tf_servings_models_are_absent(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """From a clone with nothing beside it (no ``PYSERVING_TESTDATA``, no
    ``../shared/testdata``), the benchmarks' ``half_plus_two`` is the generated equivalent,
    exported into the run's models directory; a later run reuses that export."""
    from benchmarks import models as bench_models

    from pyserving.testing import models as test_models

    monkeypatch.setattr(bench_models, "TESTDATA", tmp_path / "absent")
    models_dir = tmp_path / "models"
    base = bench_models.half_plus_two_base(models_dir)
    assert base == models_dir / "testdata" / test_models.HALF_PLUS_TWO
    graph = base / "00000123" / "saved_model.pb"
    assert graph.is_file()
    assert test_models.is_current(models_dir / "testdata", [test_models.HALF_PLUS_TWO])
    exported = graph.stat().st_mtime_ns
    workload = bench_models.half_plus_two(models_dir)
    assert workload.base_path == base
    assert graph.stat().st_mtime_ns == exported  # reused, not exported again


def test_platform_targets_measures_both_latency_points_before_any_load_point() -> None:
    """Each protocol's p50 at concurrency 1 comes from a server that has not just served a
    concurrency-32 point, and the protocols take turns going first."""
    from benchmarks.platform_targets import CONFIGS, _in_round_order

    points = CONFIGS["pyserving"][1]
    for round_ in range(4):
        ordered = _in_round_order(points, round_)
        assert sorted(ordered) == sorted(points)
        levels = [max(levels) for _, levels in ordered]
        assert levels == sorted(levels)  # every latency point before every load point
        assert ordered[0][0] == ("rest" if round_ % 2 == 0 else "grpc")
