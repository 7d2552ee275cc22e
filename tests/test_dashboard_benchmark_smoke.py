"""Smoke test of ``benchmarks.dashboard``: a tiny run completes and reports its fields.

Only the shape of the results is checked (and the payload arithmetic that does not depend on
timing), never CPU or latency figures.
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

FIELDS = {
    "bundle_bytes",
    "bundle_gzip_bytes",
    "state_idle_bytes",
    "state_first_poll_bytes",
    "state_full_window_bytes",
    "bytes_per_chart_point",
    "poll_bytes_median",
    "poll_latency_ms_median",
    "cpu_ms_per_viewer_second",
    "rounds_detail",
    "traffic_errors",
    "versions_shown",
}


def test_tiny_dashboard_benchmark_reports_every_field(tmp_path: pathlib.Path) -> None:
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "benchmarks.dashboard",
            "--models=3",
            "--versions=2",
            "--viewers=2",
            "--duration=2",
            "--rounds=1",
            f"--out={tmp_path}",
        ],
        cwd=ROOT,
        env=dict(os.environ),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    (results,) = tmp_path.glob("dashboard-*.json")
    doc = json.loads(results.read_text())
    assert set(doc) >= FIELDS
    assert doc["versions_shown"] == 6
    assert doc["traffic_errors"] == 0
    assert doc["state_full_window_bytes"] >= doc["state_first_poll_bytes"]
    assert "server CPU per viewer" in done.stdout
