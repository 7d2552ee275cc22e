"""Tables, ratios against the targets, and the chart of one benchmark run.

Everything here reads the results document :mod:`benchmarks.run` writes (see
``docs/benchmarks.md`` for its fields) and can be re-run on a saved file:
``python -m benchmarks.report RESULTS.json [--chart OUT.png]``.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Iterable
from typing import Any

#: Concurrency at which the latency targets are checked.
LATENCY_CONCURRENCY = 1
#: Concurrency at which REST's server CPU per request is held to gRPC's.
REST_CPU_CONCURRENCY = 32
#: Concurrency at which the batching targets are checked.
BATCHING_CONCURRENCY = 32
#: In-process batch size the batched throughput is compared with.
INPROCESS_BATCH = 32

#: Server labels used in results.
PYSERVING = "pyserving"
PYSERVING_BATCHING = "pyserving-batching"
#: gRPC served by grpcio (``--grpc_frontend=grpcio``) instead of pyserving's HTTP/2 server.
PYSERVING_GRPCIO = "pyserving-grpcio"
PYSERVING_BATCHING_GRPCIO = "pyserving-batching-grpcio"
FASTAPI = "fastapi"


def find_point(
    results: dict[str, Any], workload: str, server: str, protocol: str, concurrency: int
) -> dict[str, Any] | None:
    """The point of one run at one concurrency, or None when it was not measured."""
    for run in results.get("runs", []):
        if (run["workload"], run["server"], run["protocol"]) == (workload, server, protocol):
            for point in run["points"]:
                if point["concurrency"] == concurrency:
                    return dict(point)
    return None


def _p50(point: dict[str, Any] | None) -> float | None:
    if point is None:
        return None
    value = point["latency_ms"]["p50"]
    return float(value) if value is not None else None


def _qps(point: dict[str, Any] | None) -> float | None:
    return float(point["qps"]) if point is not None and point["requests"] else None


def _ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or b == 0:
        return None
    return a / b


def inprocess_rows_per_s(
    results: dict[str, Any], workload: str, runtime: str, batch: int
) -> float | None:
    """In-process throughput (rows/s) of ``runtime`` at ``batch``, if measured."""
    try:
        return float(results["inprocess"][workload][runtime][str(batch)]["rows_per_s"])
    except (KeyError, TypeError):
        return None


def _target(
    target_id: str,
    description: str,
    value: float | None,
    op: str,
    bound: float,
    numerator: float | None,
    denominator: float | None,
    unit: str,
) -> dict[str, Any]:
    met: bool | None
    if value is None:
        met = None
    elif op == "<=":
        met = value <= bound
    elif op == "<":
        met = value < bound
    else:
        met = value >= bound
    return {
        "id": target_id,
        "description": description,
        "ratio": value,
        "target": f"{op} {bound:g}",
        "met": met,
        "numerator": numerator,
        "denominator": denominator,
        "unit": unit,
    }


#: How targets name the measured protocols.
PROTOCOL_NAMES = {"rest": "REST", "grpc": "gRPC", "v2-rest": "V2 REST", "v2-grpc": "V2 gRPC"}
#: Concurrencies at which V2 gRPC ModelInfer is held to TF Serving Predict's figures.
V2_CONCURRENCY = (1, 32)


def _server_us(point: dict[str, Any] | None) -> float | None:
    if point is None or point.get("server_cpu_us_per_request") is None:
        return None
    return float(point["server_cpu_us_per_request"])


def _v2_targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    """The Open Inference Protocol's targets: ModelInfer within 10% of Predict (half_plus_two,
    p50 and QPS); REST infer with binary tensor data cheaper in server CPU than V1's JSON
    predict (the MLP's 512-float row)."""
    targets = []
    for c in V2_CONCURRENCY:
        predict = find_point(results, "half_plus_two", PYSERVING, "grpc", c)
        infer = find_point(results, "half_plus_two", PYSERVING, "v2-grpc", c)
        targets.append(
            _target(
                f"v2_grpc_p50_vs_predict_c{c}",
                f"half_plus_two, concurrency {c}: V2 gRPC ModelInfer p50 / gRPC Predict p50",
                _ratio(_p50(infer), _p50(predict)),
                "<=",
                1.1,
                _p50(infer),
                _p50(predict),
                "ms",
            )
        )
        targets.append(
            _target(
                f"v2_grpc_qps_vs_predict_c{c}",
                f"half_plus_two, concurrency {c}: V2 gRPC ModelInfer QPS / gRPC Predict QPS",
                _ratio(_qps(infer), _qps(predict)),
                ">=",
                0.9,
                _qps(infer),
                _qps(predict),
                "QPS",
            )
        )
    c1 = LATENCY_CONCURRENCY
    binary = _server_us(find_point(results, "mlp", PYSERVING, "v2-rest", c1))
    json_v1 = _server_us(find_point(results, "mlp", PYSERVING, "rest", c1))
    targets.append(
        _target(
            "v2_rest_binary_cpu_vs_v1_json",
            f"mlp, concurrency {c1}: server CPU per request, V2 REST infer with binary tensor "
            "data / V1 REST predict (JSON)",
            _ratio(binary, json_v1),
            "<",
            1.0,
            binary,
            json_v1,
            "us/req",
        )
    )
    return targets


#: The other platforms' workloads held to the platform targets (see :func:`_platform_targets`).
PLATFORM_WORKLOADS = ("iris_onnx", "iris_torch", "mlp_onnx", "mlp_torch")
#: pyserving's REST p50 at concurrency 1 at most this fraction of the FastAPI baseline's.
PLATFORM_P50_BOUND = 0.7


def _platform_targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    """The ONNX and PyTorch workloads' targets, for those measured in this run: REST p50 at
    concurrency 1 at most 0.7 x FastAPI's, gRPC p50 below REST's, and QPS at concurrency 32
    with batching at least 2 x without (REST and gRPC)."""
    measured = {run["workload"] for run in results.get("runs", [])}
    targets = []
    c1, cb = LATENCY_CONCURRENCY, BATCHING_CONCURRENCY
    for workload in (w for w in PLATFORM_WORKLOADS if w in measured):
        rest = _p50(find_point(results, workload, PYSERVING, "rest", c1))
        fastapi = _p50(find_point(results, workload, FASTAPI, "rest", c1))
        grpc = _p50(find_point(results, workload, PYSERVING, "grpc", c1))
        targets.append(
            _target(
                f"{workload}_rest_p50_vs_fastapi",
                f"{workload}, concurrency {c1}: pyserving REST p50 / FastAPI baseline p50",
                _ratio(rest, fastapi),
                "<=",
                PLATFORM_P50_BOUND,
                rest,
                fastapi,
                "ms",
            )
        )
        targets.append(
            _target(
                f"{workload}_grpc_p50_vs_rest",
                f"{workload}, concurrency {c1}: pyserving gRPC p50 / pyserving REST p50",
                _ratio(grpc, rest),
                "<",
                1.0,
                grpc,
                rest,
                "ms",
            )
        )
        for protocol in ("rest", "grpc"):
            batched = _qps(find_point(results, workload, PYSERVING_BATCHING, protocol, cb))
            unbatched = _qps(find_point(results, workload, PYSERVING, protocol, cb))
            targets.append(
                _target(
                    f"{workload}_batched_vs_unbatched_{protocol}",
                    f"{workload}, concurrency {cb}, {PROTOCOL_NAMES[protocol]}: pyserving "
                    "with batching QPS / without",
                    _ratio(batched, unbatched),
                    ">=",
                    2.0,
                    batched,
                    unbatched,
                    "rows/s",
                )
            )
    return targets


def compute_targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    """The issue's targets as ratios measured in this run (``met`` is None when not measured)."""
    targets = []
    c1 = LATENCY_CONCURRENCY
    rest = _p50(find_point(results, "half_plus_two", PYSERVING, "rest", c1))
    fastapi = _p50(find_point(results, "half_plus_two", FASTAPI, "rest", c1))
    grpc = _p50(find_point(results, "half_plus_two", PYSERVING, "grpc", c1))
    targets.append(
        _target(
            "rest_p50_vs_fastapi",
            f"half_plus_two, concurrency {c1}: pyserving REST p50 / FastAPI baseline p50",
            _ratio(rest, fastapi),
            "<=",
            1.0,
            rest,
            fastapi,
            "ms",
        )
    )
    # REST as cheap as gRPC: REST's latency and server CPU per request held to gRPC's,
    # measured in the same server.
    targets.append(
        _target(
            "rest_p50_vs_grpc",
            f"half_plus_two, concurrency {c1}: pyserving REST p50 / pyserving gRPC p50",
            _ratio(rest, grpc),
            "<=",
            1.2,
            rest,
            grpc,
            "ms",
        )
    )
    rest_cpu = _server_us(
        find_point(results, "half_plus_two", PYSERVING, "rest", REST_CPU_CONCURRENCY)
    )
    grpc_cpu = _server_us(
        find_point(results, "half_plus_two", PYSERVING, "grpc", REST_CPU_CONCURRENCY)
    )
    targets.append(
        _target(
            "rest_cpu_vs_grpc",
            f"half_plus_two, concurrency {REST_CPU_CONCURRENCY}: pyserving REST server CPU per "
            "request / gRPC's",
            _ratio(rest_cpu, grpc_cpu),
            "<=",
            1.3,
            rest_cpu,
            grpc_cpu,
            "us",
        )
    )
    targets.extend(_v2_targets(results))
    cb = BATCHING_CONCURRENCY
    limit = inprocess_rows_per_s(results, "mlp", "function", INPROCESS_BATCH)
    for protocol in ("rest", "grpc", "v2-rest", "v2-grpc"):
        batched = _qps(find_point(results, "mlp", PYSERVING_BATCHING, protocol, cb))
        unbatched = _qps(find_point(results, "mlp", PYSERVING, protocol, cb))
        name = PROTOCOL_NAMES[protocol]
        targets.append(
            _target(
                f"batched_vs_inprocess_{protocol}",
                f"mlp, concurrency {cb}, {name}: pyserving with batching QPS / in-process "
                f"batch-{INPROCESS_BATCH} rows/s",
                _ratio(batched, limit),
                ">=",
                0.85,
                batched,
                limit,
                "rows/s",
            )
        )
        targets.append(
            _target(
                f"batched_vs_unbatched_{protocol}",
                f"mlp, concurrency {cb}, {name}: pyserving with batching QPS / without",
                _ratio(batched, unbatched),
                ">=",
                2.0,
                batched,
                unbatched,
                "rows/s",
            )
        )
    targets.extend(_platform_targets(results))
    failing = [
        f"{run['workload']}/{run['server']}/{run['protocol']}@{point['concurrency']}: "
        f"{point['errors']}"
        for run in results.get("runs", [])
        for point in run["points"]
        if point["errors"]
    ]
    total = sum(p["errors"] for run in results.get("runs", []) for p in run["points"])
    targets.append(
        {
            "id": "zero_errors",
            "description": "errors at every concurrency, every server and protocol",
            "ratio": None,
            "target": "0",
            "met": total == 0 if results.get("runs") else None,
            "numerator": total,
            "denominator": None,
            "unit": "errors",
            "failing": failing,
        }
    )
    return targets


# ------------------------------------------------------------------------------------------
# Text
# ------------------------------------------------------------------------------------------


def _fmt(value: float | None, digits: int = 2) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.{digits}f}"


