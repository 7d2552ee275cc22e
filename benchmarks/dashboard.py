"""What the dashboard costs with many models: payload sizes and server CPU per viewer.

``python -m benchmarks.dashboard [--models 50] [--versions 5] [--viewers 8] [--duration 20]
[--rounds 3] [--browser] [--screenshot docs/dashboard-50-models.png]``

Builds a server holding ``--models`` Python models (``model.py``: y = 0.5 x + 2) with
``--versions`` versions each, all loaded (``model_version_policy { all {} }``), and sends
every model one predict a second throughout, so every chart has data. Then:

* **payload**: the page's bundle (HTML + JS + CSS, bytes as served and gzip-compressed for
  reference), the state document as a page's first poll gets it (``api/state``: every
  model, every version, the transitions and the charts' points so far), as each later
  poll gets it (``api/state/SINCE``: only new chart points), and the first poll's size with
  every model's chart full (5 minutes of points; extrapolated from the measured bytes per
  point);
* **server CPU per viewer-second**: each round measures the server's CPU (``/proc``) for
  ``--duration`` seconds with no viewer and with ``--viewers`` simulated viewers, each
  polling once a second as the page does (the order alternates between rounds); the cost is
  the difference divided by viewers x seconds, the median over rounds of each round's
  difference (both measured minutes apart, so the machine's drift cancels out);
* with ``--browser``: one real page in headless Chromium for ``--duration`` seconds: the
  time the page's script spends per update (its own ``performance.now()`` measure) and the
  server CPU it adds; ``--screenshot PATH`` saves the page.

Figures are noisy on a shared machine: compare them with the same run's baseline.
"""

from __future__ import annotations

import argparse
import datetime
import gzip
import json
import pathlib
import statistics
import sys
import tempfile
import threading
import time
from typing import Any

import httpx

from benchmarks import procstat, servers