def _table(header: list[str], rows: Iterable[list[str]]) -> str:
    rows = list(rows)
    widths = [
        max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(header)
    ]
    lines = ["  ".join(h.rjust(w) for h, w in zip(header, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    for row in rows:
        lines.append("  ".join(c.rjust(w) for c, w in zip(row, widths, strict=True)))
    return "\n".join(lines)


def points_table(results: dict[str, Any]) -> str:
    """One line per measured point."""
    header = [
        "workload",
        "server",
        "proto",
        "conc",
        "QPS",
        "p50 ms",
        "p90 ms",
        "p99 ms",
        "errors",
        "srv CPU%",
        "srv us/req",
        "srv peak MB",
        "client CPU%",
        "other CPU%",
    ]
    rows = []
    for run in results.get("runs", []):
        for p in run["points"]:
            lat = p["latency_ms"]
            rows.append(
                [
                    run["workload"],
                    run["server"],
                    run["protocol"],
                    str(p["concurrency"]),
                    _fmt(p["qps"], 0),
                    _fmt(lat["p50"], 3),
                    _fmt(lat["p90"], 3),
                    _fmt(lat["p99"], 3),
                    str(p["errors"]),
                    _fmt(p.get("server_cpu_percent"), 0),
                    _fmt(p.get("server_cpu_us_per_request"), 0),
                    _fmt(p.get("server_peak_rss_mb"), 0),
                    _fmt(p.get("client_cpu_percent"), 0),
                    _fmt(p.get("other_cpu_percent"), 0),
                ]
            )
    return _table(header, rows)


#: Points where other processes used more than this (percent of one core) are flagged.
NOISY_OTHER_CPU_PERCENT = 20.0


def noisy_points(results: dict[str, Any]) -> list[str]:
    """Points measured while something else used the machine's CPUs."""
    noisy = []
    for run in results.get("runs", []):
        for p in run["points"]:
            other = p.get("other_cpu_percent")
            if other is not None and other > NOISY_OTHER_CPU_PERCENT:
                noisy.append(
                    f"{run['workload']}/{run['server']}/{run['protocol']}@{p['concurrency']}: "
                    f"{other:.0f}%"
                )
    for workload, runtimes in results.get("inprocess", {}).items():
        for runtime, batches in runtimes.items():
            if not isinstance(batches, dict):
                continue
            for batch, p in batches.items():
                other = p.get("other_cpu_percent")
                if other is not None and other > NOISY_OTHER_CPU_PERCENT:
                    noisy.append(f"in-process {workload}/{runtime}/batch {batch}: {other:.0f}%")
    return noisy


def inprocess_table(results: dict[str, Any]) -> str:
    """The in-process limit: one line per workload, runtime and batch size."""
    header = [
        "workload",
        "runtime",
        "batch",
        "calls/s",
        "rows/s",
        "p50 ms",
        "p99 ms",
        "CPU%",
        "other CPU%",
        "mean batch",
    ]
    rows = []
    for workload, runtimes in results.get("inprocess", {}).items():
        for runtime, batches in runtimes.items():
            if not isinstance(batches, dict):
                continue  # "attempts"
            for batch, p in batches.items():
                rows.append(
                    [
                        workload,
                        runtime,
                        batch,
                        _fmt(p["calls_per_s"], 0),
                        _fmt(p["rows_per_s"], 0),
                        _fmt(p["latency_ms"]["p50"], 3),
                        _fmt(p["latency_ms"]["p99"], 3),
                        _fmt(p["cpu_percent"], 0),
                        _fmt(p.get("other_cpu_percent"), 0),
                        _fmt(p.get("mean_batch_rows"), 1),
                    ]
                )
    return _table(header, rows)


def calibration_table(results: dict[str, Any]) -> str:
    """The load generator against the trivial endpoints."""
    header = ["proto", "conc", "QPS", "p50 ms", "client CPU%", "client us/req", "server CPU%"]
    rows = []
    for protocol, run in results.get("calibration", {}).items():
        for p in run["points"]:
            rows.append(
                [
                    protocol,
                    str(p["concurrency"]),
                    _fmt(p["qps"], 0),
                    _fmt(p["latency_ms"]["p50"], 3),
                    _fmt(p["client_cpu_percent"], 0),
                    _fmt(p["client_cpu_us_per_request"], 1),
                    _fmt(p.get("server_cpu_percent"), 0),
                ]
            )
    return _table(header, rows)


def targets_table(results: dict[str, Any]) -> str:
    """The targets with their measured ratios."""
    header = ["target", "measured", "ratio", "goal", "met"]
    rows = []
    for t in results.get("targets", []):
        if t["id"] == "zero_errors":
            measured = f"{t['numerator']} errors"
        else:
            measured = f"{_fmt(t['numerator'])} / {_fmt(t['denominator'])} {t['unit']}"
        met = "n/a" if t["met"] is None else ("yes" if t["met"] else "NO")
        rows.append([t["id"], measured, _fmt(t["ratio"]), t["target"], met])
    return _table(header, rows)


def render_text(results: dict[str, Any]) -> str:
    """The whole report as text."""
    parts = []
    if results.get("calibration"):
        parts.append("Load generator against trivial endpoints\n" + calibration_table(results))
    if results.get("runs"):
        parts.append("Servers under load\n" + points_table(results))
    if results.get("inprocess"):
        parts.append("In-process limit\n" + inprocess_table(results))
    if results.get("targets"):
        parts.append("Targets (ratios measured in this run)\n" + targets_table(results))
    noisy = noisy_points(results)
    if noisy:
        parts.append(
            f"Noisy: other processes used more than {NOISY_OTHER_CPU_PERCENT:g}% of a core "
            "during these points (rerun when the machine is quiet):\n  " + "\n  ".join(noisy)
        )
    return "\n\n".join(parts) + "\n"


#: How docs/benchmarks.md names each measured protocol.
DOC_PROTOCOLS = {
    "rest": "REST",
    "grpc": "gRPC",
    "grpc-stub": "gRPC, official stubs",
    "v2-rest": "V2 REST, binary",
    "v2-grpc": "V2 gRPC, raw",
}


def _thousands(value: float | None, digits: int = 0) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def markdown(results: dict[str, Any]) -> str:
    """The per-workload point tables and the targets table as docs/benchmarks.md shows them."""
    parts = []
    workloads = list(dict.fromkeys(run["workload"] for run in results.get("runs", [])))
    for workload in workloads:
        lines = [
            f"### {workload}",
            "",
            "| server | proto | conc | QPS | p50 ms | p90 ms | p99 ms | errors | srv CPU% "
            "| srv CPU us/req | srv peak RSS MB | client CPU% |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for run in results["runs"]:
            if run["workload"] != workload:
                continue
            for p in run["points"]:
                lat = p["latency_ms"]
                cells = [
                    run["server"],
                    DOC_PROTOCOLS.get(run["protocol"], run["protocol"]),
                    str(p["concurrency"]),
                    _thousands(p["qps"]),
                    _fmt(lat["p50"], 3),
                    _fmt(lat["p90"], 3),
                    _fmt(lat["p99"], 3),
                    str(p["errors"]),
                    _fmt(p.get("server_cpu_percent"), 0),
                    _thousands(p.get("server_cpu_us_per_request")),
                    _fmt(p.get("server_peak_rss_mb"), 0),
                    _fmt(p.get("client_cpu_percent"), 0),
                ]
                lines.append("| " + " | ".join(cells) + " |")
        parts.append("\n".join(lines))
    lines = ["| target | measured | ratio | goal | met |", "|---|---|---|---|---|"]
    for t in results.get("targets", []):
        if t["id"] == "zero_errors":
            measured = str(t["numerator"])
        else:
            measured = (
                f"{_thousands(t['numerator'], 3 if t['unit'] == 'ms' else 0)} / "
                f"{_thousands(t['denominator'], 3 if t['unit'] == 'ms' else 0)} {t['unit']}"
            )
        met = "n/a" if t["met"] is None else ("**yes**" if t["met"] else "**no**")
        ratio = _fmt(t["ratio"])
        lines.append(f"| {t['description']} | {measured} | {ratio} | {t['target']} | {met} |")
    parts.append("\n".join(lines))
    return "\n\n".join(parts) + "\n"


# ------------------------------------------------------------------------------------------
# Chart
# ------------------------------------------------------------------------------------------


def write_chart(results: dict[str, Any], path: str) -> None:
    """QPS and latency (p50 solid, p99 dashed) against concurrency, one row per workload."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    workloads = list(dict.fromkeys(run["workload"] for run in results.get("runs", [])))
    if not workloads:
        return
    fig, axes = plt.subplots(len(workloads), 2, figsize=(13, 4.6 * len(workloads)), squeeze=False)
    for row, workload in enumerate(workloads):
        ax_qps, ax_lat = axes[row]
        for index, run in enumerate(r for r in results["runs"] if r["workload"] == workload):
            label = f"{run['server']} {run['protocol']}"
            xs = [p["concurrency"] for p in run["points"]]
            qps = [p["qps"] for p in run["points"]]
            p50 = [p["latency_ms"]["p50"] or float("nan") for p in run["points"]]
            p99 = [p["latency_ms"]["p99"] or float("nan") for p in run["points"]]
            color = f"C{index}"
            ax_qps.plot(xs, qps, marker="o", color=color, label=label)
            ax_lat.plot(xs, p50, marker="o", color=color, label=f"{label} p50")
            ax_lat.plot(xs, p99, marker="x", linestyle="--", color=color, label=f"{label} p99")
        references = [("function", 1, ":", "black"), ("session", 1, "-.", "black")]
        if workload == "mlp":
            references.append(("function", INPROCESS_BATCH, "--", "grey"))
        for runtime, batch, style, color in references:
            value = inprocess_rows_per_s(results, workload, runtime, batch)
            if value is not None:
                ax_qps.axhline(
                    value,
                    color=color,
                    linestyle=style,
                    linewidth=1,
                    label=f"in-process {runtime}, batch {batch} (rows/s)",
                )
        levels = sorted({p["concurrency"] for r in results["runs"] for p in r["points"]})
        ax_qps.set_title(f"{workload}: throughput")
        ax_qps.set_xlabel("concurrency (closed loop)")
        ax_qps.set_ylabel("requests/s (1 row each)")
        ax_qps.set_xscale("log", base=2)
        ax_qps.set_xticks(levels, [str(c) for c in levels])
        ax_qps.set_yscale("log")
        ax_qps.grid(True, which="both", alpha=0.3)
        ax_qps.legend(fontsize=7)
        ax_lat.set_title(f"{workload}: latency (p50 solid, p99 dashed)")
        ax_lat.set_xlabel("concurrency (closed loop)")
        ax_lat.set_ylabel("ms")
        ax_lat.set_xscale("log", base=2)
        ax_lat.set_xticks(levels, [str(c) for c in levels])
        ax_lat.set_yscale("log")
        ax_lat.grid(True, which="both", alpha=0.3)
        ax_lat.legend(fontsize=6, ncol=2)
    meta = results.get("meta", {})
    fig.suptitle(
        f"pyserving benchmarks - {meta.get('cpu', '')} x{meta.get('cpus', '?')}, "
        f"{meta.get('duration_s', '?')} s/point",
        fontsize=10,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    """Print the report of a saved results file (and optionally redraw its chart)."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.report")
    parser.add_argument("results")
    parser.add_argument("--chart", default="")
    parser.add_argument(
        "--markdown", action="store_true", help="the tables as docs/benchmarks.md shows them"
    )
    args = parser.parse_args(argv)
    with open(args.results) as f:
        results = json.load(f)
    results["targets"] = compute_targets(results)
    sys.stdout.write(markdown(results) if args.markdown else render_text(results))
    if args.chart:
        write_chart(results, args.chart)
    return 0


if __name__ == "__main__":
    sys.exit(main())