MODEL_PY = '''"""y = 0.5 x + 2, for benchmarks/dashboard.py."""


class Model:
    signature = {
        "inputs": {"x": {"dtype": "float32", "shape": [-1, 1]}},
        "outputs": {"y": {"dtype": "float32", "shape": [-1, 1]}},
    }

    def predict(self, inputs):
        return {"y": inputs["x"] * 0.5 + 2.0}
'''


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.dashboard", description=__doc__)
    parser.add_argument("--models", type=int, default=50)
    parser.add_argument("--versions", type=int, default=5)
    parser.add_argument("--viewers", type=int, default=8)
    parser.add_argument("--duration", type=float, default=20.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--browser", action="store_true", help="also measure a real page")
    parser.add_argument("--screenshot", type=pathlib.Path, default=None)
    parser.add_argument("--out", type=pathlib.Path, default=servers.ROOT / "benchmarks/results")
    return parser.parse_args(argv)


def model_name(i: int) -> str:
    return f"model_{i:02d}"


def build_repository(root: pathlib.Path, models: int, versions: int) -> pathlib.Path:
    """``models`` x ``versions`` Python models and the config file serving all of them."""
    entries = []
    for i in range(models):
        base = root / model_name(i)
        for v in range(1, versions + 1):
            (base / str(v)).mkdir(parents=True)
            (base / str(v) / "model.py").write_text(MODEL_PY)
        entries.append(
            f'  config {{ name: "{model_name(i)}" base_path: "{base}" '
            "model_version_policy { all {} } }"
        )
    config = root / "models.config"
    config.write_text("model_config_list {\n" + "\n".join(entries) + "\n}\n")
    return config


class Traffic(threading.Thread):
    """One predict a second for every model, until stopped."""

    def __init__(self, url: str, models: int) -> None:
        super().__init__(name="traffic", daemon=True)
        self.url = url
        self.models = models
        self.stop = threading.Event()
        self.errors = 0

    def run(self) -> None:
        body = json.dumps({"instances": [[1.0]]})
        with httpx.Client(base_url=self.url, timeout=30) as client:
            while not self.stop.is_set():
                started = time.monotonic()
                for i in range(self.models):
                    response = client.post(f"/v1/models/{model_name(i)}:predict", content=body)
                    if response.status_code != 200:
                        self.errors += 1
                self.stop.wait(max(0.0, 1.0 - (time.monotonic() - started)))


class Viewer(threading.Thread):
    """Polls ``api/state/SINCE/TAG`` once a second, as the page does."""

    def __init__(self, url: str, seconds: float) -> None:
        super().__init__(name="viewer", daemon=True)
        self.url = url
        self.seconds = seconds
        self.sizes: list[int] = []
        self.latencies: list[float] = []

    def run(self) -> None:
        since, tag = 0, ""
        with httpx.Client(base_url=self.url, timeout=30) as client:
            start = time.monotonic()
            polls = 0
            while True:
                due = start + polls
                if due >= start + self.seconds:
                    break
                time.sleep(max(0.0, due - time.monotonic()))
                began = time.perf_counter()
                response = client.get(f"/dashboard/api/state/{since}/{tag}")
                self.latencies.append(time.perf_counter() - began)
                response.raise_for_status()
                self.sizes.append(len(response.content))
                doc = response.json()
                since, tag = doc["series"]["seq"], doc["tag"]
                polls += 1


def server_cpu_over(pid: int, seconds: float, viewers: int, url: str) -> tuple[float, Any]:
    """Server CPU seconds over ``seconds`` with ``viewers`` polling viewers."""
    threads = [Viewer(url, seconds) for _ in range(viewers)]
    before = procstat.cpu_seconds(pid)
    started = time.monotonic()
    for thread in threads:
        thread.start()
    if viewers:
        for thread in threads:
            thread.join()
    else:
        time.sleep(seconds)
    elapsed = time.monotonic() - started
    used = procstat.cpu_seconds(pid) - before
    return used * seconds / elapsed, threads


def measure(args: argparse.Namespace) -> dict[str, Any]:
    work = pathlib.Path(tempfile.mkdtemp(prefix="pyserving-dashboard-bench-"))
    config = build_repository(work / "models", args.models, args.versions)
    grpc_port, rest_port = servers.free_port(), servers.free_port()
    server = servers.ServerProcess(
        label="pyserving",
        command=[
            sys.executable,
            "-m",
            "pyserving",
            f"--port={grpc_port}",
            f"--rest_api_port={rest_port}",
            f"--model_config_file={config}",
            "--file_system_poll_wait_seconds=0",
        ],
        log_path=work / "server.log",
        rest_port=rest_port,
        grpc_port=grpc_port,
    )
    url = f"http://127.0.0.1:{rest_port}"
    doc: dict[str, Any] = {
        "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "models": args.models,
        "versions": args.versions,
        "viewers": args.viewers,
        "duration_s": args.duration,
        "rounds": args.rounds,
    }
    with servers.running(server, model_name(0)):
        doc["startup_s"] = round(server.startup_s, 1)
        with httpx.Client(base_url=url, timeout=30) as client:
            bundle = {
                path: client.get(path).content
                for path in (
                    "/dashboard/",
                    "/dashboard/static/dashboard.js",
                    "/dashboard/static/dashboard.css",
                )
            }
            state = client.get("/dashboard/api/state").content
        raw = sum(len(b) for b in bundle.values())
        doc["bundle_bytes"] = raw
        doc["bundle_gzip_bytes"] = sum(len(gzip.compress(b)) for b in bundle.values())
        doc["state_idle_bytes"] = len(state)
        doc["state_idle_gzip_bytes"] = len(gzip.compress(state))
        versions_loaded = sum(len(m["versions"]) for m in json.loads(state)["models"])
        doc["versions_shown"] = versions_loaded

        traffic = Traffic(url, args.models)
        traffic.start()
        time.sleep(5.0)  # a few sampled intervals with points for every model
        rounds: list[dict[str, Any]] = []
        sizes: list[int] = []
        latencies: list[float] = []
        for r in range(args.rounds):
            order = [0, args.viewers] if r % 2 == 0 else [args.viewers, 0]
            cpu: dict[int, float] = {}
            for viewers in order:
                used, threads = server_cpu_over(server.pid, args.duration, viewers, url)
                cpu[viewers] = used
                for thread in threads:
                    sizes.extend(thread.sizes[1:])  # after each viewer's first, full, poll
                    latencies.extend(thread.latencies)
            per_viewer_second = (cpu[args.viewers] - cpu[0]) / (args.viewers * args.duration)
            rounds.append(
                {
                    "server_cpu_s_idle": round(cpu[0], 3),
                    "server_cpu_s_viewers": round(cpu[args.viewers], 3),
                    "cpu_ms_per_viewer_second": round(per_viewer_second * 1000, 3),
                }
            )
            print(f"round {r + 1}: {rounds[-1]}", flush=True)
        doc["rounds_detail"] = rounds
        doc["cpu_ms_per_viewer_second"] = round(
            statistics.median(x["cpu_ms_per_viewer_second"] for x in rounds), 3
        )
        doc["cpu_percent_of_a_core_per_viewer"] = round(doc["cpu_ms_per_viewer_second"] / 10, 3)
        doc["poll_bytes_median"] = int(statistics.median(sizes)) if sizes else 0
        doc["poll_latency_ms_median"] = round(statistics.median(latencies) * 1000, 2)
        doc["poll_latency_ms_p99"] = round(
            sorted(latencies)[int(0.99 * (len(latencies) - 1))] * 1000, 2
        )
        with httpx.Client(base_url=url, timeout=30) as client:
            full = client.get("/dashboard/api/state")
        full_doc = full.json()
        point_count = sum(len(p) for p in full_doc["points"].values())
        points_bytes = len(json.dumps(full_doc["points"], separators=(",", ":")))
        per_point = points_bytes / point_count if point_count else 0.0
        window = full_doc["series"]["points"]
        doc["state_first_poll_bytes"] = len(full.content)
        doc["chart_points_sent"] = point_count
        doc["bytes_per_chart_point"] = round(per_point, 1)
        doc["state_full_window_bytes"] = int(
            len(full.content) + per_point * (args.models * window - point_count)
        )
        if args.browser or args.screenshot:
            doc["browser"] = measure_browser(server.pid, url, args)
        traffic.stop.set()
        traffic.join()
        doc["traffic_errors"] = traffic.errors
    return doc


def measure_browser(pid: int, url: str, args: argparse.Namespace) -> dict[str, Any]:
    """One real page: script time per update, the server CPU it adds, a screenshot."""
    from pyserving.testing.browser import start_chromium, stop_chromium

    driver = start_chromium(1400, 1000)
    try:
        began = time.perf_counter()
        driver.get(url + "/dashboard/")
        while driver.execute_script("return document.querySelectorAll('article.model').length") < (
            args.models
        ):
            time.sleep(0.05)
        first_render_ms = (time.perf_counter() - began) * 1000
        renders: list[float] = []
        before = procstat.cpu_seconds(pid)
        started = time.monotonic()
        last = None
        while time.monotonic() - started < args.duration:
            updates, render_ms = driver.execute_script(
                "return [document.body.dataset.updates, document.body.dataset.renderMs];"
            )
            if updates != last:
                last = updates
                renders.append(float(render_ms))
            time.sleep(0.25)
        elapsed = time.monotonic() - started
        used = procstat.cpu_seconds(pid) - before
        if args.screenshot is not None:
            driver.save_screenshot(str(args.screenshot))
        return {
            "first_render_ms": round(first_render_ms, 1),
            "update_script_ms_median": round(statistics.median(renders), 2),
            "update_script_ms_max": round(max(renders), 2),
            "server_cpu_s_with_page": round(used * args.duration / elapsed, 3),
        }
    finally:
        stop_chromium(driver)


def render(doc: dict[str, Any]) -> str:
    lines = [
        f"Dashboard with {doc['models']} models x {doc['versions']} versions "
        f"({doc['versions_shown']} versions shown), {doc['viewers']} viewers, "
        f"{doc['rounds']} rounds of {doc['duration_s']:g} s",
        f"  page bundle (HTML+JS+CSS): {doc['bundle_bytes']} bytes "
        f"({doc['bundle_gzip_bytes']} gzip-compressed)",
        f"  state, no traffic yet:     {doc['state_idle_bytes']} bytes "
        f"({doc['state_idle_gzip_bytes']} gzip-compressed)",
        f"  state, first poll:         {doc['state_first_poll_bytes']} bytes "
        f"({doc['chart_points_sent']} chart points, {doc['bytes_per_chart_point']} bytes each)",
        f"  state, every chart full:   {doc['state_full_window_bytes']} bytes (extrapolated)",
        f"  state, each later poll:    {doc['poll_bytes_median']} bytes (median)",
        f"  poll latency:              p50 {doc['poll_latency_ms_median']} ms, "
        f"p99 {doc['poll_latency_ms_p99']} ms",
        f"  server CPU per viewer:     {doc['cpu_ms_per_viewer_second']} ms per second "
        f"({doc['cpu_percent_of_a_core_per_viewer']}% of a core)",
    ]
    browser = doc.get("browser")
    if browser:
        lines.append(
            f"  real page: first render {browser['first_render_ms']} ms, script per update "
            f"{browser['update_script_ms_median']} ms median ({browser['update_script_ms_max']} "
            f"max), server CPU {browser['server_cpu_s_with_page']} s over "
            f"{doc['duration_s']:g} s"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    doc = measure(args)
    args.out.mkdir(parents=True, exist_ok=True)
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    path = args.out / f"dashboard-{stamp}.json"
    path.write_text(json.dumps(doc, indent=1))
    print(render(doc))
    print(f"written to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
